//! The plant shop: its values, its aggregates (product stock, cart, order, invoice, delivery,
//! payment, notification), its sagas (the purchase, payment processing and the reservation
//! keeper) and the seed
//! catalog. Each aggregate is one file: adding a command or an event is a change there.
//!
//! Must not touch: any runtime, store or clock.

pub mod cart;
pub mod delivery;
pub mod invoice;
pub mod notification;
pub mod order;
pub mod payment;
pub mod payment_processing;
pub mod product;
pub mod purchase;
pub mod reservations;
pub mod values;

use serde::{Deserialize, Serialize};

pub use cart::{Cart, CartCommand, CartError, CartEvent};
pub use delivery::{Delivery, DeliveryCommand, DeliveryError, DeliveryEvent};
pub use invoice::{Invoice, InvoiceCommand, InvoiceError, InvoiceEvent};
pub use notification::{Notification, NotificationCommand, NotificationEvent};
pub use order::{Order, OrderCommand, OrderError, OrderEvent};
pub use payment::{ChargeOutcome, Payment, PaymentCommand, PaymentError, PaymentEvent};
pub use payment_processing::{PaymentProcessEvent, PaymentProcessing};
pub use product::{Product, ProductCommand, ProductError, ProductEvent};
pub use purchase::{Purchase, PurchaseEvent};
pub use reservations::{ReservationEvent, ReservationKeeper};
pub use values::{
    Address, CardNumber, CartId, CustomerId, DeliveryId, HoldId, InvalidValue, InvoiceId, Money,
    NotificationId, OrderId, PaymentId, PaymentMethod, ProductId, Quantity,
};

/// A command a shop saga sends: to which aggregate, or to the payment provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShopCommand {
    /// To a product.
    Product {
        /// Which.
        id: ProductId,
        /// What.
        command: ProductCommand,
    },
    /// To a cart.
    Cart {
        /// Which.
        id: CartId,
        /// What.
        command: CartCommand,
    },
    /// To an order.
    Order {
        /// Which.
        id: OrderId,
        /// What.
        command: OrderCommand,
    },
    /// To an invoice.
    Invoice {
        /// Which.
        id: InvoiceId,
        /// What.
        command: InvoiceCommand,
    },
    /// To a delivery.
    Delivery {
        /// Which.
        id: DeliveryId,
        /// What.
        command: DeliveryCommand,
    },
    /// To a payment.
    Payment {
        /// Which.
        id: PaymentId,
        /// What.
        command: PaymentCommand,
    },
    /// To a notification.
    Notify {
        /// Which.
        id: NotificationId,
        /// What.
        command: NotificationCommand,
    },
    /// Charges the card through the payment provider (the payment id is the idempotency key),
    /// then records the answer on the payment.
    Charge {
        /// The payment.
        payment: PaymentId,
        /// How much.
        amount: Money,
        /// The provider's token for the card.
        token: String,
    },
}

impl ShopCommand {
    /// The name of the command inside.
    pub fn name(&self) -> &'static str {
        use crate::domain::Command;
        match self {
            Self::Product { command, .. } => command.name(),
            Self::Cart { command, .. } => command.name(),
            Self::Order { command, .. } => command.name(),
            Self::Invoice { command, .. } => command.name(),
            Self::Delivery { command, .. } => command.name(),
            Self::Payment { command, .. } => command.name(),
            Self::Notify { command, .. } => command.name(),
            Self::Charge { .. } => "ChargeCard",
        }
    }
}

/// A product of the seed catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedProduct {
    /// Its id.
    pub id: &'static str,
    /// Its name.
    pub name: &'static str,
    /// Its description.
    pub description: &'static str,
    /// Its price in cents.
    pub price_cents: u64,
    /// Its stock.
    pub stock: u32,
}

/// The catalog a fresh store starts with: the seed's three plants, 10 EUR and 10 in stock
/// each.
pub const SEED_CATALOG: [SeedProduct; 3] = [
    SeedProduct {
        id: "nephrolepis",
        name: "Nephrolepis",
        description: "The Boston fern: arching fronds of soft green, happy in indirect light \
                      and moist soil, and one of the best plants for cleaning the air.",
        price_cents: 1000,
        stock: 10,
    },
    SeedProduct {
        id: "monstera",
        name: "Monstera",
        description: "Monstera deliciosa, the Swiss cheese plant: large glossy leaves that \
                      split and fenestrate as it grows. Easy going, likes bright indirect light.",
        price_cents: 1000,
        stock: 10,
    },
    SeedProduct {
        id: "white-gardenia",
        name: "White Gardenia",
        description: "Gardenia jasminoides: dark evergreen leaves and creamy white flowers with \
                      a rich, sweet scent. Wants bright light, humidity and acid soil.",
        price_cents: 1000,
        stock: 10,
    },
];
