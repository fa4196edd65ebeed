//! The in-memory read store, for tests and the test kit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;

use super::read_store::{Commit, DeadLetter, ReadStore, StoredResponse};
use crate::store::StoreError;

/// Projection state in memory.
#[derive(Default)]
pub struct MemoryReadStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    active: HashMap<String, u32>,
    checkpoints: HashMap<(String, u32), u64>,
    documents: HashMap<(String, u32), BTreeMap<String, Value>>,
    dead_letters: Vec<DeadLetter>,
    next_id: i64,
    responses: HashMap<(String, String), StoredResponse>,
}

impl MemoryReadStore {
    /// An empty read store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below completes without panicking, so a poisoned lock is consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ReadStore for MemoryReadStore {
    async fn active_generation(&self, name: &str) -> Result<u32, StoreError> {
        Ok(*self.lock().active.entry(name.to_owned()).or_insert(1))
    }

    async fn serving_generation(&self, name: &str) -> Result<Option<u32>, StoreError> {
        Ok(self.lock().active.get(name).copied())
    }

    async fn checkpoint(&self, name: &str, generation: u32) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .checkpoints
            .get(&(name.to_owned(), generation))
            .copied()
            .unwrap_or(0))
    }

    async fn load(
        &self,
        name: &str,
        generation: u32,
        keys: &[String],
    ) -> Result<HashMap<String, Value>, StoreError> {
        let inner = self.lock();
        let Some(documents) = inner.documents.get(&(name.to_owned(), generation)) else {
            return Ok(HashMap::new());
        };
        Ok(keys
            .iter()
            .filter_map(|k| documents.get(k).map(|d| (k.clone(), d.clone())))
            .collect())
    }

    async fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError> {
        if commit.fail_before_commit {
            return Err(StoreError::Internal(
                "crash point: failed before commit".into(),
            ));
        }
        let mut inner = self.lock();
        let key = (commit.name.to_owned(), commit.generation);
        let documents = inner.documents.entry(key.clone()).or_default();
        for (doc, body) in commit.writes {
            match body {
                Some(body) => documents.insert(doc, body),
                None => documents.remove(&doc),
            };
        }
        inner.checkpoints.insert(key, commit.position);
        let now = Utc::now();
        for letter in commit.park {
            inner.next_id += 1;
            let id = inner.next_id;
            inner.dead_letters.push(DeadLetter {
                id,
                processor: commit.name.to_owned(),
                position: letter.position,
                stream: letter.stream,
                sequence: letter.sequence,
                event_type: letter.event_type,
                error: letter.error,
                attempts: letter.attempts,
                parked: letter.parked,
                skipped: false,
                parked_at: now,
            });
        }
        inner
            .dead_letters
            .retain(|d| !commit.resolve.contains(&d.id));
        for letter in &mut inner.dead_letters {
            if commit.skip.contains(&letter.id) {
                letter.skipped = true;
            }
        }
        Ok(())
    }

    async fn get(&self, name: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let inner = self.lock();
        let generation = inner.active.get(name).copied().unwrap_or(1);
        Ok(inner
            .documents
            .get(&(name.to_owned(), generation))
            .and_then(|d| d.get(key).cloned()))
    }

    async fn scan(
        &self,
        name: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        let inner = self.lock();
        let generation = inner.active.get(name).copied().unwrap_or(1);
        let Some(documents) = inner.documents.get(&(name.to_owned(), generation)) else {
            return Ok(Vec::new());
        };
        Ok(documents
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn promote(&self, name: &str, generation: u32) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.active.insert(name.to_owned(), generation);
        inner
            .documents
            .retain(|(n, g), _| n != name || *g == generation);
        inner
            .checkpoints
            .retain(|(n, g), _| n != name || *g == generation);
        Ok(())
    }

    async fn discard(&self, name: &str, generation: u32) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let key = (name.to_owned(), generation);
        inner.documents.remove(&key);
        inner.checkpoints.remove(&key);
        Ok(())
    }

    async fn dead_letters(&self, processor: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let inner = self.lock();
        let mut letters: Vec<DeadLetter> = inner
            .dead_letters
            .iter()
            .filter(|d| d.processor == processor)
            .cloned()
            .collect();
        letters.sort_by_key(|d| d.position);
        Ok(letters)
    }

    async fn recall_response(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<StoredResponse>, StoreError> {
        Ok(self
            .lock()
            .responses
            .get(&(scope.to_owned(), key.to_owned()))
            .cloned())
    }

    async fn remember_response(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
        replace_before: chrono::DateTime<Utc>,
    ) -> Result<StoredResponse, StoreError> {
        let mut inner = self.lock();
        let entry = inner
            .responses
            .entry((scope.to_owned(), key.to_owned()))
            .or_insert_with(|| response.clone());
        if entry.created_at < replace_before {
            *entry = response.clone();
        }
        Ok(entry.clone())
    }

    async fn forget_responses(&self, before: chrono::DateTime<Utc>) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let count = inner.responses.len();
        inner.responses.retain(|_, r| r.created_at >= before);
        Ok((count - inner.responses.len()) as u64)
    }
}
