//! A payment for an order: requested, then succeeded or failed as the provider answered, or
//! abandoned when the purchase gave up waiting. The provider is called outside the domain; its
//! answer comes back in `Record`.
//!
//! Must not touch: any runtime, store, clock or provider.

use serde::{Deserialize, Serialize};

use super::values::{Money, OrderId, PaymentMethod};
use crate::domain::{Aggregate, Command};

/// What the provider answered for a charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChargeOutcome {
    /// The money was taken.
    Succeeded {
        /// The provider's charge id.
        charge: String,
    },
    /// The card was refused.
    Failed {
        /// A stable code (`card_declined`, `insufficient_funds`).
        code: String,
        /// For the customer.
        reason: String,
    },
}

/// What can be asked of a payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentCommand {
    /// Asks for the payment.
    Request {
        /// The order it pays.
        order: OrderId,
        /// How much.
        amount: Money,
        /// With what.
        method: PaymentMethod,
    },
    /// Records the provider's answer.
    Record {
        /// The answer.
        outcome: ChargeOutcome,
    },
    /// Gives up waiting for the provider.
    Abandon {
        /// Why.
        reason: String,
    },
}

impl Command for PaymentCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Request { .. } => "RequestPayment",
            Self::Record { .. } => "RecordPayment",
            Self::Abandon { .. } => "AbandonPayment",
        }
    }
}

/// A payment was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequested {
    /// The order.
    pub order: OrderId,
    /// How much.
    pub amount: Money,
    /// With what (the provider's token and the last four digits, never the card number).
    pub method: PaymentMethod,
}

/// The money was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    /// The order.
    pub order: OrderId,
    /// The provider's charge id.
    pub charge: String,
}

/// The card was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    /// The order.
    pub order: OrderId,
    /// A stable code.
    pub code: String,
    /// For the customer.
    pub reason: String,
}

/// The purchase stopped waiting for the payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAbandoned {
    /// The order.
    pub order: OrderId,
    /// Why.
    pub reason: String,
}

crate::event_set! {
    /// What happens to a payment.
    pub enum PaymentEvent { PaymentRequested, PaymentSucceeded, PaymentFailed, PaymentAbandoned }
}

/// Where a payment is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Not requested.
    #[default]
    New,
    /// Waiting for the provider.
    Requested,
    /// Taken.
    Succeeded,
    /// Refused.
    Failed,
    /// Given up.
    Abandoned,
}

/// Why a payment refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// No such payment.
    #[error("no such payment")]
    NotFound,
    /// The purchase gave up on this payment: a charge that succeeds now must be refunded.
    #[error("the payment was abandoned")]
    Abandoned,
    /// The payment already has an outcome.
    #[error("the payment already ended as {status:?}")]
    AlreadyEnded {
        /// Its status.
        status: PaymentStatus,
    },
}

/// A payment's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Where it is.
    pub status: PaymentStatus,
    /// The order it pays.
    pub order: Option<OrderId>,
}

impl Aggregate for Payment {
    const TYPE: &'static str = "Payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn decide(&self, command: &PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        use PaymentStatus::*;
        if let PaymentCommand::Request {
            order,
            amount,
            method,
        } = command
        {
            if self.status != New {
                return Ok(Vec::new());
            }
            return Ok(vec![
                PaymentRequested {
                    order: order.clone(),
                    amount: *amount,
                    method: method.clone(),
                }
                .into(),
            ]);
        }
        let Some(order) = self.order.clone() else {
            return Err(PaymentError::NotFound);
        };
        match (command, self.status) {
            (PaymentCommand::Record { outcome }, Requested) => Ok(vec![match outcome {
                ChargeOutcome::Succeeded { charge } => PaymentSucceeded {
                    order,
                    charge: charge.clone(),
                }
                .into(),
                ChargeOutcome::Failed { code, reason } => PaymentFailed {
                    order,
                    code: code.clone(),
                    reason: reason.clone(),
                }
                .into(),
            }]),
            (PaymentCommand::Record { .. }, Abandoned) => Err(PaymentError::Abandoned),
            (PaymentCommand::Record { outcome }, status) => {
                let same = matches!(
                    (outcome, status),
                    (ChargeOutcome::Succeeded { .. }, Succeeded)
                        | (ChargeOutcome::Failed { .. }, Failed)
                );
                if same {
                    Ok(Vec::new())
                } else {
                    Err(PaymentError::AlreadyEnded { status })
                }
            }
            (PaymentCommand::Abandon { reason }, Requested) => Ok(vec![
                PaymentAbandoned {
                    order,
                    reason: reason.clone(),
                }
                .into(),
            ]),
            (PaymentCommand::Abandon { .. }, Abandoned) => Ok(Vec::new()),
            (PaymentCommand::Abandon { .. }, status) => Err(PaymentError::AlreadyEnded { status }),
            (PaymentCommand::Request { .. }, _) => Ok(Vec::new()),
        }
    }

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::PaymentRequested(e) => {
                self.status = PaymentStatus::Requested;
                self.order = Some(e.order.clone());
            }
            PaymentEvent::PaymentSucceeded(_) => self.status = PaymentStatus::Succeeded,
            PaymentEvent::PaymentFailed(_) => self.status = PaymentStatus::Failed,
            PaymentEvent::PaymentAbandoned(_) => self.status = PaymentStatus::Abandoned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::AggregateFixture;

    fn order() -> OrderId {
        OrderId::parse("o1").unwrap_or_else(|_| unreachable!())
    }

    fn requested() -> PaymentEvent {
        PaymentRequested {
            order: order(),
            amount: Money::from_cents(1000),
            method: PaymentMethod {
                token: "tok".into(),
                last4: "4242".into(),
            },
        }
        .into()
    }

    #[test]
    fn a_charge_answered_after_abandonment_is_refused_so_it_can_be_refunded() {
        AggregateFixture::<Payment>::given([
            requested(),
            PaymentAbandoned {
                order: order(),
                reason: "timed out".into(),
            }
            .into(),
        ])
        .when(PaymentCommand::Record {
            outcome: ChargeOutcome::Succeeded {
                charge: "ch_1".into(),
            },
        })
        .expect_error(PaymentError::Abandoned);
    }

    #[test]
    fn the_same_answer_recorded_twice_is_recorded_once() {
        AggregateFixture::<Payment>::given([
            requested(),
            PaymentSucceeded {
                order: order(),
                charge: "ch_1".into(),
            }
            .into(),
        ])
        .when(PaymentCommand::Record {
            outcome: ChargeOutcome::Succeeded {
                charge: "ch_1".into(),
            },
        })
        .expect_no_events();
    }

    #[test]
    fn a_succeeded_payment_cannot_be_abandoned() {
        AggregateFixture::<Payment>::given([
            requested(),
            PaymentSucceeded {
                order: order(),
                charge: "ch_1".into(),
            }
            .into(),
        ])
        .when(PaymentCommand::Abandon {
            reason: "timed out".into(),
        })
        .expect_error(PaymentError::AlreadyEnded {
            status: PaymentStatus::Succeeded,
        });
    }
}
