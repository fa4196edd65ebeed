//! A read model as this process sees it: run here ([`ViewHandle::Local`], in the `all` and
//! `events` roles), or run by the events process and followed here through its checkpoint in
//! the shared database ([`ViewHandle::Remote`], in the `query` role).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::projections::{
    DeadLetter, Lagging, ProcessorState, ProcessorStatus, ProjectionHandle, ReadStore,
};
use crate::store::{EventStore, StoreError, StreamId};

/// How often a followed read model's checkpoint is read without a broker to say when.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(25);

/// How often it is read when the event exchange also tells of changes. Still short: a message
/// can arrive before the read model committed the event it tells of.
pub(crate) const FOLLOW_WITH_BROKER: Duration = Duration::from_millis(25);

/// A read model, run here or followed.
#[derive(Clone)]
pub(crate) enum ViewHandle {
    /// Run by this process.
    Local(ProjectionHandle),
    /// Run by another process; its position is read from the database.
    Remote(RemoteView),
}

/// A read model another process runs.
#[derive(Clone)]
pub(crate) struct RemoteView {
    name: String,
    status: watch::Receiver<ProcessorStatus>,
    read: Arc<dyn ReadStore>,
    store: Arc<dyn EventStore>,
}

impl RemoteView {
    /// Follows `name`'s checkpoint in `read`.
    pub(crate) fn follow(
        name: &str,
        read: Arc<dyn ReadStore>,
        store: Arc<dyn EventStore>,
        nudge: Arc<tokio::sync::Notify>,
        every: Duration,
    ) -> Self {
        let (tell, status) = watch::channel(ProcessorStatus {
            name: name.to_owned(),
            position: 0,
            generation: 1,
            state: ProcessorState::Running,
            rebuild_position: None,
            last_error: None,
            head: 0,
            lag: 0,
        });
        let polled = Arc::clone(&read);
        let followed = name.to_owned();
        actix_rt::spawn(async move {
            loop {
                if tell.is_closed() {
                    return;
                }
                // Read only: the events process registers the processor.
                if let Ok(Some((generation, position))) = polled.serving_checkpoint(&followed).await
                {
                    tell.send_if_modified(|s| {
                        let changed = s.position != position || s.generation != generation;
                        s.position = position;
                        s.generation = generation;
                        changed
                    });
                }
                // Read again after `every`, or at once when the event exchange says something
                // happened.
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = nudge.notified() => {}
                }
            }
        });
        Self {
            name: name.to_owned(),
            status,
            read,
            store,
        }
    }
}

impl ViewHandle {
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Local(h) => h.name(),
            Self::Remote(r) => &r.name,
        }
    }

    pub(crate) fn status(&self) -> ProcessorStatus {
        match self {
            Self::Local(h) => h.status(),
            Self::Remote(r) => r.status.borrow().clone(),
        }
    }

    pub(crate) fn watch(&self) -> watch::Receiver<ProcessorStatus> {
        match self {
            Self::Local(h) => h.watch(),
            Self::Remote(r) => r.status.clone(),
        }
    }

    pub(crate) async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64, Lagging> {
        match self {
            Self::Local(h) => h.wait_for(position, timeout).await,
            Self::Remote(r) => {
                let mut status = r.status.clone();
                match tokio::time::timeout(timeout, status.wait_for(|s| s.position >= position))
                    .await
                {
                    Ok(Ok(status)) => Ok(status.position),
                    _ => Err(Lagging {
                        name: r.name.clone(),
                        position: r.status.borrow().position,
                        wanted: position,
                    }),
                }
            }
        }
    }

    pub(crate) async fn report(&self) -> ProcessorStatus {
        match self {
            Self::Local(h) => h.report().await,
            Self::Remote(r) => {
                let mut status = r.status.borrow().clone();
                if let Ok(head) = r.store.head().await {
                    status.head = head;
                    status.lag = head.saturating_sub(status.position);
                }
                status
            }
        }
    }

    pub(crate) async fn rebuild(&self) -> Result<(), String> {
        match self {
            Self::Local(h) => h.rebuild().await,
            Self::Remote(r) => Err(format!(
                "{} runs in the events process: rebuild it there",
                r.name
            )),
        }
    }

    pub(crate) async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        match self {
            Self::Local(h) => h.dead_letters().await,
            Self::Remote(r) => r.read.dead_letters(&r.name).await,
        }
    }

    pub(crate) async fn retry(&self, stream: StreamId) -> Result<usize, String> {
        match self {
            Self::Local(h) => h.retry(stream).await,
            Self::Remote(r) => Err(format!(
                "{} runs in the events process: retry its dead letters there",
                r.name
            )),
        }
    }
}
