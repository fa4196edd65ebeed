//! The purchase saga (the seed's PurchaseManagementSaga): a checkout starts it; it places the
//! order, creates the invoice, prepares the delivery and asks for the payment (the payment
//! processing saga charges the card, so a provider that is down never holds the purchase's
//! own commands back); when the payment
//! succeeds it confirms the order, marks the invoice paid, releases the delivery and sells the
//! held stock; when the payment fails, or no answer comes before the payment deadline, it
//! compensates instead of rolling back: the order is cancelled, the invoice voided, the
//! delivery cancelled, the held stock put back on the shelf, and the customer told why.
//!
//! Must not touch: any runtime, store, clock or provider.

use serde::{Deserialize, Serialize};

use super::ShopCommand;
use super::cart::{CartCheckedOut, OrderLine};
use super::delivery::DeliveryCommand;
use super::invoice::InvoiceCommand;
use super::notification::NotificationCommand;
use super::order::OrderCommand;
use super::payment::{PaymentAbandoned, PaymentCommand, PaymentFailed, PaymentSucceeded};
use super::product::ProductCommand;
use super::values::{
    CartId, CustomerId, DeliveryId, InvoiceId, NotificationId, OrderId, PaymentId,
};
use crate::domain::{Association, Routing, Saga, Step};

/// The deadline by which the payment must have answered.
pub const PAYMENT_DEADLINE: &str = "payment";

/// The events the purchase listens to.
#[derive(Clone, Debug, PartialEq)]
pub enum PurchaseEvent {
    /// A cart was checked out: a purchase starts.
    CheckedOut {
        /// The cart.
        cart: CartId,
        /// What the checkout recorded.
        event: Box<CartCheckedOut>,
    },
    /// The payment went through.
    PaymentSucceeded(PaymentSucceeded),
    /// The payment was refused.
    PaymentFailed(PaymentFailed),
    /// The purchase stopped waiting for the payment (its deadline passed, and no answer had
    /// been recorded).
    PaymentAbandoned(PaymentAbandoned),
}

/// One purchase, from checkout to confirmation or compensation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Purchase {
    /// The order.
    pub order: Option<OrderId>,
    /// Its customer.
    pub customer: Option<CustomerId>,
    /// Its lines, with the holds that back them.
    pub lines: Vec<OrderLine>,
}

impl InvoiceId {
    /// The invoice of an order.
    pub fn for_order(order: &OrderId) -> Self {
        Self::derived(format!("inv-{order}"))
    }
}

impl DeliveryId {
    /// The delivery of an order.
    pub fn for_order(order: &OrderId) -> Self {
        Self::derived(format!("dlv-{order}"))
    }
}

impl PaymentId {
    /// The payment of an order.
    pub fn for_order(order: &OrderId) -> Self {
        Self::derived(format!("pay-{order}"))
    }
}

impl NotificationId {
    /// The notification of `kind` about an order.
    pub fn for_order(order: &OrderId, kind: &str) -> Self {
        Self::derived(format!("n-{order}-{kind}"))
    }
}

impl Purchase {
    fn order(&self) -> OrderId {
        self.order
            .clone()
            .unwrap_or_else(|| OrderId::derived("unknown".into()))
    }

    fn notify(&self, kind: &str, text: String) -> ShopCommand {
        let order = self.order();
        ShopCommand::Notify {
            id: NotificationId::for_order(&order, kind),
            command: NotificationCommand::Send {
                customer: self
                    .customer
                    .clone()
                    .unwrap_or_else(|| CustomerId::derived("unknown".into())),
                order: Some(order),
                kind: kind.to_owned(),
                text,
            },
        }
    }

