//! `AggregateActor<A>`: one supervised actor per live aggregate id. It rehydrates (latest
//! snapshot, then the events after it), decides commands from its mailbox strictly in order,
//! persists their events through the journal, and answers each command only once its events
//! are durable.
//!
//! # Batching a hot aggregate
//! Commands are not decided in their handler: the handler queues them, and a `Flush` runs once
//! the mailbox is drained (actix polls the mailbox before the context's own items). The flush
//! decides every queued command in order against a working copy of the state (each sees the
//! events of those before it), sends all their events to the journal as one group, and waits
//! for it (`ctx.wait`) so no decision is made while an append is in flight. A rejected command
//! writes nothing and does not spoil the others. Each command is its own request in the group,
//! its expected version chained after the one before, so the store answers each on its own.
//!
//! # Failure
//! - A panic in `decide` or `apply` answers `Crashed` to that command and stops the actor; the
//!   supervisor restarts the same value, `restarting` resets the state (keeping the queue of
//!   commands not yet answered), and `started` rehydrates under `ctx.wait` after an exponential
//!   backoff with jitter, holding a recovery permit so few actors rehydrate at once.
//! - A store error fails every command of the group and restarts the actor the same way.
//! - A concurrency conflict (another process wrote the stream) catches up (folds only the
//!   events stored since the actor's version) and decides the conflicting commands again, up
//!   to `max_conflict_retries`, then answers `Conflict`.
//! - A group that writes nothing (every command refused or a no-op) has no append to check
//!   its state against the store, so the actor reads the stream's stored version before it
//!   answers; when another process moved it, the actor catches up and decides again, as after
//!   a conflict. A refusal costs that one indexed read.
//!
//! Must not touch: HTTP, projections, any concrete aggregate.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::{Semaphore, oneshot};
use tracing::{debug, warn};
use uuid::Uuid;

use super::error::CommandError;
use super::journal::{Append, Journal};
use super::registry::ActorCounters;
use super::supervision::SupervisionPolicy;
use crate::domain::{Aggregate, Command};
use crate::store::{AppendResult, Loaded, Metadata, Repository, StoreError};

/// What a successful command answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The command's id.
    pub command_id: Uuid,
    /// The aggregate's version after the command.
    pub version: u64,
    /// How many events the command recorded (0: it changed nothing).
    pub events: usize,
    /// The global position of the command's last event (for a command that recorded nothing:
    /// `None`).
    pub position: Option<u64>,
    /// True when the command id had already been applied: nothing was written this time.
    pub duplicate: bool,
}

impl CommandOutcome {
    /// The outcome of a command that recorded nothing (a no-op, or a repeat when `duplicate`).
    fn unchanged(command_id: Uuid, version: u64, position: Option<u64>, duplicate: bool) -> Self {
        Self {
            command_id,
            version,
            events: 0,
            position,
            duplicate,
        }
    }
}

/// The reply of one command.
pub type CommandResult<A> = Result<CommandOutcome, CommandError<<A as Aggregate>::Error>>;

/// A command for one aggregate actor, with its metadata (command id and the rest are set) and
/// where to answer. The answer travels on its own channel, not as the message's result, so a
/// message refused by a closed mailbox comes back whole and can be sent to a fresh actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute<A: Aggregate> {
    /// The command.
    pub command: A::Command,
    /// Its metadata; `command_id` identifies it.
    pub metadata: Metadata,
    /// Where the answer goes.
    pub reply: oneshot::Sender<CommandResult<A>>,
}

/// Settings every actor of one aggregate type shares.
pub struct ActorSettings<A: Aggregate> {
    /// Loads and encodes the aggregate.
    pub repository: Repository<A>,
    /// Where appends go.
    pub journal: Addr<Journal>,
    /// Restart policy.
    pub supervision: SupervisionPolicy,
    /// Bounds concurrent rehydrations.
    pub recoveries: Arc<Semaphore>,
    /// How many times a command is decided again after conflicts before it fails.
    pub max_conflict_retries: u32,
    /// How many commands may wait in one actor's mailbox.
    pub mailbox_capacity: usize,
    /// Counters shared by every actor of the type.
    pub counters: Arc<ActorCounters>,
}

