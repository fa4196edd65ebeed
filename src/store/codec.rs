//! Encoding typed events and states into stored payloads and back: MessagePack with named
//! fields by default, JSON by choice, and upcasters that lift old payload revisions to the
//! current one on read.
//!
//! Must not touch: any database. A codec turns values into bytes and bytes into values.
//!
//! MessagePack is written with `to_vec_named` (a map keyed by field name), never the positional
//! default: a positional payload silently decodes into the wrong fields as soon as an event
//! gains, loses or reorders a field.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use uuid::Uuid;

use super::{EncodedEvent, Metadata, NewEvent, RecordedEvent, StoreError, StreamId};
use crate::domain::{EventSet, PayloadDecoder};

/// How a payload is encoded. Stored with every row, so a store can change its default format
/// and still read what it wrote before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// MessagePack, fields by name (the default: compact and fast).
    #[default]
    MessagePack,
    /// JSON (readable in the database).
    Json,
}

impl PayloadFormat {
    /// The code stored in the `payload_format` column.
    pub fn code(self) -> i16 {
        match self {
            Self::MessagePack => 0,
            Self::Json => 1,
        }
    }

    /// The format a stored code names.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::MessagePack),
            1 => Some(Self::Json),
            _ => None,
        }
    }

    /// Encodes a value in this format.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, String> {
        match self {
            Self::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
            Self::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        }
    }

    /// Decodes a value from bytes in this format.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Self::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
            Self::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// Lifts a payload of one revision to the next one. Works on a JSON value whatever the stored
/// format, so one upcaster serves MessagePack and JSON rows alike.
pub type UpcastFn = dyn Fn(Value) -> Result<Value, String> + Send + Sync;

/// Upcasters, registered per (event type, revision they read).
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Arc<UpcastFn>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step that turns revision `from` of `event_type` into revision `from + 1`.
    pub fn register(
        mut self,
        event_type: impl Into<String>,
        from: u32,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps.insert((event_type.into(), from), Arc::new(step));
        self
    }

    /// Lifts `value` from revision `from` to revision `to` of `event_type`.
    fn upcast(
        &self,
        event_type: &str,
        from: u32,
        to: u32,
        mut value: Value,
    ) -> Result<Value, UpcastError> {
        for revision in from..to {
            let step = self
                .steps
                .get(&(event_type.to_owned(), revision))
                .ok_or(UpcastError::Missing)?;
            value = step(value).map_err(UpcastError::Failed)?;
        }
        Ok(value)
    }
}

enum UpcastError {
    Missing,
    Failed(String),
}

/// Encodes typed events and states for a store, and decodes them back through the upcasters.
#[derive(Clone, Debug, Default)]
pub struct Codec {
    format: PayloadFormat,
    upcasters: Upcasters,
}

impl Codec {
    /// A codec writing `format`, reading every format.
    pub fn new(format: PayloadFormat) -> Self {
        Self {
            format,
            upcasters: Upcasters::default(),
        }
    }

    /// The same codec with these upcasters.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// The format this codec writes.
    pub fn format(&self) -> PayloadFormat {
        self.format
    }

    /// Encodes one typed event into a row to append, with a fresh event id.
    pub fn encode_event<E: EventSet>(
        &self,
        event: &E,
        metadata: Metadata,
    ) -> Result<NewEvent, StoreError> {
        self.encode_event_with_id(event, metadata, super::ids::fresh())
    }

    /// Encodes one typed event into a row to append, with the given event id (deterministic ids
    /// make a retried append idempotent).
    pub fn encode_event_with_id<E: EventSet>(
        &self,
        event: &E,
        metadata: Metadata,
        event_id: Uuid,
    ) -> Result<NewEvent, StoreError> {
        let payload = self.format.encode(event).map_err(|reason| {
            StoreError::InvalidInput(format!(
                "event {} does not encode: {reason}",
                event.event_type()
            ))
        })?;
        Ok(NewEvent {
            event_id,
            event_type: event.event_type().to_owned(),
            revision: event.revision(),
            format: self.format,
            payload,
            metadata,
        })
    }

    /// Decodes a stored event into its typed form, upcasting an old revision first. An unknown
    /// type, a revision from the future or a corrupt payload is a typed error naming the stream
    /// and the sequence, never a panic.
    pub fn decode_event<E: EventSet>(&self, record: &RecordedEvent) -> Result<E, StoreError> {
        self.decode_encoded(&record.stream, record.encoded())
    }

    /// Decodes an event of `stream` as a replay read it; as [`Codec::decode_event`].
    pub fn decode_encoded<E: EventSet>(
        &self,
        stream: &StreamId,
        event: EncodedEvent<'_>,
    ) -> Result<E, StoreError> {
        let unknown = || StoreError::UnknownEventType {
            stream: stream.clone(),
            sequence: event.sequence,
            event_type: event.event_type.to_owned(),
            revision: event.revision,
        };
        let current = E::revision_of(event.event_type).ok_or_else(unknown)?;
        let corrupt = |reason: String| StoreError::Corrupt {
            stream: stream.clone(),
            sequence: event.sequence,
            reason,
        };
        let decoded = if event.revision == current {
            E::decode(
                event.event_type,
                BytesDecoder {
                    format: event.format,
                    bytes: event.payload,
                },
            )
        } else if event.revision < current {
            let value: Value = event.format.decode(event.payload).map_err(corrupt)?;
            let value = self
                .upcasters
                .upcast(event.event_type, event.revision, current, value)
                .map_err(|error| match error {
                    UpcastError::Missing => unknown(),
                    UpcastError::Failed(reason) => corrupt(format!("upcasting failed: {reason}")),
                })?;
            E::decode(event.event_type, ValueDecoder(value))
        } else {
            return Err(unknown());
        };
        decoded.ok_or_else(unknown)?.map_err(corrupt)
    }

    /// Encodes an aggregate's state for a snapshot.
    pub fn encode_state<T: Serialize>(&self, state: &T) -> Result<Vec<u8>, StoreError> {
        self.format
            .encode(state)
            .map_err(|reason| StoreError::InvalidInput(format!("state does not encode: {reason}")))
    }

    /// Decodes a snapshot's state.
    pub fn decode_state<T: DeserializeOwned>(
        &self,
        stream: &StreamId,
        sequence: u64,
        format: PayloadFormat,
        payload: &[u8],
    ) -> Result<T, StoreError> {
        format
            .decode(payload)
            .map_err(|reason| StoreError::Corrupt {
                stream: stream.clone(),
                sequence,
                reason: format!("snapshot does not decode: {reason}"),
            })
    }
}

struct BytesDecoder<'a> {
    format: PayloadFormat,
    bytes: &'a [u8],
}

impl PayloadDecoder for BytesDecoder<'_> {
    type Error = String;

    fn decode<T: DeserializeOwned>(self) -> Result<T, String> {
        self.format.decode(self.bytes)
    }
}

struct ValueDecoder(Value);

impl PayloadDecoder for ValueDecoder {
    type Error = String;

    fn decode<T: DeserializeOwned>(self) -> Result<T, String> {
        serde_json::from_value(self.0).map_err(|e| e.to_string())
    }
}