    /// Cancels the order with `reason`, runs the recorded compensations (void the invoice,
    /// cancel the delivery, release the held stock), tells the customer, ends.
    fn compensate(&self, reason: &str, step: Step<ShopCommand>) -> Step<ShopCommand> {
        let order = self.order();
        step.send(ShopCommand::Order {
            id: order.clone(),
            command: OrderCommand::Cancel {
                reason: reason.to_owned(),
            },
        })
        .send(self.notify(
            "order_cancelled",
            format!("Your order {order} was cancelled: {reason}. Nothing was charged."),
        ))
        .compensate()
        .cancel(PAYMENT_DEADLINE)
        .end()
    }
}

impl Saga for Purchase {
    const NAME: &'static str = "PurchaseManagement";
    type Event = PurchaseEvent;
    type Command = ShopCommand;

    fn routing(event: &PurchaseEvent) -> Option<Routing> {
        Some(match event {
            PurchaseEvent::CheckedOut { event, .. } => {
                Routing::Start(Association::new("order_id", event.order.as_str()))
            }
            PurchaseEvent::PaymentSucceeded(e) => {
                Routing::To(Association::new("order_id", e.order.as_str()))
            }
            PurchaseEvent::PaymentFailed(e) => {
                Routing::To(Association::new("order_id", e.order.as_str()))
            }
            PurchaseEvent::PaymentAbandoned(e) => {
                Routing::To(Association::new("order_id", e.order.as_str()))
            }
        })
    }

    fn handle(&mut self, event: &PurchaseEvent, _now: i64) -> Step<ShopCommand> {
        match event {
            PurchaseEvent::CheckedOut { cart, event } => {
                if self.order.is_some() {
                    return Step::nothing(); // a second checkout event of the same order
                }
                self.order = Some(event.order.clone());
                self.customer = Some(event.customer.clone());
                self.lines.clone_from(&event.lines);
                let order = event.order.clone();
                let (invoice, delivery, payment) = (
                    InvoiceId::for_order(&order),
                    DeliveryId::for_order(&order),
                    PaymentId::for_order(&order),
                );
                let mut step = Step::nothing().send(ShopCommand::Order {
                    id: order.clone(),
                    command: OrderCommand::Place {
                        cart: cart.clone(),
                        customer: event.customer.clone(),
                        lines: event.lines.clone(),
                        total: event.total,
                        address: event.address.clone(),
                    },
                });
                // The stock was reserved by the cart before the purchase started: recorded so
                // that compensating puts it back on the shelf.
                for line in &event.lines {
                    for (hold, _) in &line.holds {
                        step = step.undo(ShopCommand::Product {
                            id: line.product.clone(),
                            command: ProductCommand::Release {
                                hold: hold.clone(),
                                keep: 0,
                            },
                        });
                    }
                }
                step.send_undoable(
                    ShopCommand::Invoice {
                        id: invoice.clone(),
                        command: InvoiceCommand::Create {
                            order: order.clone(),
                            customer: event.customer.clone(),
                            amount: event.total,
                        },
                    },
                    ShopCommand::Invoice {
                        id: invoice.clone(),
                        command: InvoiceCommand::Void {
                            reason: "the order was cancelled".into(),
                        },
                    },
                )
                .send_undoable(
                    ShopCommand::Delivery {
                        id: delivery.clone(),
                        command: DeliveryCommand::Prepare {
                            order: order.clone(),
                            address: event.address.clone(),
                        },
                    },
                    ShopCommand::Delivery {
                        id: delivery.clone(),
                        command: DeliveryCommand::Cancel {
                            reason: "the order was cancelled".into(),
                        },
                    },
                )
                .send(ShopCommand::Payment {
                    id: payment.clone(),
                    command: PaymentCommand::Request {
                        order: order.clone(),
                        amount: event.total,
                        method: event.payment.clone(),
                    },
                })
                .associate("invoice_id", invoice.as_str())
                .associate("delivery_id", delivery.as_str())
                .associate("payment_id", payment.as_str())
                .deadline(PAYMENT_DEADLINE, event.payment_timeout_seconds)
            }
            PurchaseEvent::PaymentSucceeded(e) => {
                let order = self.order();
                let mut step = Step::nothing()
                    .send(ShopCommand::Order {
                        id: order.clone(),
                        command: OrderCommand::MarkPaid {
                            payment: PaymentId::for_order(&order),
                            charge: e.charge.clone(),
                        },
                    })
                    .send(ShopCommand::Invoice {
                        id: InvoiceId::for_order(&order),
                        command: InvoiceCommand::Pay,
                    })
                    .send(ShopCommand::Delivery {
                        id: DeliveryId::for_order(&order),
                        command: DeliveryCommand::Release,
                    });
                for line in &self.lines {
                    for (hold, quantity) in &line.holds {
                        step = step.send(ShopCommand::Product {
                            id: line.product.clone(),
                            command: ProductCommand::Sell {
                                hold: hold.clone(),
                                order: order.clone(),
                                quantity: *quantity,
                            },
                        });
                    }
                }
                step.send(ShopCommand::Order {
                    id: order.clone(),
                    command: OrderCommand::Confirm,
                })
                .send(self.notify(
                    "order_confirmed",
                    format!("Your order {order} is confirmed and on its way."),
                ))
                .cancel(PAYMENT_DEADLINE)
                .end()
            }
            PurchaseEvent::PaymentFailed(e) => {
                self.compensate(&format!("payment failed ({})", e.reason), Step::nothing())
            }
            PurchaseEvent::PaymentAbandoned(_) => {
                self.compensate("the payment timed out", Step::nothing())
            }
        }
    }