/// How many command ids an actor remembers to answer a repeated command as already applied
/// (the ids come from its events' metadata, so they survive restarts). Beyond it, the
/// deterministic event ids make the store refuse the repeat.
const RECENT_COMMANDS: usize = 16;

/// What the decision on one command was, until its group is durable.
enum Decision<A: Aggregate> {
    /// It recorded `events` events (its request is in the group).
    Write { pending: Pending<A>, events: usize },
    /// It recorded nothing, at `version`.
    Nothing { pending: Pending<A>, version: u64 },
    /// The aggregate refused it.
    Rejected {
        pending: Pending<A>,
        rejection: A::Error,
    },
}

impl<A: Aggregate> Decision<A> {
    fn into_pending(self) -> Pending<A> {
        match self {
            Self::Write { pending, .. }
            | Self::Nothing { pending, .. }
            | Self::Rejected { pending, .. } => pending,
        }
    }
}

struct Pending<A: Aggregate> {
    command: A::Command,
    metadata: Metadata,
    reply: oneshot::Sender<CommandResult<A>>,
    attempts: u32,
    received: Instant,
}

/// The actor of one aggregate instance.
pub struct AggregateActor<A: Aggregate> {
    id: Arc<str>,
    settings: Arc<ActorSettings<A>>,
    state: A,
    version: u64,
    ready: bool,
    queue: VecDeque<Pending<A>>,
    restarts: u32,
    /// The latest command ids applied (from the events' metadata), newest last.
    recent: VecDeque<Uuid>,
}

impl<A: Aggregate> AggregateActor<A> {
    /// The actor of aggregate `id`.
    pub fn new(id: Arc<str>, settings: Arc<ActorSettings<A>>) -> Self {
        Self {
            id,
            settings,
            state: A::default(),
            version: 0,
            ready: false,
            queue: VecDeque::new(),
            restarts: 0,
            recent: VecDeque::new(),
        }
    }

