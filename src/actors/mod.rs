//! The runtime on actix: supervised aggregate actors, the journal (group commit), the broker
//! (fan-out with catch-up), the registry (passivation) and the command gateway.
//!
//! Must not touch: HTTP, concrete read models. Generic over the aggregate type: a new aggregate
//! is one `register::<A>()` call.

mod aggregate_actor;
mod broker;
mod error;
mod gateway;
mod journal;
mod registry;
mod supervision;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::Semaphore;

pub use aggregate_actor::{
    ActorSettings, AggregateActor, CommandOutcome, CommandResult, Execute, Inspect,
};
pub use broker::{
    Broker, BrokerConfig, BrokerStatus, EventBatch, Published, Status, Subscribe, Unsubscribe,
};
pub use error::{CommandError, Refusal};
pub use gateway::{
    Authorization, Callback, CommandEnvelope, CommandGateway, DynCommand, Interceptor, Logging,
    Validation,
};
pub use journal::{Append, Journal, JournalConfig};
pub use registry::{ActorCounters, Live, PassivationConfig, Registry};
pub use supervision::SupervisionPolicy;

use crate::domain::Aggregate;
use crate::store::{Codec, EventStore, Repository, SnapshotPolicy, StoreError};

/// Settings of the runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Group commit.
    pub journal: JournalConfig,
    /// Fan-out.
    pub broker: BrokerConfig,
    /// Restarts and recovery.
    pub supervision: SupervisionPolicy,
    /// Idle actors and the bound on live ones.
    pub passivation: PassivationConfig,
    /// How payloads are written and read.
    pub codec: Codec,
    /// When aggregates are snapshotted.
    pub snapshots: SnapshotPolicy,
    /// How long `send_and_wait` waits.
    pub command_timeout: Duration,
    /// How many times a command is decided again after concurrency conflicts (each retry
    /// reads only the events the actor missed, so retries are cheap).
    pub max_conflict_retries: u32,
    /// How many commands may wait in one aggregate actor's mailbox.
    pub mailbox_capacity: usize,
    /// How long a command id's first success is remembered (repeats answer it).
    pub dedupe_ttl: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            journal: JournalConfig::default(),
            broker: BrokerConfig::default(),
            supervision: SupervisionPolicy::default(),
            passivation: PassivationConfig::default(),
            codec: Codec::default(),
            snapshots: SnapshotPolicy::default(),
            command_timeout: Duration::from_secs(10),
            max_conflict_retries: 10,
            mailbox_capacity: 1_024,
            dedupe_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Starts one aggregate type's registry on a starting runtime.
type Registration = Box<dyn FnOnce(&Runtime) -> (TypeId, Arc<dyn Any + Send + Sync>)>;

/// Builds a [`Runtime`]: register aggregate types and interceptors, then start it.
pub struct RuntimeBuilder {
    store: Arc<dyn EventStore>,
    config: RuntimeConfig,
    interceptors: Vec<Arc<dyn Interceptor>>,
    registrations: Vec<Registration>,
}

impl RuntimeBuilder {
    /// Replaces the settings.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers aggregate type `A`.
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        self.registrations.push(Box::new(|runtime: &Runtime| {
            let config = &runtime.config;
            let settings = Arc::new(ActorSettings::<A> {
                repository: Repository::new(
                    Arc::clone(&runtime.store),
                    config.codec.clone(),
                    config.snapshots,
                ),
                journal: runtime.journal.clone(),
                supervision: config.supervision.clone(),
                recoveries: Arc::clone(&runtime.recoveries),
                max_conflict_retries: config.max_conflict_retries,
                mailbox_capacity: config.mailbox_capacity,
                counters: Arc::default(),
            });
            let registry = Registry::new(
                settings,
                actix_rt::Arbiter::current(),
                config.passivation.clone(),
            );
            (TypeId::of::<A>(), registry as Arc<dyn Any + Send + Sync>)
        }));
        self
    }

    /// Appends an interceptor to the chain (they run in the order added).
    pub fn interceptor(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Starts the journal, the broker and the registries on the current actix arbiter.
    pub async fn start(self) -> Result<Runtime, StoreError> {
        let head = self.store.head().await?;
        let broker = Broker::new(Arc::clone(&self.store), head, self.config.broker.clone()).start();
        let journal = Journal::new(
            Arc::clone(&self.store),
            Some(broker.clone()),
            self.config.journal.clone(),
        )
        .start();
        let mut runtime = Runtime {
            recoveries: Arc::new(Semaphore::new(
                self.config.supervision.max_concurrent_recoveries.max(1),
            )),
            store: self.store,
            config: self.config,
            journal,
            broker,
            gateway: None,
        };
        let registries: HashMap<TypeId, Arc<dyn Any + Send + Sync>> = self
            .registrations
            .into_iter()
            .map(|register| register(&runtime))
            .collect();
        runtime.gateway = Some(CommandGateway {
            inner: Arc::new(gateway::GatewayInner {
                registries,
                interceptors: self.interceptors,
                timeout: runtime.config.command_timeout,
                dedupe_ttl: runtime.config.dedupe_ttl,
                answered: DashMap::new(),
            }),
        });
        Ok(runtime)
    }
}

/// The running runtime: the gateway to send commands, the broker to subscribe, the store.
pub struct Runtime {
    store: Arc<dyn EventStore>,
    config: RuntimeConfig,
    journal: Addr<Journal>,
    broker: Addr<Broker>,
    recoveries: Arc<Semaphore>,
    gateway: Option<CommandGateway>,
}

impl Runtime {
    /// A builder over `store`.
    pub fn builder(store: Arc<dyn EventStore>) -> RuntimeBuilder {
        RuntimeBuilder {
            store,
            config: RuntimeConfig::default(),
            interceptors: Vec::new(),
            registrations: Vec::new(),
        }
    }

    /// The command gateway.
    pub fn gateway(&self) -> CommandGateway {
        // Set by `start`, the only constructor.
        self.gateway.clone().unwrap_or_else(|| CommandGateway {
            inner: Arc::new(gateway::GatewayInner {
                registries: HashMap::new(),
                interceptors: Vec::new(),
                timeout: self.config.command_timeout,
                dedupe_ttl: self.config.dedupe_ttl,
                answered: DashMap::new(),
            }),
        })
    }

    /// The broker, to subscribe to committed events.
    pub fn broker(&self) -> &Addr<Broker> {
        &self.broker
    }

    /// The journal.
    pub fn journal(&self) -> &Addr<Journal> {
        &self.journal
    }

    /// The event store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }
}
