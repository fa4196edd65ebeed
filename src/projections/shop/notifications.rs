//! The customers' notifications, newest first, and the one place they are sent from: a
//! [`Notifier`] is called when a notification is applied live, never while the projection is
//! being rebuilt, so a rebuild sends nothing twice. Keys: `u:<customer>:<position>`.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::info;

use super::{decode, timestamp};
use crate::domain::Aggregate;
use crate::domain::shop::{Notification, NotificationEvent};
use crate::projections::{ApplyContext, Documents, Projection};
use crate::store::{Codec, RecordedEvent};

/// One notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationView {
    /// The notification.
    pub notification_id: String,
    /// Who it is for.
    pub customer_id: String,
    /// About which order.
    pub order_id: Option<String>,
    /// A stable kind (`order_confirmed`, `order_cancelled`).
    pub kind: String,
    /// For the customer.
    pub text: String,
    /// When (RFC 3339 UTC).
    pub at: String,
}

/// Sends notifications to customers (mail, push, ...). Called at least once per notification
/// while the projection follows live events (a crash between the send and the projection's
/// commit sends again), never during a rebuild.
pub trait Notifier: Send + Sync + 'static {
    /// Sends one notification.
    fn send(&self, notification: &NotificationView);
}

/// Sends notifications to the log.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogNotifier;

impl Notifier for LogNotifier {
    fn send(&self, n: &NotificationView) {
        info!(customer = %n.customer_id, kind = %n.kind, text = %n.text, "notification sent");
    }
}

/// Keeps what it was asked to send, for tests and for hosts that deliver notifications
/// themselves.
#[derive(Clone, Debug, Default)]
pub struct MemoryNotifier {
    sent: Arc<Mutex<Vec<NotificationView>>>,
}

impl MemoryNotifier {
    /// What was sent, oldest first.
    pub fn sent(&self) -> Vec<NotificationView> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Notifier for MemoryNotifier {
    fn send(&self, notification: &NotificationView) {
        if let Ok(mut sent) = self.sent.lock() {
            sent.push(notification.clone());
        }
    }
}

/// The notifications read model.
pub struct NotificationsProjection {
    codec: Codec,
    notifier: Arc<dyn Notifier>,
}

impl NotificationsProjection {
    /// The projection's name.
    pub const NAME: &'static str = "notifications";

    /// The notifications, decoding with `codec` and sending through `notifier`.
    pub fn new(codec: Codec, notifier: Arc<dyn Notifier>) -> Self {
        Self { codec, notifier }
    }

    /// The prefix of a customer's notifications.
    pub fn customer_prefix(customer: &str) -> String {
        format!("u:{customer}:")
    }
}

impl Projection for NotificationsProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, _: &RecordedEvent) -> Vec<String> {
        Vec::new() // each notification is a new document; nothing to load
    }

    fn apply(
        &self,
        record: &RecordedEvent,
        documents: &mut Documents,
        context: ApplyContext,
    ) -> Result<(), String> {
        let Some(NotificationEvent::CustomerNotified(e)) =
            decode::<NotificationEvent>(&self.codec, record, Notification::TYPE)?
        else {
            return Ok(());
        };
        let view = NotificationView {
            notification_id: record.stream.aggregate_id.clone(),
            customer_id: e.customer.to_string(),
            order_id: e.order.as_ref().map(ToString::to_string),
            kind: e.kind,
            text: e.text,
            at: timestamp(record),
        };
        documents.put(
            format!(
                "{}{:020}",
                Self::customer_prefix(&view.customer_id),
                record.position
            ),
            &view,
        )?;
        if !context.replaying {
            self.notifier.send(&view);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::shop::CustomerId;
    use crate::domain::shop::notification::CustomerNotified;
    use crate::testkit::ProjectionFixture;

    fn notified() -> Vec<NotificationEvent> {
        vec![
            CustomerNotified {
                customer: CustomerId::parse("alice").unwrap_or_else(|_| unreachable!()),
                order: None,
                kind: "order_confirmed".into(),
                text: "Your order is confirmed.".into(),
            }
            .into(),
        ]
    }

    #[test]
    fn a_live_notification_is_sent_and_a_replayed_one_is_not() -> Result<(), String> {
        let notifier = MemoryNotifier::default();
        let live = ProjectionFixture::new(NotificationsProjection::new(
            Codec::default(),
            Arc::new(notifier.clone()),
        ))
        .given(Notification::TYPE, "n-1", notified())?;
        assert_eq!(notifier.sent().len(), 1);
        let replayed = ProjectionFixture::new(NotificationsProjection::new(
            Codec::default(),
            Arc::new(notifier.clone()),
        ))
        .replaying(true)
        .given(Notification::TYPE, "n-1", notified())?;
        assert_eq!(notifier.sent().len(), 1, "a replay sent it again");
        assert_eq!(live.documents().len(), 1);
        assert_eq!(
            replayed.documents().keys().collect::<Vec<_>>(),
            live.documents().keys().collect::<Vec<_>>()
        );
        Ok(())
    }
}
