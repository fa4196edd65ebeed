//! The store's vocabulary: streams, events as written and as read, snapshots, and the errors a
//! store call can answer.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::PayloadFormat;

/// Names one aggregate's stream: its type and its id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId {
    /// The aggregate type, as [`crate::domain::Aggregate::TYPE`].
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
}

impl StreamId {
    /// The stream of aggregate `aggregate_id` of type `aggregate_type`.
    pub fn new(aggregate_type: impl Into<String>, aggregate_id: impl Into<String>) -> Self {
        Self {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.aggregate_id)
    }
}

/// What an append expects the stream's version to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the version (no concurrency check).
    Any,
    /// The stream's last sequence number must be exactly this; 0 means the stream must not
    /// exist yet.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether `actual` satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(expected) => expected == actual,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Exact(version) => write!(f, "{version}"),
        }
    }
}

/// Who and what caused an event: stored beside every event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The command that produced the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    /// The conversation the command belongs to (the first command's id, carried along).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The message (a command or an event) that directly caused the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The customer on whose behalf the command ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Free key/values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl Metadata {
    pub(crate) fn to_json(&self) -> Result<String, StoreError> {
        serde_json::to_string(self)
            .map_err(|e| StoreError::InvalidInput(format!("metadata does not encode: {e}")))
    }

    pub(crate) fn from_json(
        text: &str,
        stream: &StreamId,
        sequence: u64,
    ) -> Result<Self, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            stream: stream.clone(),
            sequence,
            reason: format!("metadata does not decode: {e}"),
        })
    }
}

/// A stored event as a replay reads it: only what decoding and folding need, borrowed from the
/// row it was read from (see [`super::EventStore::replay_stream`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncodedEvent<'a> {
    /// Its number within the stream.
    pub sequence: u64,
    /// The stored event type name.
    pub event_type: &'a str,
    /// The payload revision it was written with.
    pub revision: u32,
    /// How the payload is encoded.
    pub format: PayloadFormat,
    /// The encoded payload.
    pub payload: &'a [u8],
}

/// An event as it is handed to the store: encoded, not yet numbered.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Unique id of the event; appending an id that is already stored is detected.
    pub event_id: Uuid,
    /// The stored event type name.
    pub event_type: String,
    /// The payload revision.
    pub revision: u32,
    /// How the payload is encoded.
    pub format: PayloadFormat,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// Who and what caused it.
    pub metadata: Metadata,
}

/// A stored event, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream: StreamId,
    /// Its number within the stream, from 1 with no gaps.
    pub sequence: u64,
    /// Its place in the global order, from 1 with no gaps.
    pub position: u64,
    /// Its unique id.
    pub event_id: Uuid,
    /// The stored event type name.
    pub event_type: String,
    /// The payload revision it was written with.
    pub revision: u32,
    /// How the payload is encoded.
    pub format: PayloadFormat,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// Who and what caused it.
    pub metadata: Metadata,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
}

impl<'a> EncodedEvent<'a> {
    /// An event of `stream` from the columns a SQL store reads for a replay; a format or a
    /// revision out of range is an error naming the stream and the sequence.
    pub(crate) fn from_columns(
        stream: &StreamId,
        sequence: i64,
        event_type: &'a str,
        revision: i64,
        format_code: i64,
        payload: &'a [u8],
    ) -> Result<Self, StoreError> {
        let sequence = to_u64(sequence, "sequence")?;
        let (revision, format) = encoding(stream, sequence, revision, format_code, "payload")?;
        Ok(Self {
            sequence,
            event_type,
            revision,
            format,
            payload,
        })
    }
}

/// A stored revision and format code, checked: out of range, either is an error naming the
/// stream and the sequence (`what`: "payload" or "snapshot").
fn encoding(
    stream: &StreamId,
    sequence: u64,
    revision: i64,
    format_code: i64,
    what: &str,
) -> Result<(u32, PayloadFormat), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        stream: stream.clone(),
        sequence,
        reason,
    };
    let revision = u32::try_from(revision)
        .map_err(|_| corrupt(format!("{what} revision {revision} out of range")))?;
    let format = PayloadFormat::from_code(format_code)
        .ok_or_else(|| corrupt(format!("unknown {what} format {format_code}")))?;
    Ok((revision, format))
}

impl RecordedEvent {
    /// What a replay of this event reads.
    pub fn encoded(&self) -> EncodedEvent<'_> {
        EncodedEvent {
            sequence: self.sequence,
            event_type: &self.event_type,
            revision: self.revision,
            format: self.format,
            payload: &self.payload,
        }
    }
}

/// One append: events for one stream, with the version the writer expects the stream to have.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendRequest {
    /// The stream to append to.
    pub stream: StreamId,
    /// The version the stream must have for the append to go through.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

/// What a successful append wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append (its last sequence number).
    pub version: u64,
    /// The global position of the first event written, `None` for an empty append.
    pub first_position: Option<u64>,
    /// The global position of the last event written, `None` for an empty append.
    pub last_position: Option<u64>,
    /// When the store recorded the events (for an empty append, when it was answered).
    pub recorded_at: DateTime<Utc>,
}

/// A snapshot of an aggregate's state at one sequence number of its stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The stream it summarises.
    pub stream: StreamId,
    /// The last sequence number folded into it.
    pub sequence: u64,
    /// The revision of the state's shape.
    pub revision: u32,
    /// How the payload is encoded.
    pub format: PayloadFormat,
    /// The encoded state.
    pub payload: Vec<u8>,
    /// When it was taken.
    pub recorded_at: DateTime<Utc>,
}

