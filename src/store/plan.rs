//! Planning a batch of appends: the one place that decides, for every backend, which requests
//! of a batch conflict, which are exact retries of an append already stored, and which sequence
//! numbers and global positions the rest get.
//!
//! Must not touch: any database. Backends read the current stream versions, the stored ids
//! among the batch's and the head under their write lock, call [`plan`], and insert its rows.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    AppendRequest, AppendResult, Appended, ExpectedVersion, NewEvent, StoreError, StreamId,
};

/// Where an already stored event id lives.
#[derive(Clone, Debug)]
pub(crate) struct StoredId {
    pub stream: StreamId,
    pub sequence: u64,
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
}

/// One row to insert.
pub(crate) struct PlannedRow<'a> {
    pub stream: &'a StreamId,
    pub sequence: u64,
    pub position: u64,
    pub event: &'a NewEvent,
}

/// What a batch will write and answer.
pub(crate) struct Plan<'a> {
    pub results: Vec<AppendResult>,
    pub rows: Vec<PlannedRow<'a>>,
    /// The head after the batch.
    pub head: u64,
}

/// The distinct streams of a batch, sorted (the order every backend reads their versions in).
pub(crate) fn batch_streams(batch: &[AppendRequest]) -> Vec<&StreamId> {
    let mut streams: Vec<&StreamId> = batch.iter().map(|r| &r.stream).collect();
    streams.sort();
    streams.dedup();
    streams
}

/// Every event id of a batch, in order.
pub(crate) fn batch_event_ids(batch: &[AppendRequest]) -> Vec<Uuid> {
    batch
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.event_id))
        .collect()
}

/// Now, at the precision the stores keep (microseconds), so an append's answer and what is
/// read back agree.
pub(crate) fn stored_now() -> DateTime<Utc> {
    super::types::from_micros(Utc::now().timestamp_micros())
}

/// Rejects what no backend may store, before touching the database.
pub(crate) fn validate(request: &AppendRequest) -> Result<(), StoreError> {
    let mut ids = HashSet::with_capacity(request.events.len());
    for event in &request.events {
        if event.event_type.is_empty() {
            return Err(StoreError::InvalidInput(format!(
                "an event for {} has an empty event type",
                request.stream
            )));
        }
        if !ids.insert(event.event_id) {
            return Err(StoreError::InvalidInput(format!(
                "event id {} appears twice in one append to {}",
                event.event_id, request.stream
            )));
        }
    }
    if request.stream.aggregate_type.is_empty() || request.stream.aggregate_id.is_empty() {
        return Err(StoreError::InvalidInput(
            "a stream needs an aggregate type and id".into(),
        ));
    }
    Ok(())
}

/// Decides a batch against the store's current state.
///
/// `versions` holds the current version of every stream of the batch (missing = 0), `stored`
/// every id of the batch that is already stored, `head` the last committed position. Requests
/// are decided in order: a later request for the same stream sees the earlier one's events.
pub(crate) fn plan<'a>(
    batch: &'a [AppendRequest],
    mut versions: HashMap<StreamId, u64>,
    mut stored: HashMap<Uuid, StoredId>,
    head: u64,
    now: DateTime<Utc>,
) -> Plan<'a> {
    let mut results = Vec::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(batch.iter().map(|r| r.events.len()).sum());
    let mut next_position = head + 1;
    // Once a request for a stream fails, later requests for it in the batch fail too: they were
    // decided on the assumption that the failed one would be written.
    let mut broken: HashSet<StreamId> = HashSet::new();
    for request in batch {
        let actual = versions.get(&request.stream).copied().unwrap_or(0);
        if broken.contains(&request.stream) {
            results.push(Err(StoreError::ConcurrencyConflict {
                stream: request.stream.clone(),
                expected: request.expected,
                actual,
            }));
            continue;
        }
        if let Err(error) = validate(request) {
            broken.insert(request.stream.clone());
            results.push(Err(error));
            continue;
        }
        if let Some(answer) = retry_answer(request, &stored) {
            if answer.is_err() {
                broken.insert(request.stream.clone());
            }
            results.push(answer);
            continue;
        }
        if !request.expected.matches(actual) {
            broken.insert(request.stream.clone());
            results.push(Err(StoreError::ConcurrencyConflict {
                stream: request.stream.clone(),
                expected: request.expected,
                actual,
            }));
            continue;
        }
        if request.events.is_empty() {
            results.push(Ok(Appended {
                version: actual,
                first_position: None,
                last_position: None,
                recorded_at: now,
            }));
            continue;
        }
        let first_position = next_position;
        for (offset, event) in (1u64..).zip(&request.events) {
            let row = PlannedRow {
                stream: &request.stream,
                sequence: actual + offset,
                position: next_position,
                event,
            };
            stored.insert(
                event.event_id,
                StoredId {
                    stream: request.stream.clone(),
                    sequence: row.sequence,
                    position: row.position,
                    recorded_at: now,
                },
            );
            rows.push(row);
            next_position += 1;
        }
        let version = actual + request.events.len() as u64;
        versions.insert(request.stream.clone(), version);
        results.push(Ok(Appended {
            version,
            first_position: Some(first_position),
            last_position: Some(next_position - 1),
            recorded_at: now,
        }));
    }
    Plan {
        results,
        rows,
        head: next_position - 1,
    }
}

