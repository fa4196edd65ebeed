//! Given events, expect the read model: a projection run on an in-memory document map, without
//! a runtime or a database.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::EventSet;
use crate::projections::{ApplyContext, Documents, Projection};
use crate::store::{Codec, Metadata, RecordedEvent, StreamId};

/// A projection fed typed events, its documents kept in memory.
///
/// ```
/// # use nursery::projections::{ApplyContext, Documents, Projection};
/// # use nursery::store::{Codec, RecordedEvent};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// # pub struct Watered { pub millilitres: u32 }
/// # nursery::event_set! { pub enum PotEvent { Watered } }
/// struct WaterPerPot;
/// impl Projection for WaterPerPot {
///     fn name(&self) -> &str { "water" }
///     fn keys(&self, event: &RecordedEvent) -> Vec<String> { vec![event.stream.aggregate_id.clone()] }
///     fn apply(&self, event: &RecordedEvent, docs: &mut Documents, _: ApplyContext) -> Result<(), String> {
///         let PotEvent::Watered(w) = Codec::default().decode_event(event).map_err(|e| e.to_string())?;
///         let total: u32 = docs.get_as(&event.stream.aggregate_id)?.unwrap_or(0);
///         docs.put(event.stream.aggregate_id.clone(), &(total + w.millilitres))
///     }
/// }
///
/// use nursery::testkit::ProjectionFixture;
/// let fixture = ProjectionFixture::new(WaterPerPot)
///     .given("Pot", "p1", [PotEvent::from(Watered { millilitres: 2 }), Watered { millilitres: 3 }.into()])
///     .unwrap();
/// fixture.expect_document("p1", serde_json::json!(5));
/// ```
pub struct ProjectionFixture<P: Projection> {
    projection: P,
    codec: Codec,
    documents: BTreeMap<String, Value>,
    versions: HashMap<StreamId, u64>,
    position: u64,
    replaying: bool,
}

impl<P: Projection> ProjectionFixture<P> {
    /// The projection with no documents.
    pub fn new(projection: P) -> Self {
        Self {
            projection,
            codec: Codec::default(),
            documents: BTreeMap::new(),
            versions: HashMap::new(),
            position: 0,
            replaying: false,
        }
    }

    /// Feeds the projection as if replaying (a rebuild) from now on.
    pub fn replaying(mut self, replaying: bool) -> Self {
        self.replaying = replaying;
        self
    }

    /// Applies `events` of aggregate `aggregate_type`/`id`, in order.
    pub fn given<E: EventSet>(
        mut self,
        aggregate_type: &str,
        id: &str,
        events: impl IntoIterator<Item = E>,
    ) -> Result<Self, String> {
        let stream = StreamId::new(aggregate_type, id);
        for event in events {
            let encoded = self
                .codec
                .encode_event(&event, Metadata::default())
                .map_err(|e| e.to_string())?;
            let sequence = self.versions.entry(stream.clone()).or_default();
            *sequence += 1;
            self.position += 1;
            let record = RecordedEvent {
                stream: stream.clone(),
                sequence: *sequence,
                position: self.position,
                event_id: Uuid::new_v4(),
                event_type: encoded.event_type,
                revision: encoded.revision,
                format: encoded.format,
                payload: encoded.payload,
                metadata: encoded.metadata,
                recorded_at: Utc::now(),
            };
            self.apply(&record)?;
        }
        Ok(self)
    }

    /// Applies one stored event as it is.
    pub fn apply(&mut self, record: &RecordedEvent) -> Result<(), String> {
        let keys = self.projection.keys(record);
        let loaded = keys
            .iter()
            .filter_map(|k| self.documents.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        let mut documents = Documents::loaded(loaded);
        self.projection.apply(
            record,
            &mut documents,
            ApplyContext {
                replaying: self.replaying,
            },
        )?;
        for (key, body) in documents.into_writes() {
            match body {
                Some(body) => self.documents.insert(key, body),
                None => self.documents.remove(&key),
            };
        }
        Ok(())
    }

    /// The document at `key`.
    pub fn document(&self, key: &str) -> Option<&Value> {
        self.documents.get(key)
    }

    /// Every document, by key.
    pub fn documents(&self) -> &BTreeMap<String, Value> {
        &self.documents
    }

    /// Asserts the document at `key` equals `expected`.
    #[track_caller]
    pub fn expect_document(&self, key: &str, expected: Value) -> &Self {
        assert_eq!(self.documents.get(key), Some(&expected), "document {key}");
        self
    }

    /// Asserts there is no document at `key`.
    #[track_caller]
    pub fn expect_no_document(&self, key: &str) -> &Self {
        assert!(
            !self.documents.contains_key(key),
            "document {key} exists: {:?}",
            self.documents.get(key)
        );
        self
    }
}
