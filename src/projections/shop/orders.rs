//! The orders: each order's status, invoice, delivery and timeline, and each customer's
//! orders. Keys: `o:<order id>` (the view) and `u:<customer>:<order id>` (the customer's
//! index). Invoice, delivery and payment events land on their order's view.

use serde::{Deserialize, Serialize};

use super::{decode, timestamp};
use crate::domain::Aggregate;
use crate::domain::shop::values::CURRENCY;
use crate::domain::shop::{
    Delivery, DeliveryEvent, Invoice, InvoiceEvent, Order, OrderEvent, Payment, PaymentEvent,
};
use crate::projections::{ApplyContext, Documents, Projection};
use crate::store::{Codec, RecordedEvent};

/// One entry of an order's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When (RFC 3339 UTC).
    pub at: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// For the customer.
    pub text: String,
}

/// An order's invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceView {
    /// The invoice.
    pub invoice_id: String,
    /// `open`, `paid` or `voided`.
    pub status: String,
    /// The amount in cents.
    pub amount_cents: u64,
}

/// An order's delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    /// The delivery.
    pub delivery_id: String,
    /// `prepared`, `released` or `cancelled`.
    pub status: String,
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLineView {
    /// The product.
    pub product_id: String,
    /// Its name.
    pub name: String,
    /// How many.
    pub quantity: u32,
    /// Unit price in cents.
    pub unit_price_cents: u64,
    /// `quantity × unit_price_cents`.
    pub line_total_cents: u64,
}

/// An order as its customer sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// The order.
    pub order_id: String,
    /// The cart it came from.
    pub cart_id: String,
    /// Its customer.
    pub customer_id: String,
    /// `placed`, `paid`, `confirmed` or `cancelled`.
    pub status: String,
    /// Its lines.
    pub lines: Vec<OrderLineView>,
    /// The total in cents.
    pub total_cents: u64,
    /// Always `EUR`.
    pub currency: String,
    /// Its invoice, once created.
    pub invoice: Option<InvoiceView>,
    /// Its delivery, once prepared.
    pub delivery: Option<DeliveryView>,
    /// What happened, in order.
    pub timeline: Vec<TimelineEntry>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
}

/// The orders read model.
pub struct OrdersProjection {
    codec: Codec,
}

impl OrdersProjection {
    /// The projection's name.
    pub const NAME: &'static str = "orders";

    /// The orders, decoding with `codec`.
    pub fn new(codec: Codec) -> Self {
        Self { codec }
    }

    /// The key of an order's view.
    pub fn key(order: &str) -> String {
        format!("o:{order}")
    }

    /// The key of a customer's index entry for an order.
    pub fn owner_key(customer: &str, order: &str) -> String {
        format!("u:{customer}:{order}")
    }

    /// The prefix of a customer's index.
    pub fn owner_prefix(customer: &str) -> String {
        format!("u:{customer}:")
    }

    /// The order an event is about, and what it adds to the timeline.
    fn read(&self, record: &RecordedEvent) -> Result<Option<(String, Change)>, String> {
        let order_id = record.stream.aggregate_id.clone();
        if let Some(event) = decode::<OrderEvent>(&self.codec, record, Order::TYPE)? {
            return Ok(Some((order_id, Change::Order(Box::new(event)))));
        }
        if let Some(event) = decode::<InvoiceEvent>(&self.codec, record, Invoice::TYPE)? {
            let order = match &event {
                InvoiceEvent::InvoiceCreated(e) => e.order.to_string(),
                InvoiceEvent::InvoicePaid(e) => e.order.to_string(),
                InvoiceEvent::InvoiceVoided(e) => e.order.to_string(),
            };
            return Ok(Some((order, Change::Invoice(event))));
        }
        if let Some(event) = decode::<DeliveryEvent>(&self.codec, record, Delivery::TYPE)? {
            let order = match &event {
                DeliveryEvent::DeliveryPrepared(e) => e.order.to_string(),
                DeliveryEvent::DeliveryReleased(e) => e.order.to_string(),
                DeliveryEvent::DeliveryCancelled(e) => e.order.to_string(),
            };
            return Ok(Some((order, Change::Delivery(event))));
        }
        if let Some(event) = decode::<PaymentEvent>(&self.codec, record, Payment::TYPE)? {
            let order = match &event {
                PaymentEvent::PaymentRequested(e) => e.order.to_string(),
                PaymentEvent::PaymentSucceeded(e) => e.order.to_string(),
                PaymentEvent::PaymentFailed(e) => e.order.to_string(),
                PaymentEvent::PaymentAbandoned(e) => e.order.to_string(),
            };
            return Ok(Some((order, Change::Payment(event))));
        }
        Ok(None)
    }
}

enum Change {
    Order(Box<OrderEvent>),
    Invoice(InvoiceEvent),
    Delivery(DeliveryEvent),
    Payment(PaymentEvent),
}

