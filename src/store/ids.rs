//! Identifiers that keep time order, so the indexes on them grow at one edge.
//!
//! Event ids are unique keys in every store, and command ids key the idempotency table. With
//! random ids (UUIDv4, or UUIDv5 of a random parent), each insert lands on a random leaf page of
//! those indexes: a transaction of 32 events dirties some 32 pages, which the store writes (and,
//! on SQLite, fsyncs) at commit. Ids from one moment share a prefix instead, so the same
//! transaction dirties one or two pages.
//!
//! - [`fresh`] is a UUIDv7: 48 bits of Unix milliseconds, then random bits (monotonic within the
//!   process).
//! - [`derived`] is deterministic in its parent and a name, as UUIDv5 is, so a retried command
//!   derives the same event ids and the store refuses them as duplicates. When the parent carries
//!   a time prefix (a UUIDv7, or an id derived from one), the derived id keeps that prefix and is
//!   marked UUIDv8 (RFC 9562's custom layout): the rest is the parent's UUIDv5 hash. A parent
//!   without one (a UUIDv4 from a client, or anything stored before this scheme) derives the
//!   plain UUIDv5 it always did, so ids derived from older ids do not change.
//!
//! Must not touch: anything but `uuid`. The ids are opaque to the stores; only their order in an
//! index changes.

use uuid::{Builder, Uuid};

/// How many leading bytes hold the time (UUIDv7's `unix_ts_ms`).
const TIME_PREFIX: usize = 6;

/// A new, time-ordered id (UUIDv7).
pub fn fresh() -> Uuid {
    Uuid::now_v7()
}

/// The id derived from `parent` and `name`: the same inputs always give the same id, and
/// different names give different ids. Keeps `parent`'s time prefix when it has one.
pub fn derived(parent: &Uuid, name: &[u8]) -> Uuid {
    let hashed = Uuid::new_v5(parent, name);
    if !has_time_prefix(parent) {
        return hashed;
    }
    let mut bytes = *hashed.as_bytes();
    bytes[..TIME_PREFIX].copy_from_slice(&parent.as_bytes()[..TIME_PREFIX]);
    Builder::from_custom_bytes(bytes).into_uuid()
}

/// Whether `id` starts with a time prefix: a UUIDv7, or a UUIDv8 (this module derives only
/// time-prefixed UUIDv8s).
fn has_time_prefix(id: &Uuid) -> bool {
    matches!(id.get_version_num(), 7 | 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_rise_in_the_order_they_are_made() {
        let ids: Vec<Uuid> = (0..1_000).map(|_| fresh()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
    }

    #[test]
    fn derived_ids_are_deterministic_distinct_and_keep_the_parents_time() {
        let parent = fresh();
        let a = derived(&parent, b"0");
        assert_eq!(a, derived(&parent, b"0"));
        assert_ne!(a, derived(&parent, b"1"));
        assert_ne!(a, derived(&fresh(), b"0"));
        assert_eq!(
            a.as_bytes()[..TIME_PREFIX],
            parent.as_bytes()[..TIME_PREFIX]
        );
        assert_eq!(a.get_version_num(), 8);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        // A chain of derivations keeps the root's time.
        let grandchild = derived(&a, b"step");
        assert_eq!(
            grandchild.as_bytes()[..TIME_PREFIX],
            parent.as_bytes()[..TIME_PREFIX]
        );
        assert_ne!(grandchild, a);
    }

    #[test]
    fn a_parent_without_a_time_prefix_derives_the_plain_uuid_v5() {
        let random = Uuid::new_v4();
        assert_eq!(derived(&random, b"0"), Uuid::new_v5(&random, b"0"));
        let v5 = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"seed");
        assert_eq!(derived(&v5, b"x"), Uuid::new_v5(&v5, b"x"));
    }
}
