//! Group commit inside a store: concurrent `append_batch` calls on one store share
//! transactions.
//!
//! The SQL stores serialize appends (SQLite has one writer; PostgreSQL appends queue on the
//! position counter's row lock, which is what makes the global order gap-safe). So 16 tasks
//! appending at once would commit one after the other, a disk flush each. Instead, the first
//! caller leads: it commits its batch together with every batch that arrived meanwhile, in one
//! transaction, and hands each caller its own results. Whoever arrives during that commit waits
//! for the next one, led by the first of them. A lone caller never waits for anyone.
//!
//! What each caller sees is what it would see alone:
//! - Its requests succeed or fail on their own, as in any batch.
//! - Batches that touch a common stream never share a transaction (a failed request fails the
//!   later requests of its stream in a batch, and one caller's failure must not fail another's
//!   request), so a later one waits for a later round, in arrival order.
//! - When a shared transaction fails as a whole, each caller's batch is committed again alone,
//!   so one caller's bad batch (an oversized payload, say) fails only that caller. When it
//!   failed because the database could not be reached, every caller gets that error at once.
//! - A leader cut off mid-commit (its future dropped) hands the lead on; the callers it was
//!   carrying append their batch again. That retry is exact (same streams, ids and versions),
//!   so a batch the cut-off commit had stored is answered as the first append, not stored twice.
//! - Callers must be polled, as with any lock: the lead passes to the first waiter, so a future
//!   kept but never polled again would hold the queue up.
//!
//! Must not touch: SQL. The store's own `append` does the work; this module only groups calls.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::types::is_outage;
use super::{AppendRequest, AppendResult, StoreError, StreamId};

/// A store's own append: one batch in one transaction, the unit a round commits.
#[async_trait]
pub(crate) trait AppendNow: Sync {
    async fn append_now(&self, batch: &[AppendRequest]) -> Result<Vec<AppendResult>, StoreError>;
}

/// What a waiting caller is told.
enum Turn {
    /// Its batch was committed with another: its results, or its own error.
    Done(Result<Vec<AppendResult>, StoreError>),
    /// It leads the next round.
    Lead,
}

struct Waiter {
    batch: Vec<AppendRequest>,
    turn: oneshot::Sender<Turn>,
}

#[derive(Default)]
struct State {
    /// Someone leads: a round is being committed, or its leader is about to start one.
    leading: bool,
    waiting: VecDeque<Waiter>,
}

/// The most events one round carries (a lone batch may exceed it); further batches wait for
/// the next round. Small enough that a round of one-event appends stays within SQLite's
/// one-statement append (11 parameters an event).
const MAX_ROUND_EVENTS: usize = 2_048;

/// Groups concurrent appends of one store into shared transactions.
#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("GroupCommit")
            .field("leading", &state.leading)
            .field("waiting", &state.waiting.len())
            .finish()
    }
}

impl GroupCommit {
    /// Appends `batch` through `store`'s own append, sharing the transaction with the batches
    /// of concurrent callers.
    pub(crate) async fn append(
        &self,
        store: &impl AppendNow,
        batch: &[AppendRequest],
    ) -> Result<Vec<AppendResult>, StoreError> {
        loop {
            let waiting = {
                let mut state = self.lock();
                if state.leading {
                    let (turn, waiting) = oneshot::channel();
                    state.waiting.push_back(Waiter {
                        batch: batch.to_vec(),
                        turn,
                    });
                    Some(WaitingTurn {
                        turn: Some(waiting),
                        group: self,
                    })
                } else {
                    state.leading = true;
                    None
                }
            };
            if let Some(mut waiting) = waiting {
                match waiting.wait().await {
                    Some(Turn::Done(result)) => return result,
                    Some(Turn::Lead) => {}
                    // The leader carrying this batch was cut off: whether its transaction
                    // committed is unknown, so append again (an exact retry if it did).
                    None => continue,
                }
            }
            let _lead = Lead { group: self };
            return self.lead(store, batch).await;
        }
    }

