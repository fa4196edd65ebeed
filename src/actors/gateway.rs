//! The command gateway: the one way commands enter the runtime. It gives each command an id
//! and a correlation id, opens a tracing span, runs the interceptor chain (validation,
//! authorization, logging, or your own; any may refuse), answers a repeated command id from
//! its first success, and sends the command to its aggregate's actor through the registry.
//!
//! Must not touch: the store, HTTP. The gateway speaks commands and outcomes.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::dev::SendError;
use dashmap::DashMap;
use tokio::sync::oneshot;
use tracing::{Instrument, info, info_span};
use uuid::Uuid;

use super::aggregate_actor::{CommandOutcome, CommandResult, Execute, Inspect};
use super::error::{CommandError, Refusal};
use super::registry::Registry;
use crate::domain::{Aggregate, Command};
use crate::store::{Metadata, ids};

/// A command as interceptors see it.
pub struct CommandEnvelope<'a> {
    /// The aggregate type it is for.
    pub aggregate_type: &'static str,
    /// The aggregate id it is for.
    pub aggregate_id: &'a str,
    /// The command (downcast with `command.as_any()`).
    pub command: &'a dyn DynCommand,
    /// Its metadata; interceptors may add to it (it flows into the events' metadata).
    pub metadata: &'a mut Metadata,
}

