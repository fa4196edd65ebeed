//! The payment processing saga: a requested payment is charged through the provider (the
//! `Charge` command, whose dispatcher calls the provider with the payment id as idempotency key
//! and records the answer on the payment). It is its own saga so that a provider that is down
//! holds back only the charges, never the purchase's compensation when its deadline passes.
//!
//! Must not touch: any runtime, store, clock or provider.

use serde::{Deserialize, Serialize};

use super::ShopCommand;
use super::payment::PaymentRequested;
use super::values::PaymentId;
use crate::domain::{Association, Routing, Saga, Step};

/// The events payment processing listens to.
#[derive(Clone, Debug, PartialEq)]
pub enum PaymentProcessEvent {
    /// A payment was requested: charge it.
    Requested {
        /// The payment.
        payment: PaymentId,
        /// What was requested.
        event: PaymentRequested,
    },
    /// The payment succeeded, failed or was abandoned: nothing more to do.
    Ended {
        /// The payment.
        payment: PaymentId,
    },
}

/// One payment being charged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentProcessing {
    /// The payment.
    pub payment: Option<PaymentId>,
}

impl Saga for PaymentProcessing {
    const NAME: &'static str = "PaymentProcessing";
    type Event = PaymentProcessEvent;
    type Command = ShopCommand;

    fn routing(event: &PaymentProcessEvent) -> Option<Routing> {
        Some(match event {
            PaymentProcessEvent::Requested { payment, .. } => {
                Routing::Start(Association::new("payment_id", payment.as_str()))
            }
            PaymentProcessEvent::Ended { payment } => {
                Routing::To(Association::new("payment_id", payment.as_str()))
            }
        })
    }

    fn handle(&mut self, event: &PaymentProcessEvent, _now: i64) -> Step<ShopCommand> {
        match event {
            PaymentProcessEvent::Requested { payment, event } => {
                if self.payment.is_some() {
                    return Step::nothing();
                }
                self.payment = Some(payment.clone());
                Step::nothing().send(ShopCommand::Charge {
                    payment: payment.clone(),
                    amount: event.amount,
                    token: event.method.token.clone(),
                })
            }
            PaymentProcessEvent::Ended { .. } => Step::nothing().end(),
        }
    }

    fn on_deadline(&mut self, _name: &str, _now: i64) -> Step<ShopCommand> {
        Step::nothing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::shop::values::{Money, OrderId, PaymentMethod};
    use crate::testkit::SagaFixture;

    fn payment() -> PaymentId {
        PaymentId::parse("pay-o1").unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn a_requested_payment_is_charged_once_and_the_outcome_ends_it() {
        let requested = PaymentProcessEvent::Requested {
            payment: payment(),
            event: PaymentRequested {
                order: OrderId::parse("o1").unwrap_or_else(|_| unreachable!()),
                amount: Money::from_cents(2000),
                method: PaymentMethod {
                    token: "tok_ok_4242".into(),
                    last4: "4242".into(),
                },
            },
        };
        SagaFixture::<PaymentProcessing>::new()
            .when(requested.clone())
            .expect_commands([ShopCommand::Charge {
                payment: payment(),
                amount: Money::from_cents(2000),
                token: "tok_ok_4242".into(),
            }])
            .and()
            .when(requested)
            .expect_no_commands()
            .and()
            .when(PaymentProcessEvent::Ended { payment: payment() })
            .expect_ended();
    }
}
