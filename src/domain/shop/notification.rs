//! A notification to a customer ("your order is confirmed"). Recording it is the fact; sending
//! it (mail, push) is a side effect of the notifications read model, which never repeats it on
//! a rebuild.
//!
//! Must not touch: any runtime, store or clock.

use serde::{Deserialize, Serialize};

use super::values::{CustomerId, OrderId};
use crate::domain::{Aggregate, Command};

/// What can be asked of a notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotificationCommand {
    /// Notifies the customer.
    Send {
        /// Who.
        customer: CustomerId,
        /// About which order.
        order: Option<OrderId>,
        /// A stable kind (`order_confirmed`, `order_cancelled`).
        kind: String,
        /// For the customer.
        text: String,
    },
}

impl Command for NotificationCommand {
    fn name(&self) -> &'static str {
        "NotifyCustomer"
    }
}

/// The customer was notified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerNotified {
    /// Who.
    pub customer: CustomerId,
    /// About which order.
    pub order: Option<OrderId>,
    /// A stable kind.
    pub kind: String,
    /// For the customer.
    pub text: String,
}

crate::event_set! {
    /// What happens to a notification.
    pub enum NotificationEvent { CustomerNotified }
}

/// Notifications never fail: sending one twice records it once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("never")]
pub enum NotificationError {}

/// A notification's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Whether it was recorded.
    pub sent: bool,
}

impl Aggregate for Notification {
    const TYPE: &'static str = "Notification";
    type Command = NotificationCommand;
    type Event = NotificationEvent;
    type Error = NotificationError;

    fn decide(
        &self,
        command: &NotificationCommand,
    ) -> Result<Vec<NotificationEvent>, NotificationError> {
        let NotificationCommand::Send {
            customer,
            order,
            kind,
            text,
        } = command;
        if self.sent {
            return Ok(Vec::new());
        }
        Ok(vec![
            CustomerNotified {
                customer: customer.clone(),
                order: order.clone(),
                kind: kind.clone(),
                text: text.clone(),
            }
            .into(),
        ])
    }

    fn apply(&mut self, _: &NotificationEvent) {
        self.sent = true;
    }
}