    /// Loads the state (after a backoff when restarting) while the mailbox waits.
    fn rehydrate(&mut self, ctx: &mut Context<Self>) {
        self.ready = false;
        let delay = self.settings.supervision.backoff(self.restarts);
        let permits = Arc::clone(&self.settings.recoveries);
        let repository = self.settings.repository.clone();
        let id = Arc::clone(&self.id);
        let load = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let _permit = permits.acquire_owned().await;
            repository.load(&id).await
        };
        ctx.wait(load.into_actor(self).map(|loaded, actor, ctx| {
            actor.resume(loaded, "rehydrated", ctx);
        }));
    }

    /// Takes the state a rehydration or a catch-up produced and decides what waits; on a store
    /// error, fails what waits and stops (the supervisor restarts the actor). Answers whether
    /// the state is back.
    fn resume(
        &mut self,
        loaded: Result<Loaded<A>, StoreError>,
        how: &'static str,
        ctx: &mut Context<Self>,
    ) -> bool {
        match loaded {
            Ok(loaded) => {
                self.state = loaded.state;
                self.version = loaded.version;
                self.recent = loaded.recent_commands.into();
                self.ready = true;
                debug!(aggregate = A::TYPE, id = %self.id, version = self.version, folded = loaded.replayed, how);
                ctx.notify(Flush);
                true
            }
            Err(error) => {
                warn!(aggregate = A::TYPE, id = %self.id, %error, how, "loading the state failed; restarting");
                let error = Arc::new(error);
                self.fail_all(|| CommandError::Store(Arc::clone(&error)));
                ctx.stop();
                false
            }
        }
    }

    /// After a conflict: reads the events stored since our version (another process's, or the
    /// part of our group that was written) and folds them in, then decides again. Far cheaper
    /// than a rehydration when a hot aggregate is shared between command processes. `then`
    /// reads the caught-up state (an `Inspect` that asked for the current one).
    fn catch_up(&mut self, ctx: &mut Context<Self>, then: Option<StateReader<A>>) {
        self.ready = false;
        let repository = self.settings.repository.clone();
        let id = Arc::clone(&self.id);
        let loaded = Loaded {
            state: std::mem::take(&mut self.state),
            version: self.version,
            replayed: 0,
            recent_commands: self.recent.drain(..).collect(),
        };
        let catch_up = async move { repository.catch_up(&id, loaded).await };
        let before = self.version;
        ctx.wait(catch_up.into_actor(self).map(move |caught, actor, ctx| {
            if actor.resume(caught, "caught up after a conflict", ctx) {
                actor
                    .settings
                    .counters
                    .caught_up
                    .fetch_add(1, Ordering::Relaxed);
                // A snapshot point crossed by what was missed (or by the written part of a
                // group) is taken now: the next flush only looks at what it writes itself.
                actor.snapshot_if_due(before, actor.version);
                if let Some(read) = then {
                    read(&actor.state, actor.version);
                }
            }
        }));
    }

    fn fail_all(&mut self, error: impl Fn() -> CommandError<A::Error>) {
        for pending in self.queue.drain(..) {
            finish::<A>(pending, Err(error()));
        }
    }

    /// Decides every queued command and appends their events as one group.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if !self.ready || self.queue.is_empty() {
            return;
        }
        let mut working = self.state.clone();
        let mut version = self.version;
        let mut decided: Vec<Decision<A>> = Vec::new();
        let mut requests = Vec::new();
        while let Some(pending) = self.queue.pop_front() {
            if let Some(id) = pending
                .metadata
                .command_id
                .filter(|id| self.recent.contains(id))
            {
                // Already applied (a retry, or a saga's redelivered command): answer, change nothing.
                let outcome = CommandOutcome::unchanged(id, version, None, true);
                finish::<A>(pending, Ok(outcome));
                continue;
            }
            // `working` is a copy taken once per flush: if `decide` or `apply` panics, the copy
            // goes with the actor's restart and the real state was never touched.
            match catch_unwind(AssertUnwindSafe(|| working.decide(&pending.command))) {
                Ok(Ok(events)) if events.is_empty() => {
                    decided.push(Decision::Nothing { pending, version })
                }
                Ok(Ok(events)) => {
                    let request = match self.settings.repository.append_request(
                        &self.id,
                        version,
                        &events,
                        &pending.metadata,
                    ) {
                        Ok(request) => request,
                        Err(error) => {
                            finish::<A>(pending, Err(error.into()));
                            continue;
                        }
                    };
                    if let Err(panic) =
                        catch_unwind(AssertUnwindSafe(|| working.apply_all(&events)))
                    {
                        self.crash(pending, &*panic, decided, ctx);
                        return;
                    }
                    version += events.len() as u64;
                    decided.push(Decision::Write {
                        pending,
                        events: events.len(),
                    });
                    requests.push(request);
                }
                // Answered after the append: the state it was refused on must be durable first.
                Ok(Err(rejection)) => decided.push(Decision::Rejected { pending, rejection }),
                Err(panic) => {
                    self.crash(pending, &*panic, decided, ctx);
                    return;
                }
            }
        }
        if requests.is_empty() {
            self.answer_unwritten(decided, ctx);
            return;
        }
        let append = self.settings.journal.send(Append(requests));
        ctx.wait(append.into_actor(self).map(move |answer, actor, ctx| {
            actor.persisted(answer, decided, working, version, ctx);
        }));
    }

    /// Answers a group that wrote nothing (every command a no-op or refused). No append checked
    /// the state those answers rest on, and another process may have written the stream since
    /// this actor last read it: a refusal or a no-op decided on a stale state would be wrong
    /// (a release that finds no hold, a sale refused for a hold it has not seen). So the
    /// stream's stored version is read first; when it moved, the actor catches up and decides
    /// the commands again, as after a conflict.
    fn answer_unwritten(&mut self, decided: Vec<Decision<A>>, ctx: &mut Context<Self>) {
        if decided.is_empty() {
            // Every command was a repeat answered from the remembered ids: nothing rests on
            // the state.
            return;
        }
        self.with_stored_version(ctx, move |stored, actor, ctx| {
            match stored {
                Ok(stored) if stored > actor.version => {
                    for decision in decided {
                        actor.retry_later(decision.into_pending());
                    }
                    actor.catch_up(ctx, None);
                }
                Ok(_) => {
                    for decision in decided {
                        answer_unwritten::<A>(decision);
                    }
                    ctx.notify(Flush);
                }
                Err(error) => {
                    warn!(aggregate = A::TYPE, id = %actor.id, %error, "checking the stream's version failed");
                    let error = Arc::new(error);
                    for decision in decided {
                        finish::<A>(
                            decision.into_pending(),
                            Err(CommandError::Store(Arc::clone(&error))),
                        );
                    }
                    ctx.notify(Flush);
                }
            }
        });
    }

    /// Reads the stream's stored version while the mailbox waits (no command is decided in
    /// between), then hands it to `then`.
    fn with_stored_version(
        &mut self,
        ctx: &mut Context<Self>,
        then: impl FnOnce(Result<u64, StoreError>, &mut Self, &mut Context<Self>) + 'static,
    ) {
        let repository = self.settings.repository.clone();
        let stream = Repository::<A>::stream(&self.id);
        let check = async move { repository.store().stream_version(&stream).await };
        ctx.wait(check.into_actor(self).map(then));
    }

    /// A command made `decide` or `apply` panic: answer it, put the commands decided before it
    /// back in the queue for the restarted actor, and stop so the supervisor restarts us.
    fn crash(
        &mut self,
        pending: Pending<A>,
        panic: &(dyn std::any::Any + Send),
        decided: Vec<Decision<A>>,
        ctx: &mut Context<Self>,
    ) {
        let message = panic_message(panic);
        warn!(aggregate = A::TYPE, id = %self.id, command = pending.command.name(), %message, "the aggregate panicked; restarting");
        finish::<A>(pending, Err(CommandError::Crashed(message)));
        for decision in decided.into_iter().rev() {
            self.queue.push_front(decision.into_pending());
        }
        ctx.stop();
    }

    /// Answers the commands of a group once the journal answered its append.
    fn persisted(
        &mut self,
        answer: Result<Result<Vec<AppendResult>, Arc<StoreError>>, MailboxError>,
        decided: Vec<Decision<A>>,
        working: A,
        after: u64,
        ctx: &mut Context<Self>,
    ) {
        let results = match answer {
            Ok(Ok(results)) => results,
            Ok(Err(error)) => {
                warn!(aggregate = A::TYPE, id = %self.id, %error, "append failed; restarting");
                for decision in decided {
                    finish::<A>(
                        decision.into_pending(),
                        Err(CommandError::Store(Arc::clone(&error))),
                    );
                }
                ctx.stop();
                return;
            }
            Err(error) => {
                for decision in decided {
                    finish::<A>(
                        decision.into_pending(),
                        Err(CommandError::Unavailable(error.to_string())),
                    );
                }
                ctx.stop();
                return;
            }
        };
        let mut results = results.into_iter();
        let mut last_position = None;
        let mut version = self.version;
        let mut broken = false;
        for decision in decided {
            match decision {
                Decision::Write { pending, events } => match results.next() {
                    Some(Ok(appended)) if !broken => {
                        last_position = appended.last_position;
                        version = appended.version;
                        if let Some(id) = pending.metadata.command_id {
                            self.remember(id);
                        }
                        let outcome = CommandOutcome {
                            command_id: command_id(&pending.metadata),
                            version: appended.version,
                            events,
                            position: appended.last_position,
                            duplicate: false,
                        };
                        finish::<A>(pending, Ok(outcome));
                    }
                    Some(Err(StoreError::DuplicateEvent { .. })) => {
                        // Its events (ids derived from its command id) are already stored: it
                        // was applied before. Answer so; what follows is decided again.
                        broken = true;
                        let outcome = CommandOutcome::unchanged(
                            command_id(&pending.metadata),
                            version,
                            None,
                            true,
                        );
                        finish::<A>(pending, Ok(outcome));
                    }
                    Some(Ok(_)) | Some(Err(StoreError::ConcurrencyConflict { .. })) => {
                        broken = true;
                        self.retry_later(pending);
                    }
                    Some(Err(error)) => {
                        broken = true;
                        finish::<A>(pending, Err(error.into()));
                    }
                    None => {
                        broken = true;
                        finish::<A>(
                            pending,
                            Err(StoreError::Internal(
                                "the journal answered too few results".into(),
                            )
                            .into()),
                        );
                    }
                },
                Decision::Nothing { pending, version } if !broken => {
                    let outcome = CommandOutcome::unchanged(
                        command_id(&pending.metadata),
                        version,
                        last_position,
                        false,
                    );
                    finish::<A>(pending, Ok(outcome));
                }
                Decision::Rejected { pending, rejection } if !broken => {
                    finish::<A>(pending, Err(CommandError::Rejected(rejection)))
                }
                // Decided on a state that was not written: decide again on the fresh one.
                Decision::Nothing { pending, .. } | Decision::Rejected { pending, .. } => {
                    self.retry_later(pending)
                }
            }
        }
        let before = self.version;
        if broken {
            metrics::counter!("nursery_aggregate_conflicts_total", "aggregate" => A::TYPE)
                .increment(1);
            // A partly written group snapshots, if due, once caught up.
            self.catch_up(ctx, None);
            return;
        }
        self.restarts = 0;
        self.state = working;
        self.version = after;
        self.snapshot_if_due(before, after);
        ctx.notify(Flush);
    }

    /// Requeues a command decided on a stale state, or fails it once it has tried enough.
    fn retry_later(&mut self, mut pending: Pending<A>) {
        pending.attempts += 1;
        if pending.attempts > self.settings.max_conflict_retries {
            let attempts = pending.attempts;
            finish::<A>(pending, Err(CommandError::Conflict { attempts }));
        } else {
            self.queue.push_back(pending);
        }
    }

    /// Snapshots in the background when the version crossed a snapshot point; the state is
    /// copied only then, not on every flush.
    fn snapshot_if_due(&self, before: u64, after: u64) {
        if !self.settings.repository.policy().due(before, after) {
            return;
        }
        let (repository, id, state) = (
            self.settings.repository.clone(),
            Arc::clone(&self.id),
            self.state.clone(),
        );
        actix::spawn(async move { repository.snapshot_if_due(&id, &state, before, after).await });
    }

    fn remember(&mut self, command_id: Uuid) {
        if self.recent.len() >= RECENT_COMMANDS {
            self.recent.pop_front();
        }
        self.recent.push_back(command_id);
    }
}