/// A batch shaped for the one-statement path: every request valid and non-empty, event ids
/// unique in the batch, and each stream's requests chained (each expecting the version the one
/// before leaves, or all expecting any).
pub(crate) struct FastBatch<'a> {
    pub(crate) streams: Vec<&'a StreamId>,
    /// Per stream: the expected version, -1 for any.
    pub(crate) bases: Vec<i64>,
    /// Per event: the 1-based index of its stream.
    pub(crate) r_stream: Vec<i32>,
    /// Per event: its offset in its stream's part of the batch.
    pub(crate) r_offset: Vec<i32>,
    /// Per request: its stream's index, its offset in the stream's part, its event count.
    pub(crate) requests: Vec<(usize, u64, usize)>,
}

impl<'a> FastBatch<'a> {
    /// The batch's shape, or `None` when it needs full planning.
    pub(crate) fn prepare(batch: &'a [AppendRequest]) -> Option<Self> {
        let mut fast = FastBatch {
            streams: Vec::new(),
            bases: Vec::new(),
            r_stream: Vec::new(),
            r_offset: Vec::new(),
            requests: Vec::new(),
        };
        let mut index: HashMap<&StreamId, (usize, u64)> = HashMap::new();
        let mut seen = HashSet::new();
        for request in batch {
            if request.events.is_empty() || validate(request).is_err() {
                return None;
            }
            if !request.events.iter().all(|e| seen.insert(e.event_id)) {
                return None;
            }
            let (stream, offset) = match index.get(&request.stream).copied() {
                None => {
                    fast.streams.push(&request.stream);
                    fast.bases.push(match request.expected {
                        ExpectedVersion::Any => -1,
                        ExpectedVersion::Exact(version) => i64::try_from(version).ok()?,
                    });
                    (fast.streams.len() - 1, 0)
                }
                Some((stream, offset)) => {
                    let chained = match (fast.bases[stream], request.expected) {
                        (-1, ExpectedVersion::Any) => true,
                        (base, ExpectedVersion::Exact(version)) if base >= 0 => {
                            u64::try_from(base).ok()? + offset == version
                        }
                        _ => false,
                    };
                    if !chained {
                        return None;
                    }
                    (stream, offset)
                }
            };
            for k in 0..request.events.len() {
                fast.r_stream.push(i32::try_from(stream + 1).ok()?);
                fast.r_offset.push(i32::try_from(offset + k as u64).ok()?);
            }
            fast.requests.push((stream, offset, request.events.len()));
            index.insert(
                &request.stream,
                (stream, offset + request.events.len() as u64),
            );
        }
        Some(fast)
    }

    /// Whether every stream expects an exact version (one expecting any version needs its
    /// current one read before its rows can be numbered).
    pub(crate) fn every_version_exact(&self) -> bool {
        self.bases.iter().all(|&base| base >= 0)
    }
}

/// If any id of the request is already stored: the first append's answer when the request is
/// an exact retry of it, a duplicate error otherwise. `None` when no id is stored.
///
/// An exact retry has every id stored, in this stream, at consecutive sequences in the order of
/// the request, starting right after the expected version (for `ExpectedVersion::Any`, anywhere).
fn retry_answer(request: &AppendRequest, stored: &HashMap<Uuid, StoredId>) -> Option<AppendResult> {
    let first_stored = request
        .events
        .iter()
        .find(|e| stored.contains_key(&e.event_id))?;
    let duplicate = || {
        Err(StoreError::DuplicateEvent {
            stream: request.stream.clone(),
            event_id: first_stored.event_id,
        })
    };
    let found: Option<Vec<&StoredId>> = request
        .events
        .iter()
        .map(|e| stored.get(&e.event_id))
        .collect();
    let Some(found) = found else {
        return Some(duplicate());
    };
    let start = match request.expected {
        ExpectedVersion::Exact(version) => version + 1,
        ExpectedVersion::Any => found.first().map_or(1, |s| s.sequence),
    };
    let exact = found
        .iter()
        .zip(start..)
        .all(|(s, sequence)| s.stream == request.stream && s.sequence == sequence)
        && found.windows(2).all(|w| w[1].position == w[0].position + 1);
    if !exact {
        return Some(duplicate());
    }
    Some(Ok(Appended {
        version: found.last().map_or(0, |s| s.sequence),
        first_position: found.first().map(|s| s.position),
        last_position: found.last().map(|s| s.position),
        recorded_at: found.first().map_or_else(Utc::now, |s| s.recorded_at),
    }))
}