    /// One round: `own` plus the waiting batches that may join it, in one transaction.
    async fn lead(
        &self,
        store: &impl AppendNow,
        own: &[AppendRequest],
    ) -> Result<Vec<AppendResult>, StoreError> {
        let mut riders = self.board(own);
        if riders.is_empty() {
            return store.append_now(own).await;
        }
        // The riders' batches move into the round (each was copied once, when it queued); a
        // rider's part of the round is the range after the ones before it.
        let mut combined = own.to_vec();
        let mut sizes = Vec::with_capacity(riders.len());
        for rider in &mut riders {
            sizes.push(rider.batch.len());
            combined.append(&mut rider.batch);
        }
        match store.append_now(&combined).await {
            Ok(mut results) => {
                let mut others = results.split_off(own.len()).into_iter();
                for (rider, size) in riders.into_iter().zip(sizes) {
                    let theirs = others.by_ref().take(size).collect();
                    let _ = rider.turn.send(Turn::Done(Ok(theirs)));
                }
                Ok(results)
            }
            Err(error) if round_outage(&error) => {
                // The database is away: every batch of the round would fail alike, and trying
                // each alone would only keep the queue waiting behind one timeout per batch.
                for rider in riders {
                    let _ = rider.turn.send(Turn::Done(Err(outage(&error))));
                }
                Err(error)
            }
            Err(_) => {
                // Each batch again on its own, so the failure stays with whoever caused it.
                let mut start = own.len();
                for (rider, size) in riders.into_iter().zip(sizes) {
                    let result = store.append_now(&combined[start..start + size]).await;
                    start += size;
                    let _ = rider.turn.send(Turn::Done(result));
                }
                store.append_now(own).await
            }
        }
    }

    /// Takes the waiting batches that may share `own`'s transaction: in arrival order, up to
    /// the round's size, none touching a stream already in the round. Batches whose caller has
    /// gone are dropped unwritten.
    fn board(&self, own: &[AppendRequest]) -> Vec<Waiter> {
        let mut state = self.lock();
        if state.waiting.is_empty() {
            return Vec::new();
        }
        let mut streams: HashSet<StreamId> = own.iter().map(|r| r.stream.clone()).collect();
        let mut events: usize = own.iter().map(|r| r.events.len()).sum();
        let mut riders = Vec::new();
        let mut left = VecDeque::new();
        let mut closed = false;
        for waiter in std::mem::take(&mut state.waiting) {
            if waiter.turn.is_closed() {
                continue;
            }
            let size: usize = waiter.batch.iter().map(|r| r.events.len()).sum();
            let clashes = waiter.batch.iter().any(|r| streams.contains(&r.stream));
            // Once one batch must wait, the later ones wait too: arrival order is kept.
            closed = closed || clashes || events + size > MAX_ROUND_EVENTS;
            if closed {
                left.push_back(waiter);
                continue;
            }
            events += size;
            streams.extend(waiter.batch.iter().map(|r| r.stream.clone()));
            riders.push(waiter);
        }
        state.waiting = left;
        riders
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a flag and a queue, consistent after every statement: a panic
        // elsewhere while it was held leaves nothing half-done.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Passes the lead to the first waiting caller still there, or lays it down.
    fn hand_on(&self) {
        let mut state = self.lock();
        while let Some(next) = state.waiting.pop_front() {
            if next.turn.send(Turn::Lead).is_ok() {
                return;
            }
        }
        state.leading = false;
    }
}

/// Whether a round failed because the database could not be reached, not because of something
/// in a batch (the database refusing a statement).
fn round_outage(error: &StoreError) -> bool {
    matches!(error, StoreError::Unavailable(cause) if is_outage(cause))
}

/// The outage as each rider's own error (the driver's errors do not clone).
fn outage(error: &StoreError) -> StoreError {
    StoreError::Unavailable(sqlx::Error::Io(std::io::Error::other(error.to_string())))
}

/// The lead, held while a round commits; handed on when the round ends, however it ends (a
/// cut-off leader drops it too).
struct Lead<'a> {
    group: &'a GroupCommit,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.group.hand_on();
    }
}

/// A caller's place in the queue. A caller cut off while waiting may have been handed the lead
/// already: dropping its place hands it on, so the queue never waits for someone gone.
struct WaitingTurn<'a> {
    turn: Option<oneshot::Receiver<Turn>>,
    group: &'a GroupCommit,
}

impl WaitingTurn<'_> {
    /// The caller's turn; `None` when the leader carrying its batch was cut off.
    async fn wait(&mut self) -> Option<Turn> {
        let turn = self.turn.as_mut()?.await.ok();
        self.turn = None;
        turn
    }
}