/// Answers the decision of a command that wrote nothing, on a state known to be current.
fn answer_unwritten<A: Aggregate>(decision: Decision<A>) {
    match decision {
        Decision::Nothing { pending, version } => {
            let outcome =
                CommandOutcome::unchanged(command_id(&pending.metadata), version, None, false);
            finish::<A>(pending, Ok(outcome));
        }
        Decision::Rejected { pending, rejection } => {
            finish::<A>(pending, Err(CommandError::Rejected(rejection)))
        }
        Decision::Write { pending, .. } => finish::<A>(
            pending,
            Err(StoreError::Internal("a write without a request".into()).into()),
        ),
    }
}

fn command_id(metadata: &Metadata) -> Uuid {
    metadata.command_id.unwrap_or_default()
}

fn finish<A: Aggregate>(pending: Pending<A>, result: CommandResult<A>) {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(CommandError::Rejected(_)) => "rejected",
        Err(CommandError::Conflict { .. }) => "conflict",
        Err(CommandError::Crashed(_)) => "crashed",
        Err(_) => "failed",
    };
    let name = pending.command.name();
    metrics::counter!("nursery_commands_total", "aggregate" => A::TYPE, "command" => name, "outcome" => outcome).increment(1);
    metrics::histogram!("nursery_command_seconds", "aggregate" => A::TYPE)
        .record(pending.received.elapsed().as_secs_f64());
    let _ = pending.reply.send(result);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

