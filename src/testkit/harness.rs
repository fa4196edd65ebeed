//! The whole runtime in-process on the in-memory store, for actor-level tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::FaultyStore;
use crate::actors::{CommandGateway, EventBatch, Runtime, RuntimeBuilder, Subscribe};
use crate::store::{EventStore, MemoryStore, RecordedEvent, StoreError};

/// A running runtime over a [`FaultyStore`] around an in-memory store.
pub struct TestRuntime {
    runtime: Runtime,
    faults: Arc<FaultyStore>,
    recorders: Mutex<Vec<Recorder>>,
}

/// What one subscriber saw, in order.
#[derive(Clone)]
pub struct Recorder {
    name: String,
    seen: Arc<Mutex<Vec<Arc<RecordedEvent>>>>,
    position: watch::Receiver<u64>,
}

impl Recorder {
    /// The subscriber's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every event it received, in the order received.
    pub fn seen(&self) -> Vec<Arc<RecordedEvent>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The positions it received, in the order received.
    pub fn positions(&self) -> Vec<u64> {
        self.seen().iter().map(|e| e.position).collect()
    }

    /// The last position it received.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }
}

impl TestRuntime {
    /// Starts the runtime on a fresh in-memory store; `build` registers aggregates,
    /// interceptors and settings. Call inside an actix system (`#[actix_rt::test]`).
    pub async fn start(
        build: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    ) -> Result<Self, StoreError> {
        Self::start_on(Arc::new(MemoryStore::new()), build).await
    }

    /// Starts the runtime on `store` (wrapped in a [`FaultyStore`]).
    pub async fn start_on(
        store: Arc<dyn EventStore>,
        build: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    ) -> Result<Self, StoreError> {
        let faults = Arc::new(FaultyStore::new(store));
        let runtime = build(Runtime::builder(Arc::clone(&faults) as Arc<dyn EventStore>))
            .start()
            .await?;
        Ok(Self {
            runtime,
            faults,
            recorders: Mutex::new(Vec::new()),
        })
    }

    /// The command gateway.
    pub fn gateway(&self) -> CommandGateway {
        self.runtime.gateway()
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The store's fault switches.
    pub fn faults(&self) -> &FaultyStore {
        &self.faults
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        self.faults.inner()
    }

    /// Subscribes a recorder named `name` from position `from`, with a channel of `capacity`
    /// batches, taking `delay` over each batch (a slow subscriber).
    pub async fn subscribe(
        &self,
        name: &str,
        from: u64,
        capacity: usize,
        delay: Duration,
    ) -> Recorder {
        let (sink, mut batches) = mpsc::channel::<EventBatch>(capacity.max(1));
        let (moved, position) = watch::channel(from.saturating_sub(1));
        let recorder = Recorder {
            name: name.to_owned(),
            seen: Arc::default(),
            position,
        };
        let seen = Arc::clone(&recorder.seen);
        actix_rt::spawn(async move {
            while let Some(batch) = batches.recv().await {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let last = batch.last().map(|e| e.position);
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(batch.iter().cloned());
                if let Some(last) = last {
                    let _ = moved.send(last);
                }
            }
        });
        let _ = self
            .runtime
            .broker()
            .send(Subscribe {
                name: name.to_owned(),
                from,
                sink,
            })
            .await;
        self.recorders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(recorder.clone());
        recorder
    }

    /// Waits until every recorder has received the store's head, up to `limit`.
    pub async fn settle_within(&self, limit: Duration) -> Result<(), String> {
        let head = self.store().head().await.map_err(|e| e.to_string())?;
        let recorders = self
            .recorders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for mut recorder in recorders {
            let reached = tokio::time::timeout(limit, recorder.position.wait_for(|p| *p >= head))
                .await
                .is_ok_and(|r| r.is_ok());
            if !reached {
                return Err(format!(
                    "{} stopped at {} of {head}",
                    recorder.name,
                    recorder.position()
                ));
            }
        }
        Ok(())
    }

    /// Waits until every recorder has received the store's head (up to 10 s).
    pub async fn settle(&self) -> Result<(), String> {
        self.settle_within(Duration::from_secs(10)).await
    }
}
