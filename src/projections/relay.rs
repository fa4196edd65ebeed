//! The AMQP relay: a tracking processor over the event store that publishes every event to a
//! RabbitMQ topic exchange (routing key `<aggregate type>.<event type>`, message id = event id)
//! with publisher confirms, and moves its checkpoint only once the broker confirmed. The store
//! is the outbox: a crash between commit and publish loses nothing (the events after the
//! checkpoint are published again; consumers drop duplicates by message id). A lost connection
//! is reconnected with backoff, resuming from the checkpoint.
//!
//! Nothing depends on the relay for correctness: read models track the store. Query processes
//! use it to hear of changes at once.
//!
//! Must not touch: HTTP, concrete read models.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::read_store::{Commit, ReadStore};
use super::runner::{ProcessorState, ProcessorStatus};
use crate::actors::{Broker, EventBatch, Subscribe, Unsubscribe};
use crate::store::{RecordedEvent, StoreError};

/// The exchange events are published to.
pub const EXCHANGE: &str = "nursery.events";

/// The relay's processor name (its checkpoint).
pub const RELAY_NAME: &str = "relay:amqp";

/// Renders an event's payload as JSON for consumers (`None`: the event is published without
/// `data`).
pub type Render = Arc<dyn Fn(&RecordedEvent) -> Option<Value> + Send + Sync>;

/// A running relay.
#[derive(Clone)]
pub struct RelayHandle {
    status: watch::Receiver<ProcessorStatus>,
    connected: Arc<AtomicBool>,
}

impl RelayHandle {
    /// Its status: the last position the broker confirmed.
    pub fn status(&self) -> ProcessorStatus {
        self.status.borrow().clone()
    }