impl Snapshot {
    /// A snapshot of `stream` from the columns a SQL store reads; a format or a revision out
    /// of range is an error naming the stream and the sequence.
    pub(crate) fn from_columns(
        stream: &StreamId,
        sequence: i64,
        revision: i64,
        format_code: i64,
        recorded_at_micros: i64,
        payload: Vec<u8>,
    ) -> Result<Self, StoreError> {
        let sequence = to_u64(sequence, "sequence")?;
        let (revision, format) = encoding(stream, sequence, revision, format_code, "snapshot")?;
        Ok(Self {
            stream: stream.clone(),
            sequence,
            revision,
            format,
            payload,
            recorded_at: from_micros(recorded_at_micros),
        })
    }
}

/// Where loading a stream starts: its newest snapshot and, when the store read it in the same
/// round trip, the stream's version (both as of one moment).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadStart {
    /// The newest snapshot of the stream, if any.
    pub snapshot: Option<Snapshot>,
    /// The stream's version (0: no events), or `None` when the store did not read it: a load
    /// then reads on from the snapshot to find what follows it.
    pub version: Option<u64>,
}

/// The row a SQL store's load start reads: the stream's version, then the newest snapshot's
/// sequence, revision, format code, time (microseconds) and payload, all NULL without one.
pub(crate) type LoadStartRow = (
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
);

impl LoadStart {
    /// The load start of `stream` from the row a SQL store read.
    pub(crate) fn from_row(stream: &StreamId, row: LoadStartRow) -> Result<Self, StoreError> {
        let (version, sequence, revision, format_code, recorded_at, payload) = row;
        let snapshot = match (sequence, revision, format_code, recorded_at, payload) {
            (None, ..) => None,
            (
                Some(sequence),
                Some(revision),
                Some(format_code),
                Some(recorded_at),
                Some(payload),
            ) => Some(Snapshot::from_columns(
                stream,
                sequence,
                revision,
                format_code,
                recorded_at,
                payload,
            )?),
            (Some(sequence), ..) => {
                return Err(StoreError::Internal(format!(
                    "the snapshot of {stream} at {sequence} was read without all its columns"
                )));
            }
        };
        Ok(Self {
            snapshot,
            version: Some(to_u64(version, "sequence")?),
        })
    }
}

/// What can go wrong in a store call. Each variant says how a caller should react.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream's version is not the expected one: someone else appended first. Nothing was
    /// written. Reload the aggregate and decide the command again, or report a conflict (409).
    #[error("concurrency conflict on {stream}: expected version {expected}, actual {actual}")]
    ConcurrencyConflict {
        /// The stream.
        stream: StreamId,
        /// The version the append expected.
        expected: ExpectedVersion,
        /// The version the stream has.
        actual: u64,
    },
    /// An event id of the append is already stored, and not as a retry of this same append.
    /// Nothing was written. A bug in the caller: event ids must be fresh, or the retry exact.
    #[error("event {event_id} is already stored (appending to {stream})")]
    DuplicateEvent {
        /// The stream the append was for.
        stream: StreamId,
        /// The id that is already stored.
        event_id: Uuid,
    },
    /// A stored event or snapshot could not be decoded. The data, a codec or an upcaster needs
    /// fixing; retrying will not help. Processors park such an event as a dead letter.
    #[error("stored data of {stream} at sequence {sequence} is corrupt: {reason}")]
    Corrupt {
        /// The stream.
        stream: StreamId,
        /// The sequence number of the event (or snapshot).
        sequence: u64,
        /// What is wrong.
        reason: String,
    },
    /// A stored event has a type (or a revision) the reader does not know. Register the event
    /// type or an upcaster; retrying will not help.
    #[error(
        "unknown event type {event_type:?} (revision {revision}) in {stream} at sequence {sequence}"
    )]
    UnknownEventType {
        /// The stream.
        stream: StreamId,
        /// The sequence number.
        sequence: u64,
        /// The stored type name.
        event_type: String,
        /// The stored revision.
        revision: u32,
    },
    /// The request is not acceptable to the store (too large, badly formed). Nothing was
    /// written; do not retry unchanged (a 4xx).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The database could not be reached or failed the call. Whether anything was written is
    /// decided by the transaction: nothing of a failed append is stored. Retry later (a 503).
    #[error("event store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A migration failed at start.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A processor's commit was refused because its process no longer leads the processors
    /// (another took over). Nothing was written; the process must stop processing.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A broken invariant inside the store (a bug). Report it.
    #[error("internal store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed (the database was unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Unavailable(error)
    }
}

/// Whether a driver error means the database could not be reached or the driver itself failed
/// (no connection, a pool timeout, a crashed worker, broken I/O), rather than the database
/// answering with a refusal of its own.
pub(crate) fn is_outage(error: &sqlx::Error) -> bool {
    !matches!(error, sqlx::Error::Database(_))
}

/// Converts a stored signed integer into an unsigned one, naming the column on failure.
pub(crate) fn to_u64(value: i64, column: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Internal(format!("negative {column}: {value}")))
}

/// Converts an unsigned value into the signed integer SQL stores.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::InvalidInput(format!("{what} out of range: {value}")))
}

/// Microseconds since the Unix epoch, as stored, back to a time.
pub(crate) fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}