impl<A: Aggregate> Actor for AggregateActor<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.settings.mailbox_capacity);
        metrics::gauge!("nursery_live_actors", "aggregate" => A::TYPE).increment(1.0);
        self.settings.counters.live.fetch_add(1, Ordering::Relaxed);
        self.settings
            .counters
            .started
            .fetch_add(1, Ordering::Relaxed);
        self.rehydrate(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::gauge!("nursery_live_actors", "aggregate" => A::TYPE).decrement(1.0);
        self.settings.counters.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<A: Aggregate> Supervised for AggregateActor<A> {
    fn restarting(&mut self, _: &mut Context<Self>) {
        metrics::counter!("nursery_actor_restarts_total", "aggregate" => A::TYPE).increment(1);
        self.settings
            .counters
            .restarts
            .fetch_add(1, Ordering::Relaxed);
        // The same value is restarted: forget the state, keep the commands not yet answered.
        self.state = A::default();
        self.version = 0;
        self.ready = false;
        self.restarts = self.restarts.saturating_add(1);
    }
}

impl<A: Aggregate> Handler<Execute<A>> for AggregateActor<A> {
    type Result = ();

    fn handle(&mut self, execute: Execute<A>, ctx: &mut Context<Self>) {
        self.queue.push_back(Pending {
            command: execute.command,
            metadata: execute.metadata,
            reply: execute.reply,
            attempts: 0,
            received: Instant::now(),
        });
        // Decided once the mailbox is drained, together with every command waiting now.
        ctx.notify(Flush);
    }
}

/// A read of an actor's state and version, run inside the actor.
pub type StateReader<A> = Box<dyn FnOnce(&A, u64) + Send>;

/// Reads the actor's state: `read` runs inside the actor, after rehydration and never while an
/// append is in flight, so it sees the state as of the last durable decision.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inspect<A: Aggregate> {
    /// Gets the state and the version.
    pub read: StateReader<A>,
    /// Whether to catch up first on what other processes wrote to the stream.
    pub current: bool,
}

impl<A: Aggregate> Handler<Inspect<A>> for AggregateActor<A> {
    type Result = ();

    fn handle(&mut self, inspect: Inspect<A>, ctx: &mut Context<Self>) {
        if !inspect.current {
            (inspect.read)(&self.state, self.version);
            return;
        }
        // The state is taken only when there is something to catch up on.
        self.with_stored_version(ctx, move |stored, actor, ctx| {
            match stored {
                Ok(stored) if stored > actor.version => actor.catch_up(ctx, Some(inspect.read)),
                Ok(_) => (inspect.read)(&actor.state, actor.version),
                // The read is dropped: the caller hears that the actor answered nothing. The
                // state and the commands waiting are untouched.
                Err(error) => {
                    warn!(aggregate = A::TYPE, id = %actor.id, %error, "checking the stream's version for a read failed");
                }
            }
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl<A: Aggregate> Handler<Flush> for AggregateActor<A> {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}