    /// Whether it is connected to the broker now (for readiness).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Waits until the broker confirmed `position`, up to `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut status = self.status.clone();
        tokio::time::timeout(timeout, status.wait_for(|s| s.position >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The envelope consumers receive.
fn envelope(event: &RecordedEvent, render: &Render) -> Value {
    json!({
        "event_id": event.event_id,
        "position": event.position,
        "aggregate_type": event.stream.aggregate_type,
        "aggregate_id": event.stream.aggregate_id,
        "sequence": event.sequence,
        "type": event.event_type,
        "revision": event.revision,
        "recorded_at": event.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "metadata": {
            "command_id": event.metadata.command_id,
            "correlation_id": event.metadata.correlation_id,
            "causation_id": event.metadata.causation_id,
        },
        "data": render(event),
    })
}

/// Starts relaying from the relay's checkpoint to the broker at `url` (`amqp://...`).
pub async fn start_relay(
    url: String,
    read: Arc<dyn ReadStore>,
    broker: actix::Addr<Broker>,
    render: Render,
) -> Result<RelayHandle, StoreError> {
    let generation = read.active_generation(RELAY_NAME).await?;
    let position = read.checkpoint(RELAY_NAME, generation).await?;
    let (tell, status) = watch::channel(ProcessorStatus {
        name: RELAY_NAME.to_owned(),
        position,
        generation,
        state: ProcessorState::Running,
        rebuild_position: None,
        last_error: None,
        head: 0,
        lag: 0,
    });
    let connected = Arc::new(AtomicBool::new(false));
    let relay = Relay {
        url,
        read,
        broker,
        render,
        generation,
        position,
        status: tell,
        connected: Arc::clone(&connected),
    };
    actix_rt::spawn(relay.run());
    Ok(RelayHandle { status, connected })
}

struct Relay {
    url: String,
    read: Arc<dyn ReadStore>,
    broker: actix::Addr<Broker>,
    render: Render,
    generation: u32,
    position: u64,
    status: watch::Sender<ProcessorStatus>,
    connected: Arc<AtomicBool>,
}

impl Relay {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.status.is_closed() {
                return;
            }
            match self.session().await {
                Ok(()) => return, // the broker actor is gone: the process is stopping
                Err(error) => {
                    self.connected.store(false, Ordering::SeqCst);
                    let _ = self.broker.send(Unsubscribe(RELAY_NAME.to_owned())).await;
                    warn!(%error, ?backoff, "AMQP relay: reconnecting");
                    self.status.send_modify(|s| {
                        s.state = ProcessorState::Failing;
                        s.last_error = Some(error.clone());
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // Resume from what is stored, not from what was in flight.
                    if let Ok(position) = self.read.checkpoint(RELAY_NAME, self.generation).await {
                        self.position = position;
                    }
                }
            }
            if self.connected.load(Ordering::SeqCst) {
                backoff = Duration::from_millis(100);
            }
        }
    }

    /// One connection's life: publishes until something fails (an error) or the events stop
    /// (Ok: the process is stopping).
    async fn session(&mut self) -> Result<(), String> {
        let (connection, channel) = open_exchange(&self.url).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("confirms: {e}"))?;
        let (sink, mut events) = mpsc::channel::<EventBatch>(64);
        self.broker
            .send(Subscribe {
                name: RELAY_NAME.to_owned(),
                from: self.position + 1,
                sink,
            })
            .await
            .map_err(|e| format!("broker: {e}"))?;
        self.connected.store(true, Ordering::SeqCst);
        info!(url = %redact(&self.url), from = self.position + 1, "AMQP relay connected");
        self.status.send_modify(|s| {
            s.state = ProcessorState::Running;
            s.last_error = None;
        });
        while let Some(batch) = events.recv().await {
            let fresh: Vec<&Arc<RecordedEvent>> = batch
                .iter()
                .filter(|e| e.position > self.position)
                .collect();
            let Some(last) = fresh.last().map(|e| e.position) else {
                continue;
            };
            let mut confirms = Vec::with_capacity(fresh.len());
            for event in &fresh {
                let body = serde_json::to_vec(&envelope(event, &self.render))
                    .map_err(|e| format!("encode: {e}"))?;
                let properties = BasicProperties::default()
                    .with_message_id(event.event_id.to_string().into())
                    .with_content_type("application/json".into())
                    .with_type(event.event_type.clone().into())
                    .with_delivery_mode(2);
                let routing = format!("{}.{}", event.stream.aggregate_type, event.event_type);
                let confirm = channel
                    .basic_publish(
                        EXCHANGE.into(),
                        routing.into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                match confirm.await.map_err(|e| format!("confirm: {e}"))? {
                    Confirmation::Ack(_) | Confirmation::NotRequested => {}
                    Confirmation::Nack(_) => return Err("the broker refused a message".into()),
                }
            }
            // Every event of the batch is with the broker: now the checkpoint may move.
            let commit = Commit {
                name: RELAY_NAME,
                generation: self.generation,
                position: last,
                ..Commit::default()
            };
            self.read
                .commit(commit)
                .await
                .map_err(|e| format!("checkpoint: {e}"))?;
            self.position = last;
            self.status.send_modify(|s| s.position = last);
            metrics::gauge!("nursery_projection_position", "projection" => RELAY_NAME)
                .set(last as f64);
        }
        let _ = connection.close(200, "stopping".into()).await;
        Ok(())
    }
}

/// Connects to the broker at `url`, opens a channel and declares the durable event exchange
/// (the relay and the followers both do, whichever starts first).
async fn open_exchange(url: &str) -> Result<(Connection, lapin::Channel), String> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("exchange: {e}"))?;
    Ok((connection, channel))
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Follows the exchange from a process that does not run the relay (a query process): calls
/// `on_event` for every message, so views followed through the database are read again at
/// once. Reconnects with backoff; `connected` says whether it is connected now.
pub fn follow_exchange(
    url: String,
    connected: Arc<AtomicBool>,
    on_event: Arc<dyn Fn() + Send + Sync>,
) {
    actix_rt::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let outcome = follow_once(&url, &connected, &*on_event).await;
            connected.store(false, Ordering::SeqCst);
            if let Err(error) = outcome {
                warn!(%error, ?backoff, "AMQP follower: reconnecting");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

async fn follow_once(
    url: &str,
    connected: &AtomicBool,
    on_event: &(dyn Fn() + Send + Sync),
) -> Result<(), String> {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    let (_connection, channel) = open_exchange(url).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("queue: {e}"))?;
    channel
        .queue_bind(
            queue.name().clone(),
            EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("consume: {e}"))?;
    connected.store(true, Ordering::SeqCst);
    info!(url = %redact(url), "following the event exchange");
    while let Some(delivery) = consumer.next().await {
        delivery.map_err(|e| format!("delivery: {e}"))?;
        on_event();
    }
    Err("the consumer ended".into())
}
