//! The shop's read models: the catalog with availability, the cart views, the orders with
//! their timeline, and the customers' notifications. Each is a [`Projection`](super::Projection)
//! of JSON documents, so each is checkpointed, rebuildable from position 0 while the old
//! generation serves, and testable with the projection fixture.
//!
//! Must not touch: HTTP, the runtime's actors.

mod carts;
mod catalog;
mod notifications;
mod orders;

pub use carts::{CartLineView, CartView, CartsProjection};
pub use catalog::{CatalogProjection, ProductView};
pub use notifications::{
    LogNotifier, MemoryNotifier, NotificationView, NotificationsProjection, Notifier,
};
pub use orders::{DeliveryView, InvoiceView, OrderView, OrdersProjection, TimelineEntry};

use crate::domain::EventSet;
use crate::store::{Codec, RecordedEvent};

/// Decodes `record` as an event of aggregate type `aggregate_type` (`None`: another type).
fn decode<E: EventSet>(
    codec: &Codec,
    record: &RecordedEvent,
    aggregate_type: &str,
) -> Result<Option<E>, String> {
    if record.stream.aggregate_type != aggregate_type {
        return Ok(None);
    }
    codec
        .decode_event::<E>(record)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// An RFC 3339 UTC time, to the millisecond.
fn timestamp(record: &RecordedEvent) -> String {
    record
        .recorded_at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
