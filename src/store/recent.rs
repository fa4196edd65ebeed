//! The command ids behind a stream's latest events, read backwards (see
//! [`super::EventStore::recent_command_ids`]): what an aggregate needs to recognise a repeated
//! command after it was loaded, without reading the metadata of every event it folds.
//!
//! Must not touch: SQL. The stores give the page reads; this module keeps the ids.

use std::future::Future;

use uuid::Uuid;

use super::types::to_u64;
use super::{Metadata, StoreError, StreamId};

/// How many rows one page of [`super::EventStore::recent_command_ids`] reads backwards: a
/// command usually causes one to three events, so one page is almost always enough.
pub(crate) const RECENT_PAGE: usize = 64;

/// Collects the command ids of a stream's events offered newest first: each id once, at most
/// `max`.
pub(crate) struct NewestFirst {
    ids: Vec<Uuid>,
    max: usize,
}

impl NewestFirst {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            ids: Vec::with_capacity(max.min(RECENT_PAGE)),
            max,
        }
    }

    /// Offers the command id of the next older event; answers whether `max` ids are in.
    pub(crate) fn offer(&mut self, id: Option<Uuid>) -> bool {
        if let Some(id) = id.filter(|id| self.ids.len() < self.max && !self.ids.contains(id)) {
            self.ids.push(id);
        }
        self.ids.len() >= self.max
    }

    pub(crate) fn into_ids(self) -> Vec<Uuid> {
        self.ids
    }

    /// The ids of `newest_first` (the command ids of events, newest first), each once, at most
    /// `max`.
    pub(crate) fn collect(
        newest_first: impl IntoIterator<Item = Option<Uuid>>,
        max: usize,
    ) -> Vec<Uuid> {
        let mut recent = Self::new(max);
        for id in newest_first {
            if recent.offer(id) {
                break;
            }
        }
        recent.into_ids()
    }
}

/// The loop of [`super::EventStore::recent_command_ids`] for a store that reads pages
/// backwards: `page(upper)` answers the events with `from <= sequence <= upper`, newest first,
/// at most [`RECENT_PAGE`] of them, as their sequences and command ids. Stops as soon as `max`
/// ids are in, or at `from`.
pub(crate) async fn recent_backwards<F, Fut>(
    from: u64,
    to: u64,
    max: usize,
    mut page: F,
) -> Result<Vec<Uuid>, StoreError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<Vec<(u64, Option<Uuid>)>, StoreError>>,
{
    let mut recent = NewestFirst::new(max);
    let mut upper = to;
    while upper >= from && max > 0 {
        let rows = page(upper).await?;
        for &(sequence, id) in &rows {
            if recent.offer(id) {
                return Ok(recent.into_ids());
            }
            upper = sequence.saturating_sub(1);
        }
        if rows.len() < RECENT_PAGE || upper == 0 {
            break;
        }
    }
    Ok(recent.into_ids())
}

/// The rows of a backward page as [`recent_backwards`] takes them: each row's sequence and
/// the command id of its metadata (stored JSON), which must decode.
pub(crate) fn command_ids_of(
    stream: &StreamId,
    rows: Vec<(i64, String)>,
) -> Result<Vec<(u64, Option<Uuid>)>, StoreError> {
    rows.into_iter()
        .map(|(sequence, metadata)| {
            let sequence = to_u64(sequence, "sequence")?;
            let metadata = Metadata::from_json(&metadata, stream, sequence)?;
            Ok((sequence, metadata.command_id))
        })
        .collect()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a failed unwrap is a failed test, with its message"
)]
mod tests {
    use super::*;

    /// A stream whose event at sequence s has the command `commands(s)`, read backwards as a
    /// store would, counting the pages read.
    async fn read(
        from: u64,
        to: u64,
        max: usize,
        last: u64,
        commands: impl Fn(u64) -> Option<Uuid>,
    ) -> (Vec<Uuid>, usize) {
        let mut pages = 0;
        let ids = recent_backwards(from, to, max, |upper| {
            pages += 1;
            let rows: Vec<_> = (from..=upper.min(last))
                .rev()
                .take(RECENT_PAGE)
                .map(|s| (s, commands(s)))
                .collect();
            async move { Ok(rows) }
        })
        .await
        .unwrap();
        (ids, pages)
    }

    fn id(n: u64) -> Uuid {
        Uuid::from_u64_pair(0, n)
    }

    #[test]
    fn an_id_is_kept_once_in_the_place_of_its_newest_event() {
        let mut recent = NewestFirst::new(3);
        for offered in [Some(id(5)), None, Some(id(5)), Some(id(4)), Some(id(3))] {
            let _ = recent.offer(offered);
        }
        assert!(recent.offer(Some(id(2))), "full at three");
        assert_eq!(recent.into_ids(), [id(5), id(4), id(3)]);
        assert!(NewestFirst::new(0).offer(Some(id(1))), "nothing is wanted");
    }

    #[tokio::test]
    async fn reading_stops_as_soon_as_enough_ids_are_in() {
        // One command per event: the first page has them all.
        let (ids, pages) = read(1, 1_000, 16, 1_000, |s| Some(id(s))).await;
        assert_eq!(ids, (985..=1_000).rev().map(id).collect::<Vec<_>>());
        assert_eq!(pages, 1);
    }

    #[tokio::test]
    async fn reading_goes_back_page_by_page_and_stops_at_from() {
        // One command's 200 events at 101-300, single commands before.
        let commands = |s| Some(if s > 100 { id(0) } else { id(s) });
        let (ids, pages) = read(1, 300, 3, 300, commands).await;
        assert_eq!((ids, pages), (vec![id(0), id(100), id(99)], 4));
        // No command ids at all: every page down to `from`, and no further.
        let (ids, pages) = read(37, 300, 16, 300, |_| None).await;
        assert_eq!((ids, pages), (Vec::new(), 5));
        // A page of exactly 64 rows that ends at `from`.
        let (ids, pages) = read(237, 300, 16, 300, |_| None).await;
        assert_eq!((ids, pages), (Vec::new(), 1));
    }

    #[tokio::test]
    async fn the_edges_of_the_range_end_the_loop() {
        assert_eq!(read(0, 10, 16, 10, |_| None).await, (Vec::new(), 1));
        assert_eq!(read(0, 0, 16, 0, |s| Some(id(s))).await.0, [id(0)]);
        assert_eq!(read(5, 4, 16, 10, |s| Some(id(s))).await, (Vec::new(), 0));
        assert_eq!(read(1, 10, 0, 10, |s| Some(id(s))).await, (Vec::new(), 0));
        let (ids, _) = read(u64::MAX - 2, u64::MAX, 16, u64::MAX, |s| Some(id(s))).await;
        assert_eq!(ids, [id(u64::MAX), id(u64::MAX - 1), id(u64::MAX - 2)]);
    }
}
