//! An order: placed from a checked-out cart, then paid and confirmed, or cancelled with a
//! reason. Its events are its timeline.
//!
//! Must not touch: any runtime, store or clock.

use serde::{Deserialize, Serialize};

use super::cart::OrderLine;
use super::values::{Address, CartId, CustomerId, Money, PaymentId};
use crate::domain::{Aggregate, Command};

/// What can be asked of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderCommand {
    /// Places the order.
    Place {
        /// The cart it came from.
        cart: CartId,
        /// Its customer.
        customer: CustomerId,
        /// Its lines.
        lines: Vec<OrderLine>,
        /// Their total.
        total: Money,
        /// Where to deliver.
        address: Address,
    },
    /// Records the payment.
    MarkPaid {
        /// The payment.
        payment: PaymentId,
        /// The provider's charge id.
        charge: String,
    },
    /// Confirms a paid order.
    Confirm,
    /// Cancels the order.
    Cancel {
        /// Why, for the customer.
        reason: String,
    },
}

impl Command for OrderCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Place { .. } => "PlaceOrder",
            Self::MarkPaid { .. } => "MarkOrderPaid",
            Self::Confirm => "ConfirmOrder",
            Self::Cancel { .. } => "CancelOrder",
        }
    }
}

/// The order was placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The cart it came from.
    pub cart: CartId,
    /// Its customer.
    pub customer: CustomerId,
    /// Its lines.
    pub lines: Vec<OrderLine>,
    /// Their total.
    pub total: Money,
    /// Where to deliver.
    pub address: Address,
}

/// The order was paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaid {
    /// The payment.
    pub payment: PaymentId,
    /// The provider's charge id.
    pub charge: String,
}

/// The order was confirmed: it will be delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {}

/// The order was cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Why.
    pub reason: String,
}

crate::event_set! {
    /// What happens to an order.
    pub enum OrderEvent { OrderPlaced, OrderPaid, OrderConfirmed, OrderCancelled }
}

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not placed.
    #[default]
    New,
    /// Placed, waiting for payment.
    Placed,
    /// Paid.
    Paid,
    /// Confirmed.
    Confirmed,
    /// Cancelled.
    Cancelled,
}

/// Why an order refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// No such order.
    #[error("no such order")]
    NotFound,
    /// The order cannot do that in its present status (a 409).
    #[error("the order is {status:?}")]
    WrongStatus {
        /// Its status.
        status: OrderStatus,
    },
}

/// An order's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Where it is.
    pub status: OrderStatus,
    /// Its customer.
    pub customer: Option<CustomerId>,
    /// Its total.
    pub total: Money,
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus::*;
        let wrong = || {
            Err(OrderError::WrongStatus {
                status: self.status,
            })
        };
        match (command, self.status) {
            (
                OrderCommand::Place {
                    cart,
                    customer,
                    lines,
                    total,
                    address,
                },
                New,
            ) => Ok(vec![
                OrderPlaced {
                    cart: cart.clone(),
                    customer: customer.clone(),
                    lines: lines.clone(),
                    total: *total,
                    address: address.clone(),
                }
                .into(),
            ]),
            (OrderCommand::Place { .. }, _) => wrong(),
            (_, New) => Err(OrderError::NotFound),
            (OrderCommand::MarkPaid { payment, charge }, Placed) => Ok(vec![
                OrderPaid {
                    payment: payment.clone(),
                    charge: charge.clone(),
                }
                .into(),
            ]),
            (OrderCommand::MarkPaid { .. }, Paid | Confirmed) => Ok(Vec::new()),
            (OrderCommand::Confirm, Paid) => Ok(vec![OrderConfirmed {}.into()]),
            (OrderCommand::Confirm, Confirmed) => Ok(Vec::new()),
            (OrderCommand::Cancel { reason }, Placed | Paid) => Ok(vec![
                OrderCancelled {
                    reason: reason.clone(),
                }
                .into(),
            ]),
            (OrderCommand::Cancel { .. }, Cancelled) => Ok(Vec::new()),
            _ => wrong(),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced(e) => {
                self.status = OrderStatus::Placed;
                self.customer = Some(e.customer.clone());
                self.total = e.total;
            }
            OrderEvent::OrderPaid(_) => self.status = OrderStatus::Paid,
            OrderEvent::OrderConfirmed(_) => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderCancelled(_) => self.status = OrderStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::AggregateFixture;

    fn placed() -> OrderEvent {
        OrderPlaced {
            cart: CartId::parse("c1").unwrap_or_else(|_| unreachable!()),
            customer: CustomerId::parse("alice").unwrap_or_else(|_| unreachable!()),
            lines: Vec::new(),
            total: Money::from_cents(1000),
            address: Address::parse("Ada", "1 Leaf Lane", "Kew", "TW9", "UK")
                .unwrap_or_else(|_| unreachable!()),
        }
        .into()
    }

    #[test]
    fn an_unpaid_order_cannot_be_confirmed() {
        AggregateFixture::<Order>::given([placed()])
            .when(OrderCommand::Confirm)
            .expect_error(OrderError::WrongStatus {
                status: OrderStatus::Placed,
            });
    }

    #[test]
    fn a_confirmed_order_cannot_be_cancelled() {
        AggregateFixture::<Order>::given([
            placed(),
            OrderPaid {
                payment: PaymentId::parse("p1").unwrap_or_else(|_| unreachable!()),
                charge: "ch_1".into(),
            }
            .into(),
            OrderConfirmed {}.into(),
        ])
        .when(OrderCommand::Cancel {
            reason: "changed my mind".into(),
        })
        .expect_error(OrderError::WrongStatus {
            status: OrderStatus::Confirmed,
        });
    }

    #[test]
    fn cancelling_twice_records_one_cancellation() {
        AggregateFixture::<Order>::given([
            placed(),
            OrderCancelled {
                reason: "card declined".into(),
            }
            .into(),
        ])
        .when(OrderCommand::Cancel {
            reason: "card declined".into(),
        })
        .expect_no_events();
    }
}
