//! An invoice for an order: created, then paid, or voided when the purchase is compensated. A
//! paid invoice is never voided (that would need a credit note).
//!
//! Must not touch: any runtime, store or clock.

use serde::{Deserialize, Serialize};

use super::values::{CustomerId, Money, OrderId};
use crate::domain::{Aggregate, Command};

/// What can be asked of an invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvoiceCommand {
    /// Creates the invoice.
    Create {
        /// The order it bills.
        order: OrderId,
        /// Its customer.
        customer: CustomerId,
        /// The amount.
        amount: Money,
    },
    /// Marks it paid.
    Pay,
    /// Voids it.
    Void {
        /// Why.
        reason: String,
    },
}

impl Command for InvoiceCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "CreateInvoice",
            Self::Pay => "PayInvoice",
            Self::Void { .. } => "VoidInvoice",
        }
    }
}

/// The invoice was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceCreated {
    /// The order it bills.
    pub order: OrderId,
    /// Its customer.
    pub customer: CustomerId,
    /// The amount.
    pub amount: Money,
}

/// The invoice was paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoicePaid {
    /// The order it bills.
    pub order: OrderId,
}

/// The invoice was voided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceVoided {
    /// The order it billed.
    pub order: OrderId,
    /// Why.
    pub reason: String,
}

crate::event_set! {
    /// What happens to an invoice.
    pub enum InvoiceEvent { InvoiceCreated, InvoicePaid, InvoiceVoided }
}

/// Where an invoice is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Not created.
    #[default]
    New,
    /// Waiting for payment.
    Open,
    /// Paid.
    Paid,
    /// Voided.
    Voided,
}

/// Why an invoice refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    /// No such invoice.
    #[error("no such invoice")]
    NotFound,
    /// The invoice cannot do that in its present status.
    #[error("the invoice is {status:?}")]
    WrongStatus {
        /// Its status.
        status: InvoiceStatus,
    },
}

/// An invoice's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// Where it is.
    pub status: InvoiceStatus,
    /// The order it bills.
    pub order: Option<OrderId>,
}

impl Aggregate for Invoice {
    const TYPE: &'static str = "Invoice";
    type Command = InvoiceCommand;
    type Event = InvoiceEvent;
    type Error = InvoiceError;

    fn decide(&self, command: &InvoiceCommand) -> Result<Vec<InvoiceEvent>, InvoiceError> {
        use InvoiceStatus::*;
        let order = || self.order.clone().ok_or(InvoiceError::NotFound);
        match (command, self.status) {
            (
                InvoiceCommand::Create {
                    order,
                    customer,
                    amount,
                },
                New,
            ) => Ok(vec![
                InvoiceCreated {
                    order: order.clone(),
                    customer: customer.clone(),
                    amount: *amount,
                }
                .into(),
            ]),
            (InvoiceCommand::Create { .. }, _) => Ok(Vec::new()),
            (_, New) => Err(InvoiceError::NotFound),
            (InvoiceCommand::Pay, Open) => Ok(vec![InvoicePaid { order: order()? }.into()]),
            (InvoiceCommand::Pay, Paid) | (InvoiceCommand::Void { .. }, Voided) => Ok(Vec::new()),
            (InvoiceCommand::Void { reason }, Open) => Ok(vec![
                InvoiceVoided {
                    order: order()?,
                    reason: reason.clone(),
                }
                .into(),
            ]),
            (_, status) => Err(InvoiceError::WrongStatus { status }),
        }
    }

    fn apply(&mut self, event: &InvoiceEvent) {
        match event {
            InvoiceEvent::InvoiceCreated(e) => {
                self.status = InvoiceStatus::Open;
                self.order = Some(e.order.clone());
            }
            InvoiceEvent::InvoicePaid(_) => self.status = InvoiceStatus::Paid,
            InvoiceEvent::InvoiceVoided(_) => self.status = InvoiceStatus::Voided,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::AggregateFixture;

    fn created() -> InvoiceEvent {
        InvoiceCreated {
            order: OrderId::parse("o1").unwrap_or_else(|_| unreachable!()),
            customer: CustomerId::parse("alice").unwrap_or_else(|_| unreachable!()),
            amount: Money::from_cents(1000),
        }
        .into()
    }

    #[test]
    fn a_paid_invoice_is_never_voided() {
        AggregateFixture::<Invoice>::given([
            created(),
            InvoicePaid {
                order: OrderId::parse("o1").unwrap_or_else(|_| unreachable!()),
            }
            .into(),
        ])
        .when(InvoiceCommand::Void { reason: "x".into() })
        .expect_error(InvoiceError::WrongStatus {
            status: InvoiceStatus::Paid,
        });
    }

    #[test]
    fn an_open_invoice_is_voided_once() {
        let invoice = AggregateFixture::<Invoice>::given([created()])
            .when(InvoiceCommand::Void {
                reason: "card declined".into(),
            })
            .expect_events([InvoiceVoided {
                order: OrderId::parse("o1").unwrap_or_else(|_| unreachable!()),
                reason: "card declined".into(),
            }
            .into()]);
        assert_eq!(invoice.status, InvoiceStatus::Voided);
    }
}