/// A command without its type: what interceptors can ask of any command.
pub trait DynCommand: Send {
    /// The command's name.
    fn name(&self) -> &'static str;
    /// The command's own shape check.
    fn validate(&self) -> Result<(), String>;
    /// The command, for downcasting to its type.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Command + Any> DynCommand for T {
    fn name(&self) -> &'static str {
        Command::name(self)
    }

    fn validate(&self) -> Result<(), String> {
        Command::validate(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One link of the chain every command passes before its aggregate sees it.
pub trait Interceptor: Send + Sync + 'static {
    /// Lets the command through (possibly adding metadata) or refuses it.
    fn intercept(&self, envelope: &mut CommandEnvelope<'_>) -> Result<(), Refusal>;
}

impl<F> Interceptor for F
where
    F: Fn(&mut CommandEnvelope<'_>) -> Result<(), Refusal> + Send + Sync + 'static,
{
    fn intercept(&self, envelope: &mut CommandEnvelope<'_>) -> Result<(), Refusal> {
        self(envelope)
    }
}

/// Refuses a command whose own `validate` fails, with code `invalid_command`.
pub struct Validation;

impl Interceptor for Validation {
    fn intercept(&self, envelope: &mut CommandEnvelope<'_>) -> Result<(), Refusal> {
        envelope
            .command
            .validate()
            .map_err(|message| Refusal::new("invalid_command", message))
    }
}

/// Logs every command that passes (at info level, with its ids).
pub struct Logging;

impl Interceptor for Logging {
    fn intercept(&self, envelope: &mut CommandEnvelope<'_>) -> Result<(), Refusal> {
        info!(
            aggregate = envelope.aggregate_type,
            id = envelope.aggregate_id,
            command = envelope.command.name(),
            command_id = ?envelope.metadata.command_id,
            customer = ?envelope.metadata.customer_id,
            "command"
        );
        Ok(())
    }
}

/// Refuses what a rule does not allow, with code `forbidden`.
pub struct Authorization<F>(pub F);

impl<F> Interceptor for Authorization<F>
where
    F: Fn(&CommandEnvelope<'_>) -> bool + Send + Sync + 'static,
{
    fn intercept(&self, envelope: &mut CommandEnvelope<'_>) -> Result<(), Refusal> {
        if (self.0)(envelope) {
            Ok(())
        } else {
            Err(Refusal::new(
                "forbidden",
                format!("{} is not allowed here", envelope.command.name()),
            ))
        }
    }
}

/// How many answers the gateway remembers by command id.
const ANSWERED_BOUND: usize = 100_000;

/// Called with the outcome of a fire-and-forget command.
pub type Callback<A> = Box<dyn FnOnce(CommandResult<A>) + Send>;

pub(crate) struct GatewayInner {
    pub registries: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    pub interceptors: Vec<Arc<dyn Interceptor>>,
    pub timeout: Duration,
    pub dedupe_ttl: Duration,
    pub answered: DashMap<Uuid, (tokio::time::Instant, CommandOutcome)>,
}

/// Sends commands to aggregates. Cheap to clone.
#[derive(Clone)]
pub struct CommandGateway {
    pub(crate) inner: Arc<GatewayInner>,
}

impl CommandGateway {
    /// Sends a command to aggregate `id` of type `A` and waits, up to the gateway's timeout, for
    /// its events to be durable.
    pub async fn send_and_wait<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        metadata: Metadata,
    ) -> CommandResult<A> {
        self.send_and_wait_for::<A>(id, command, metadata, self.inner.timeout)
            .await
    }

    /// Like [`CommandGateway::send_and_wait`], with its own timeout.
    pub async fn send_and_wait_for<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        mut metadata: Metadata,
        timeout: Duration,
    ) -> CommandResult<A> {
        let command_id = *metadata.command_id.get_or_insert_with(ids::fresh);
        metadata.correlation_id.get_or_insert(command_id);
        let span = info_span!("command", aggregate = A::TYPE, id, command = Command::name(&command), %command_id);
        async move {
            // The envelope borrows the command: it must be gone before the first `.await`.
            if let Err(refusal) = self.intercept::<A>(id, &command, &mut metadata) {
                metrics::counter!("nursery_commands_total", "aggregate" => A::TYPE, "command" => Command::name(&command), "outcome" => "refused").increment(1);
                return Err(CommandError::Refused(refusal));
            }
            // After the interceptors: a known command id answers only a caller they let through.
            if let Some(outcome) = self.answered(command_id) {
                return Ok(CommandOutcome { duplicate: true, ..outcome });
            }
            let registry = self.registry::<A>()?;
            let (reply, answer) = oneshot::channel();
            let mut message = Execute::<A> { command, metadata, reply };
            let mut tries = 0;
            let _slot = loop {
                let live = registry.get(id);
                // Wait for a slot: the actor holds at most `mailbox_capacity` commands.
                let slot = Arc::clone(&live.slots)
                    .acquire_owned()
                    .await
                    .map_err(|_| CommandError::Unavailable("the actor's slots are closed".into()))?;
                match live.addr.try_send(message) {
                    Ok(()) => break slot,
                    Err(SendError::Full(full)) => {
                        // actix's per-sender bound: the slot already bounds us, so wait here.
                        live.addr.send(full).await.map_err(|e| CommandError::Unavailable(e.to_string()))?;
                        break slot;
                    }
                    Err(SendError::Closed(back)) => {
                        registry.forget(id, &live.addr);
                        tries += 1;
                        if tries > 3 {
                            return Err(CommandError::Unavailable("the aggregate's actor keeps closing".into()));
                        }
                        message = back;
                    }
                }
            };
            let result = match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(CommandError::Unavailable("the actor stopped without answering".into())),
                Err(_) => Err(CommandError::Timeout),
            };
            if let Ok(outcome) = &result {
                self.remember(*outcome);
            }
            result
        }
        .instrument(span)
        .await
    }

    /// Sends a command without waiting; `callback`, if any, is told the outcome (a failure
    /// included), as the seed's `CommandCallback`.
    pub fn send<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        metadata: Metadata,
        callback: Option<Callback<A>>,
    ) {
        let gateway = self.clone();
        let id = id.to_owned();
        actix_rt::spawn(async move {
            let result = gateway.send_and_wait::<A>(&id, command, metadata).await;
            if let Some(callback) = callback {
                callback(result);
            }
        });
    }

    /// Reads aggregate `id` of type `A` through its actor (starting and rehydrating it if
    /// needed): `read` gets the state as of the last durable decision and its version. For
    /// what a command needs to know beforehand (a product's price); queries belong to read
    /// models.
    ///
    /// The actor's state is current as far as this process knows. When other processes write
    /// the same aggregates, it may be behind the store: use [`Self::inspect_current`] where a
    /// read decides something on its own (a refusal, say).
    pub async fn inspect<A: Aggregate, R: Send + 'static>(
        &self,
        id: &str,
        read: impl FnOnce(&A, u64) -> R + Send + 'static,
    ) -> Result<R, CommandError<A::Error>> {
        self.read_through::<A, R>(id, read, false).await
    }

    /// As [`Self::inspect`], but the actor first reads the stream's stored version and, when
    /// another process wrote since, catches up: `read` sees the state as the store has it now.
    /// One indexed read more than `inspect`.
    pub async fn inspect_current<A: Aggregate, R: Send + 'static>(
        &self,
        id: &str,
        read: impl FnOnce(&A, u64) -> R + Send + 'static,
    ) -> Result<R, CommandError<A::Error>> {
        self.read_through::<A, R>(id, read, true).await
    }

    /// [`Self::inspect`], read again with [`Self::inspect_current`] when `stands` says the
    /// answer cannot stand on this process's view alone (a refusal, a missing aggregate): the
    /// store is read only for answers that would decide something on their own.
    pub async fn inspect_confirmed<A: Aggregate, R: Send + 'static>(
        &self,
        id: &str,
        read: impl Fn(&A, u64) -> R + Clone + Send + 'static,
        stands: impl FnOnce(&R) -> bool,
    ) -> Result<R, CommandError<A::Error>> {
        let answer = self.inspect::<A, R>(id, read.clone()).await?;
        if stands(&answer) {
            return Ok(answer);
        }
        self.inspect_current::<A, R>(id, read).await
    }

    async fn read_through<A: Aggregate, R: Send + 'static>(
        &self,
        id: &str,
        read: impl FnOnce(&A, u64) -> R + Send + 'static,
        current: bool,
    ) -> Result<R, CommandError<A::Error>> {
        let registry = self.registry::<A>()?;
        let (reply, answer) = oneshot::channel();
        let mut message = Inspect::<A> {
            read: Box::new(move |state, version| {
                let _ = reply.send(read(state, version));
            }),
            current,
        };
        for _ in 0..3 {
            let live = registry.get(id);
            match live.addr.try_send(message) {
                Ok(()) => break,
                Err(SendError::Full(full)) => {
                    live.addr
                        .send(full)
                        .await
                        .map_err(|e| CommandError::Unavailable(e.to_string()))?;
                    break;
                }
                Err(SendError::Closed(back)) => {
                    registry.forget(id, &live.addr);
                    message = back;
                }
            }
        }
        match tokio::time::timeout(self.inner.timeout, answer).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(CommandError::Unavailable(
                "the actor stopped without answering".into(),
            )),
            Err(_) => Err(CommandError::Timeout),
        }
    }

    /// The registry of aggregate type `A`.
    pub fn registry<A: Aggregate>(&self) -> Result<Arc<Registry<A>>, CommandError<A::Error>> {
        self.inner
            .registries
            .get(&TypeId::of::<A>())
            .cloned()
            .and_then(|any| any.downcast::<Registry<A>>().ok())
            .ok_or_else(|| {
                CommandError::Unavailable(format!("aggregate type {} is not registered", A::TYPE))
            })
    }

    fn intercept<A: Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
        metadata: &mut Metadata,
    ) -> Result<(), Refusal> {
        let mut envelope = CommandEnvelope {
            aggregate_type: A::TYPE,
            aggregate_id: id,
            command,
            metadata,
        };
        for interceptor in &self.inner.interceptors {
            interceptor.intercept(&mut envelope)?;
        }
        Ok(())
    }

    fn answered(&self, command_id: Uuid) -> Option<CommandOutcome> {
        let entry = self.inner.answered.get(&command_id)?;
        (entry.0.elapsed() < self.inner.dedupe_ttl).then_some(entry.1)
    }

    fn remember(&self, outcome: CommandOutcome) {
        let now = tokio::time::Instant::now();
        let answered = &self.inner.answered;
        // Bounded: past the bound, expired answers go, then the oldest half. This cache is only
        // a fast path; actors recognise applied command ids from their events, and the store
        // refuses their events twice (event ids derive from the command id).
        if answered.len() >= ANSWERED_BOUND {
            let ttl = self.inner.dedupe_ttl;
            answered.retain(|_, (at, _)| at.elapsed() < ttl);
            if answered.len() >= ANSWERED_BOUND {
                let mut ages: Vec<tokio::time::Instant> =
                    answered.iter().map(|e| e.value().0).collect();
                let middle = ages.len() / 2;
                let (_, cutoff, _) = ages.select_nth_unstable(middle);
                let cutoff = *cutoff;
                answered.retain(|_, (at, _)| *at > cutoff);
            }
        }
        answered.insert(outcome.command_id, (now, outcome));
    }
}