impl Drop for WaitingTurn<'_> {
    fn drop(&mut self) {
        if let Some(mut turn) = self.turn.take() {
            turn.close();
            if let Ok(Turn::Lead) = turn.try_recv() {
                self.group.hand_on();
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step fails the test"
)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Semaphore;
    use uuid::Uuid;

    use super::*;
    use crate::store::{
        EventStore, ExpectedVersion, MemoryStore, Metadata, NewEvent, PayloadFormat,
    };

    /// The memory store behind a gate: each transaction waits for a permit, so a test decides
    /// when rounds commit. Counts transactions, and fails any that carries a `poison` stream
    /// (or an `outage` one, as an unreachable database). With `hold`, a transaction of several
    /// batches waits for a permit of it after committing.
    #[derive(Default)]
    struct Gated {
        store: MemoryStore,
        gate: Option<Arc<Semaphore>>,
        hold: Option<Arc<Semaphore>>,
        transactions: AtomicUsize,
    }

    #[async_trait]
    impl AppendNow for Gated {
        async fn append_now(
            &self,
            batch: &[AppendRequest],
        ) -> Result<Vec<AppendResult>, StoreError> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            self.transactions.fetch_add(1, Ordering::SeqCst);
            if batch.iter().any(|r| r.stream.aggregate_id == "poison") {
                return Err(StoreError::InvalidInput("poisoned batch".into()));
            }
            if batch.iter().any(|r| r.stream.aggregate_id == "outage") {
                return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
            }
            let results = self.store.append_batch(batch).await;
            if let Some(hold) = self.hold.as_ref().filter(|_| batch.len() > 1) {
                hold.acquire().await.expect("hold open").forget();
            }
            results
        }
    }

    fn one(id: &str, expected: u64) -> Vec<AppendRequest> {
        vec![AppendRequest {
            stream: StreamId::new("Pot", id),
            expected: ExpectedVersion::Exact(expected),
            events: vec![NewEvent {
                event_id: Uuid::new_v4(),
                event_type: "Watered".into(),
                revision: 1,
                format: PayloadFormat::Json,
                payload: b"{}".to_vec(),
                metadata: Metadata::default(),
            }],
        }]
    }

    type Caller = tokio::task::JoinHandle<Result<Vec<AppendResult>, StoreError>>;

    /// A gated store and its group commit.
    struct Round {
        gate: Arc<Semaphore>,
        store: Arc<Gated>,
        group: Arc<GroupCommit>,
    }

    impl Round {
        /// The round, and a leader (appending pot `lead`) that holds the lead at the shut
        /// gate: callers started now wait for the next round.
        async fn led(store: Gated) -> (Self, Caller) {
            let gate = Arc::new(Semaphore::new(0));
            let store = Arc::new(Gated {
                gate: Some(Arc::clone(&gate)),
                ..store
            });
            let group = Arc::new(GroupCommit::default());
            let round = Self { gate, store, group };
            let lead = round.callers(vec![one("lead", 0)]).remove(0);
            while !round.leading() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (round, lead)
        }

        /// Starts `batches` as concurrent callers, in order; each answers through its handle.
        fn callers(&self, batches: Vec<Vec<AppendRequest>>) -> Vec<Caller> {
            batches
                .into_iter()
                .map(|batch| {
                    let (group, store) = (Arc::clone(&self.group), Arc::clone(&self.store));
                    tokio::spawn(async move { group.append(&*store, &batch).await })
                })
                .collect()
        }

        /// Waits until `n` callers wait for a round.
        async fn queued(&self, n: usize) {
            while self.group.lock().waiting.len() < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        fn leading(&self) -> bool {
            self.group.lock().leading
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_transaction_and_each_gets_its_own_results() {
        let (round, lead) = Round::led(Gated::default()).await;
        let rest = round.callers((0..15).map(|i| one(&format!("pot-{i}"), 0)).collect());
        round.queued(15).await;
        round.gate.add_permits(2);
        for caller in std::iter::once(lead).chain(rest) {
            let results = caller.await.unwrap().unwrap();
            assert_eq!(results.len(), 1);
            assert_eq!(results[0].as_ref().unwrap().version, 1);
        }
        // The leader's own transaction, then one for the fifteen that waited.
        assert_eq!(round.store.transactions.load(Ordering::SeqCst), 2);
        assert_eq!(round.store.store.head().await.unwrap(), 16);
        assert!(!round.group.lock().leading);
    }

    #[tokio::test]
    async fn batches_on_one_stream_never_share_a_transaction() {
        let (round, lead) = Round::led(Gated::default()).await;
        // A wrong expectation, then a right one, on the same stream: in one batch the first
        // failure would fail the second too. Alone, the second succeeds.
        let wrong = round.callers(vec![one("same", 7)]).remove(0);
        round.queued(1).await;
        let right = round.callers(vec![one("same", 0)]).remove(0);
        round.queued(2).await;
        round.gate.add_permits(10);
        lead.await.unwrap().unwrap();
        let wrong = wrong.await.unwrap().unwrap();
        assert!(matches!(
            wrong[0],
            Err(StoreError::ConcurrencyConflict { .. })
        ));
        let right = right.await.unwrap().unwrap();
        assert_eq!(right[0].as_ref().unwrap().version, 1);
        assert_eq!(round.store.transactions.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_shared_transaction_fails_only_the_batch_that_caused_it() {
        let (round, lead) = Round::led(Gated::default()).await;
        let riders = round.callers(vec![one("a", 0), one("poison", 0), one("b", 0)]);
        round.queued(3).await;
        round.gate.add_permits(100);
        lead.await.unwrap().unwrap();
        let outcomes: Vec<_> = futures_util::future::join_all(riders)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert!(outcomes[0].is_ok());
        assert!(matches!(outcomes[1], Err(StoreError::InvalidInput(_))));
        assert!(outcomes[2].is_ok());
        assert_eq!(round.store.store.head().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_leader_cut_off_mid_commit_hands_on_and_its_riders_append_again() {
        let (round, lead) = Round::led(Gated::default()).await;
        let riders = round.callers(vec![one("a", 0), one("b", 0)]);
        round.queued(2).await;
        // The leader's first transaction commits; the round carrying the riders is cut off
        // while it waits at the gate.
        round.gate.add_permits(1);
        lead.await.unwrap().unwrap();
        assert!(round.leading(), "a rider leads the next round");
        tokio::time::sleep(Duration::from_millis(5)).await;
        for rider in &riders {
            assert!(!rider.is_finished());
        }
        // Cut the round off: abort the rider leading it (whichever it is).
        riders[0].abort();
        round.gate.add_permits(100);
        let second = riders.into_iter().nth(1).unwrap().await.unwrap().unwrap();
        assert_eq!(second[0].as_ref().unwrap().version, 1);
        assert!(!round.leading());
        // The group carries on.
        let after = round
            .group
            .append(&*round.store, &one("after", 0))
            .await
            .unwrap();
        assert_eq!(after[0].as_ref().unwrap().version, 1);
    }

    #[tokio::test]
    async fn a_round_cut_off_after_its_commit_is_answered_to_its_riders_without_a_second_copy() {
        let hold = Arc::new(Semaphore::new(0));
        let (round, lead) = Round::led(Gated {
            hold: Some(Arc::clone(&hold)),
            ..Gated::default()
        })
        .await;
        let riders = round.callers(vec![one("a", 0), one("b", 0)]);
        round.queued(2).await;
        round.gate.add_permits(100);
        lead.await.unwrap().unwrap();
        // The riders' shared round commits, then its leader is cut off before answering.
        while round.store.transactions.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        riders[0].abort();
        hold.add_permits(100);
        // The other rider appends its batch again: an exact retry, answered as the first.
        let second = riders.into_iter().nth(1).unwrap().await.unwrap().unwrap();
        assert_eq!(second[0].as_ref().unwrap().version, 1);
        assert_eq!(
            round.store.store.head().await.unwrap(),
            3,
            "nothing stored twice"
        );
        assert!(!round.leading());
    }

    #[tokio::test]
    async fn a_waiter_gone_before_its_turn_neither_blocks_the_queue_nor_gets_written() {
        let (round, lead) = Round::led(Gated::default()).await;
        let gone = round.callers(vec![one("gone", 0)]);
        round.queued(1).await;
        gone[0].abort();
        tokio::time::sleep(Duration::from_millis(5)).await;
        round.gate.add_permits(100);
        lead.await.unwrap().unwrap();
        let after = round
            .group
            .append(&*round.store, &one("after", 0))
            .await
            .unwrap();
        assert_eq!(after[0].as_ref().unwrap().version, 1);
        let gone_version = round
            .store
            .store
            .stream_version(&StreamId::new("Pot", "gone"))
            .await
            .unwrap();
        assert_eq!(gone_version, 0, "a caller that left is not written");
        assert!(!round.leading());
    }

    #[tokio::test]
    async fn a_waiter_handed_the_lead_and_gone_before_taking_it_hands_it_on() {
        use futures_util::FutureExt;
        let store = Gated::default();
        let group = GroupCommit::default();
        group.lock().leading = true;
        let batch = one("waiter", 0);
        let mut waiter = Box::pin(group.append(&store, &batch));
        assert!(
            (&mut waiter).now_or_never().is_none(),
            "it queues behind the leader"
        );
        assert_eq!(group.lock().waiting.len(), 1);
        // The leader's round ends: the lead goes to the waiter, which leaves before taking it.
        group.hand_on();
        assert!(group.lock().leading);
        drop(waiter);
        assert!(!group.lock().leading, "the lead was laid down, not lost");
        let after = group.append(&store, &one("after", 0)).await.unwrap();
        assert_eq!(after[0].as_ref().unwrap().version, 1);
    }

    #[tokio::test]
    async fn an_outage_fails_the_whole_round_at_once() {
        let (round, lead) = Round::led(Gated::default()).await;
        let riders = round.callers(vec![one("outage", 0), one("a", 0), one("b", 0)]);
        round.queued(3).await;
        round.gate.add_permits(100);
        lead.await.unwrap().unwrap();
        for rider in riders {
            let outcome = rider.await.unwrap();
            assert!(
                matches!(outcome, Err(ref e) if e.is_transient()),
                "{outcome:?}"
            );
        }
        // The leader's transaction and the failed round: no batch was tried again alone.
        assert_eq!(round.store.transactions.load(Ordering::SeqCst), 2);
        assert!(!round.leading());
    }
}