const TRACKED: [&str; 4] = [Order::TYPE, Invoice::TYPE, Delivery::TYPE, Payment::TYPE];

impl Projection for OrdersProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, event: &RecordedEvent) -> Vec<String> {
        if !TRACKED.contains(&event.stream.aggregate_type.as_str()) {
            return Vec::new();
        }
        match self.read(event) {
            Ok(Some((order, _))) => vec![Self::key(&order)],
            _ => Vec::new(),
        }
    }

    fn apply(
        &self,
        record: &RecordedEvent,
        documents: &mut Documents,
        _: ApplyContext,
    ) -> Result<(), String> {
        if !TRACKED.contains(&record.stream.aggregate_type.as_str()) {
            return Ok(());
        }
        let Some((order, change)) = self.read(record)? else {
            return Ok(());
        };
        let key = Self::key(&order);
        // Every event of an order follows its placement (the purchase sends them in order);
        // should one come first, it lands on a placeholder the placement fills in.
        let mut view = documents
            .get_as::<OrderView>(&key)?
            .unwrap_or_else(|| OrderView {
                order_id: order.clone(),
                cart_id: String::new(),
                customer_id: String::new(),
                status: "placed".into(),
                lines: Vec::new(),
                total_cents: 0,
                currency: CURRENCY.into(),
                invoice: None,
                delivery: None,
                timeline: Vec::new(),
                cancel_reason: None,
            });
        let text = match change {
            Change::Order(event) => match *event {
                OrderEvent::OrderPlaced(e) => {
                    view.cart_id = e.cart.to_string();
                    view.customer_id = e.customer.to_string();
                    view.total_cents = e.total.cents();
                    view.lines = e
                        .lines
                        .iter()
                        .map(|l| OrderLineView {
                            product_id: l.product.to_string(),
                            name: l.name.clone(),
                            quantity: l.quantity,
                            unit_price_cents: l.unit_price.cents(),
                            line_total_cents: l.total().cents(),
                        })
                        .collect();
                    documents.put(
                        Self::owner_key(e.customer.as_str(), &order),
                        &serde_json::json!({ "order_id": order }),
                    )?;
                    let items: u32 = e.lines.iter().map(|l| l.quantity).sum();
                    format!("Order placed: {items} item(s), {}", e.total)
                }
                OrderEvent::OrderPaid(_) => {
                    view.status = "paid".into();
                    "Order paid".into()
                }
                OrderEvent::OrderConfirmed(_) => {
                    view.status = "confirmed".into();
                    "Order confirmed".into()
                }
                OrderEvent::OrderCancelled(e) => {
                    view.status = "cancelled".into();
                    view.cancel_reason = Some(e.reason.clone());
                    format!("Order cancelled: {}", e.reason)
                }
            },
            Change::Invoice(event) => {
                let invoice_id = record.stream.aggregate_id.clone();
                let (status, text) = match &event {
                    InvoiceEvent::InvoiceCreated(e) => {
                        view.invoice = Some(InvoiceView {
                            invoice_id: invoice_id.clone(),
                            status: "open".into(),
                            amount_cents: e.amount.cents(),
                        });
                        (
                            "open",
                            format!("Invoice {invoice_id} issued for {}", e.amount),
                        )
                    }
                    InvoiceEvent::InvoicePaid(_) => ("paid", "Invoice paid".to_owned()),
                    InvoiceEvent::InvoiceVoided(e) => {
                        ("voided", format!("Invoice voided: {}", e.reason))
                    }
                };
                if let Some(invoice) = &mut view.invoice {
                    invoice.status = status.into();
                }
                text
            }
            Change::Delivery(event) => {
                let delivery_id = record.stream.aggregate_id.clone();
                let (status, text) = match &event {
                    DeliveryEvent::DeliveryPrepared(e) => (
                        "prepared",
                        format!(
                            "Delivery prepared for {}, {}",
                            e.address.name, e.address.city
                        ),
                    ),
                    DeliveryEvent::DeliveryReleased(_) => {
                        ("released", "Delivery handed to the carrier".to_owned())
                    }
                    DeliveryEvent::DeliveryCancelled(e) => {
                        ("cancelled", format!("Delivery cancelled: {}", e.reason))
                    }
                };
                view.delivery = Some(DeliveryView {
                    delivery_id,
                    status: status.into(),
                });
                text
            }
            Change::Payment(event) => match &event {
                PaymentEvent::PaymentRequested(e) => format!(
                    "Payment of {} requested (card ending {})",
                    e.amount, e.method.last4
                ),
                PaymentEvent::PaymentSucceeded(_) => "Payment succeeded".into(),
                PaymentEvent::PaymentFailed(e) => format!("Payment failed: {}", e.reason),
                PaymentEvent::PaymentAbandoned(e) => format!("Payment abandoned: {}", e.reason),
            },
        };
        view.timeline.push(TimelineEntry {
            at: timestamp(record),
            kind: record.event_type.clone(),
            text,
        });
        documents.put(key, &view)
    }
}
