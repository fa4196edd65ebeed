//! The JSON the API takes and gives, as the contract (`API.md`) names it. Requests refuse
//! unknown fields, so a body carrying a price, an owner or a status is a 400. Numbers that a
//! rule bounds (quantities, prices, stock) arrive as any JSON number and are checked by the
//! rule, so 0, -1, 1.5 and 1e30 all get the rule's 422 rather than a parse error.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use utoipa::ToSchema;

use crate::projections::shop::{CartView, NotificationView, OrderView, ProductView};

/// `POST /api/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The customer's id: 1 to 80 ASCII letters, digits, `-` or `_`.
    pub customer: String,
}

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionCreated {
    /// The bearer token.
    pub token: String,
    /// The customer.
    pub customer_id: String,
}

/// `POST /api/admin/products`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Unit price in cents.
    #[schema(value_type = i64)]
    pub price_cents: Number,
    /// Items on the shelf.
    #[schema(value_type = i64)]
    pub stock: Number,
}

/// `POST /api/admin/products/{product_id}/restock`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    /// Items to add.
    #[schema(value_type = i64)]
    pub quantity: Number,
}

/// `POST /api/carts`: nothing, or `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCart {}

/// `POST /api/carts/{cart_id}/items`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItem {
    /// The product.
    pub product_id: String,
    /// How many (1 to 99).
    #[schema(value_type = i64)]
    pub quantity: Number,
}

/// Where to deliver.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryAddress {
    /// Recipient.
    pub name: String,
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postcode.
    pub postcode: String,
    /// Country.
    pub country: String,
}

/// How to pay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentDetails {
    /// The card number (12 to 19 digits, Luhn-checked; spaces allowed).
    pub card_number: String,
}

/// `POST /api/carts/{cart_id}/checkout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkout {
    /// Where to deliver.
    pub delivery_address: DeliveryAddress,
    /// How to pay.
    pub payment: PaymentDetails,
}

/// A command was accepted: its events are durable.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The command's id.
    pub command_id: String,
    /// The global position of its last event (read-your-writes: `?min_position=`).
    pub position: u64,
}

/// A cart was opened.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartCreated {
    /// The cart.
    pub cart_id: String,
    /// The position of its first event.
    pub position: u64,
}

/// A cart was checked out.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckedOut {
    /// The order.
    pub order_id: String,
    /// The position of the checkout.
    pub position: u64,
    /// The command's id.
    pub command_id: String,
}

/// A product of the catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct Product {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Unit price in cents.
    pub price_cents: u64,
    /// `EUR`.
    pub currency: String,
    /// Items neither held by carts nor sold.
    pub available: u32,
}

impl From<ProductView> for Product {
    fn from(view: ProductView) -> Self {
        Self {
            id: view.id,
            name: view.name,
            description: view.description,
            price_cents: view.price_cents,
            currency: view.currency,
            available: view.available,
        }
    }
}

/// A line of a cart.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartLine {
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

/// A cart.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cart {
    /// The cart.
    pub cart_id: String,
    /// `open` or `checked_out`.
    pub status: String,
    /// Its lines.
    pub lines: Vec<CartLine>,
    /// The total in cents.
    pub total_cents: u64,
    /// `EUR`.
    pub currency: String,
    /// The order it became, once checked out.
    pub order_id: Option<String>,
}

impl From<CartView> for Cart {
    fn from(view: CartView) -> Self {
        Self {
            cart_id: view.cart_id,
            status: view.status,
            lines: view
                .lines
                .into_iter()
                .map(|l| CartLine {
                    product_id: l.product_id,
                    name: l.name,
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                    line_total_cents: l.line_total_cents,
                })
                .collect(),
            total_cents: view.total_cents,
            currency: view.currency,
            order_id: view.order_id,
        }
    }
}

/// An order's invoice.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invoice {
    /// The invoice.
    pub invoice_id: String,
    /// `open`, `paid` or `voided`.
    pub status: String,
    /// The amount in cents.
    pub amount_cents: u64,
}

/// An order's delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// The delivery.
    pub delivery_id: String,
    /// `prepared`, `released` or `cancelled`.
    pub status: String,
}