    /// The payment deadline abandons the payment, and nothing else: whichever the payment
    /// records first, its success (the provider answered just in time) or its abandonment,
    /// decides whether the purchase confirms or compensates. A charge that lands after the
    /// abandonment is refunded by the charge's dispatcher.
    fn on_deadline(&mut self, name: &str, _now: i64) -> Step<ShopCommand> {
        if name != PAYMENT_DEADLINE {
            return Step::nothing();
        }
        let order = self.order();
        Step::nothing().send(ShopCommand::Payment {
            id: PaymentId::for_order(&order),
            command: PaymentCommand::Abandon {
                reason: "no answer from the payment provider in time".into(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::shop::values::{Address, Money, PaymentMethod, ProductId};
    use crate::testkit::SagaFixture;

    fn id<T: TryFrom<String>>(raw: &str) -> T {
        T::try_from(raw.to_owned()).unwrap_or_else(|_| unreachable!("test ids are valid"))
    }

    fn checked_out() -> PurchaseEvent {
        PurchaseEvent::CheckedOut {
            cart: id("c1"),
            event: Box::new(CartCheckedOut {
                order: id("o1"),
                customer: id("alice"),
                lines: vec![OrderLine {
                    product: id("monstera"),
                    name: "Monstera".into(),
                    quantity: 3,
                    unit_price: Money::from_cents(1000),
                    holds: vec![(id("h1"), 2), (id("h2"), 1)],
                }],
                total: Money::from_cents(3000),
                address: Address::parse("Ada", "1 Leaf Lane", "Kew", "TW9", "UK")
                    .unwrap_or_else(|_| unreachable!()),
                payment: PaymentMethod {
                    token: "tok_ok_4242".into(),
                    last4: "4242".into(),
                },
                payment_timeout_seconds: 900,
            }),
        }
    }

    fn order() -> OrderId {
        id("o1")
    }

    fn release(hold: &str) -> ShopCommand {
        ShopCommand::Product {
            id: id::<ProductId>("monstera"),
            command: ProductCommand::Release {
                hold: id(hold),
                keep: 0,
            },
        }
    }

    fn compensations() -> Vec<ShopCommand> {
        vec![
            ShopCommand::Delivery {
                id: DeliveryId::for_order(&order()),
                command: DeliveryCommand::Cancel {
                    reason: "the order was cancelled".into(),
                },
            },
            ShopCommand::Invoice {
                id: InvoiceId::for_order(&order()),
                command: InvoiceCommand::Void {
                    reason: "the order was cancelled".into(),
                },
            },
            release("h2"),
            release("h1"),
        ]
    }

    #[test]
    fn checkout_places_the_order_invoices_prepares_and_asks_for_payment() {
        let then = SagaFixture::<Purchase>::new().when(checked_out());
        let names: Vec<&str> = then.sent().iter().map(ShopCommand::name).collect();
        assert_eq!(
            names,
            [
                "PlaceOrder",
                "CreateInvoice",
                "PrepareDelivery",
                "RequestPayment",
            ]
        );
        then.expect_deadline_set(PAYMENT_DEADLINE).expect_active();
    }

    #[test]
    fn a_paid_purchase_confirms_sells_the_held_stock_and_ends() {
        let then = SagaFixture::<Purchase>::new().given([checked_out()]).when(
            PurchaseEvent::PaymentSucceeded(PaymentSucceeded {
                order: order(),
                charge: "ch_1".into(),
            }),
        );
        let names: Vec<&str> = then.sent().iter().map(ShopCommand::name).collect();
        assert_eq!(
            names,
            [
                "MarkOrderPaid",
                "PayInvoice",
                "ReleaseDelivery",
                "SellStock",
                "SellStock",
                "ConfirmOrder",
                "NotifyCustomer"
            ]
        );
        then.expect_deadline_cancelled(PAYMENT_DEADLINE)
            .expect_ended();
    }

    #[test]
    fn a_declined_card_compensates_every_step_and_tells_the_customer() {
        let reason = "payment failed (card declined)";
        let mut expected = vec![
            ShopCommand::Order {
                id: order(),
                command: OrderCommand::Cancel {
                    reason: reason.into(),
                },
            },
            ShopCommand::Notify {
                id: NotificationId::for_order(&order(), "order_cancelled"),
                command: NotificationCommand::Send {
                    customer: id("alice"),
                    order: Some(order()),
                    kind: "order_cancelled".into(),
                    text: format!("Your order o1 was cancelled: {reason}. Nothing was charged."),
                },
            },
        ];
        expected.extend(compensations());
        SagaFixture::<Purchase>::new()
            .given([checked_out()])
            .when(PurchaseEvent::PaymentFailed(PaymentFailed {
                order: order(),
                code: "card_declined".into(),
                reason: "card declined".into(),
            }))
            .expect_commands(expected)
            .expect_ended();
    }

    #[test]
    fn no_answer_by_the_payment_deadline_abandons_the_payment_then_compensates() {
        SagaFixture::<Purchase>::new()
            .given([checked_out()])
            .when_time_elapses(899)
            .expect_no_commands()
            .and()
            .when_time_elapses(1)
            .expect_commands([ShopCommand::Payment {
                id: PaymentId::for_order(&order()),
                command: PaymentCommand::Abandon {
                    reason: "no answer from the payment provider in time".into(),
                },
            }])
            .expect_active();
        let then = SagaFixture::<Purchase>::new()
            .given([checked_out()])
            .when_time_elapses(900)
            .and()
            .when(PurchaseEvent::PaymentAbandoned(PaymentAbandoned {
                order: order(),
                reason: "no answer from the payment provider in time".into(),
            }));
        let sent = then.sent().to_vec();
        assert_eq!(sent[0].name(), "CancelOrder");
        assert!(sent.ends_with(&compensations()));
        then.expect_ended();
    }

    #[test]
    fn a_payment_that_succeeds_as_the_deadline_passes_confirms_the_order() {
        SagaFixture::<Purchase>::new()
            .given([checked_out()])
            .when_time_elapses(900)
            .and()
            .when(PurchaseEvent::PaymentSucceeded(PaymentSucceeded {
                order: order(),
                charge: "ch_1".into(),
            }))
            .expect_ended();
    }
}