/// An entry of an order's timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntry {
    /// When (RFC 3339 UTC).
    pub at: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// For the customer.
    pub text: String,
}

/// An order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Order {
    /// The order.
    pub order_id: String,
    /// The cart it came from.
    pub cart_id: String,
    /// `placed`, `paid`, `confirmed` or `cancelled`.
    pub status: String,
    /// The total in cents.
    pub total_cents: u64,
    /// `EUR`.
    pub currency: String,
    /// Its invoice, once created.
    pub invoice: Option<Invoice>,
    /// Its delivery, once prepared.
    pub delivery: Option<Delivery>,
    /// What happened, in order.
    pub timeline: Vec<TimelineEntry>,
    /// Why it was cancelled.
    pub reason: Option<String>,
}

impl From<OrderView> for Order {
    fn from(view: OrderView) -> Self {
        Self {
            order_id: view.order_id,
            cart_id: view.cart_id,
            status: view.status,
            total_cents: view.total_cents,
            currency: view.currency,
            invoice: view.invoice.map(|i| Invoice {
                invoice_id: i.invoice_id,
                status: i.status,
                amount_cents: i.amount_cents,
            }),
            delivery: view.delivery.map(|d| Delivery {
                delivery_id: d.delivery_id,
                status: d.status,
            }),
            timeline: view
                .timeline
                .into_iter()
                .map(|t| TimelineEntry {
                    at: t.at,
                    kind: t.kind,
                    text: t.text,
                })
                .collect(),
            reason: view.cancel_reason,
        }
    }
}

/// A notification.
#[derive(Debug, Serialize, ToSchema)]
pub struct Notification {
    /// The notification.
    pub notification_id: String,
    /// About which order.
    pub order_id: Option<String>,
    /// `order_confirmed` or `order_cancelled`.
    pub kind: String,
    /// For the customer.
    pub text: String,
    /// When (RFC 3339 UTC).
    pub at: String,
}

impl From<NotificationView> for Notification {
    fn from(view: NotificationView) -> Self {
        Self {
            notification_id: view.notification_id,
            order_id: view.order_id,
            kind: view.kind,
            text: view.text,
            at: view.at,
        }
    }
}

/// What caused an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventMetadata {
    /// The command that recorded it.
    pub command_id: Option<String>,
    /// The conversation it belongs to.
    pub correlation_id: Option<String>,
    /// What directly caused the command.
    pub causation_id: Option<String>,
}

/// One event of a cart's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    /// Its number in the cart's stream.
    pub sequence: u64,
    /// Its global position.
    pub position: u64,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// When (RFC 3339 UTC).
    pub timestamp: String,
    /// Its payload.
    #[schema(value_type = Object)]
    pub data: Value,
    /// What caused it.
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// A read model's or saga's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Processor {
    /// Its name.
    pub name: String,
    /// The last position it applied.
    pub position: u64,
    /// The store's head.
    pub head: u64,
    /// `head - position`.
    pub lag: u64,
    /// `running`, `rebuilding`, `failing` or `stopped`.
    pub status: String,
    /// The generation that serves.
    pub generation: u32,
    /// How far a rebuild got, while one runs.
    pub rebuild_position: Option<u64>,
    /// The last error, while failing.
    pub last_error: Option<String>,
}

/// A parked event.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    /// Its id (retry it by this id).
    pub id: i64,
    /// The read model that parked it.
    pub processor: String,
    /// Its global position.
    pub position: u64,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Its aggregate id.
    pub aggregate_id: String,
    /// Its type.
    pub event_type: String,
    /// Why it was parked.
    pub error: String,
    /// Tries so far.
    pub attempts: u32,
    /// Failed itself (true) or waits behind one that did (false).
    pub parked: bool,
    /// Skipped by an operator.
    pub skipped: bool,
    /// When (RFC 3339 UTC).
    pub parked_at: String,
}

/// A dead letter was retried.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    /// Events applied.
    pub applied: usize,
}

/// The one shape of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case word (`insufficient_stock`).
    pub code: String,
    /// For a person.
    pub message: String,
    /// What else the client may use (`available`).
    #[schema(value_type = Object)]
    pub details: Value,
}
