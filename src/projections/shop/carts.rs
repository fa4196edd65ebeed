//! The cart views: each cart's lines with their totals, and each customer's carts. Keys:
//! `c:<cart id>` (the view) and `u:<customer>:<cart id>` (the customer's index).

use serde::{Deserialize, Serialize};

use super::decode;
use crate::domain::Aggregate;
use crate::domain::shop::cart::HoldRelease;
use crate::domain::shop::values::CURRENCY;
use crate::domain::shop::{Cart, CartEvent};
use crate::projections::{ApplyContext, Documents, Projection};
use crate::store::{Codec, RecordedEvent};

/// One line of a cart view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLineView {
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
    /// The holds backing the line, with their items (not shown to customers).
    #[serde(default)]
    pub holds: Vec<(String, u32)>,
}

/// A cart as its owner sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartView {
    /// The cart.
    pub cart_id: String,
    /// Its owner.
    pub owner: String,
    /// `open` or `checked_out`.
    pub status: String,
    /// Its lines, by product id.
    pub lines: Vec<CartLineView>,
    /// The sum of the line totals.
    pub total_cents: u64,
    /// Always `EUR`.
    pub currency: String,
    /// The order it became.
    pub order_id: Option<String>,
    /// The cart's version (its last event's sequence number).
    pub version: u64,
    /// The global position of its last event.
    pub position: u64,
}

impl CartView {
    fn total(&mut self) {
        for line in &mut self.lines {
            line.quantity = line.holds.iter().map(|(_, q)| q).sum();
            line.line_total_cents = line.unit_price_cents * u64::from(line.quantity);
        }
        self.lines.retain(|line| line.quantity > 0);
        self.total_cents = self.lines.iter().map(|l| l.line_total_cents).sum();
    }

    fn shrink(&mut self, releases: &[HoldRelease]) {
        for release in releases {
            if let Some(line) = self
                .lines
                .iter_mut()
                .find(|l| l.product_id == release.product.as_str())
            {
                for (hold, held) in &mut line.holds {
                    if hold == release.hold.as_str() {
                        *held = (*held).min(release.keep);
                    }
                }
                line.holds.retain(|(_, held)| *held > 0);
            }
        }
    }
}

/// The carts read model.
pub struct CartsProjection {
    codec: Codec,
}

impl CartsProjection {
    /// The projection's name.
    pub const NAME: &'static str = "carts";

    /// The cart views, decoding with `codec`.
    pub fn new(codec: Codec) -> Self {
        Self { codec }
    }

    /// The key of a cart's view.
    pub fn key(cart: &str) -> String {
        format!("c:{cart}")
    }

    /// The key of a customer's index entry for a cart.
    pub fn owner_key(customer: &str, cart: &str) -> String {
        format!("u:{customer}:{cart}")
    }

    /// The prefix of a customer's index.
    pub fn owner_prefix(customer: &str) -> String {
        format!("u:{customer}:")
    }
}

impl Projection for CartsProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, event: &RecordedEvent) -> Vec<String> {
        if event.stream.aggregate_type == Cart::TYPE {
            vec![Self::key(&event.stream.aggregate_id)]
        } else {
            Vec::new()
        }
    }

    fn apply(
        &self,
        record: &RecordedEvent,
        documents: &mut Documents,
        _: ApplyContext,
    ) -> Result<(), String> {
        let Some(event) = decode::<CartEvent>(&self.codec, record, Cart::TYPE)? else {
            return Ok(());
        };
        let cart = &record.stream.aggregate_id;
        let key = Self::key(cart);
        let mut view = match (&event, documents.get_as::<CartView>(&key)?) {
            (CartEvent::CartCreated(e), _) => {
                documents.put(
                    Self::owner_key(e.owner.as_str(), cart),
                    &serde_json::json!({ "cart_id": cart }),
                )?;
                CartView {
                    cart_id: cart.clone(),
                    owner: e.owner.to_string(),
                    status: "open".into(),
                    lines: Vec::new(),
                    total_cents: 0,
                    currency: CURRENCY.into(),
                    order_id: None,
                    version: 0,
                    position: 0,
                }
            }
            (_, Some(view)) => view,
            (_, None) => return Err(format!("{} before the cart was created", record.event_type)),
        };
        match &event {
            CartEvent::CartCreated(_) => {}
            CartEvent::ItemAdded(e) => {
                match view
                    .lines
                    .iter_mut()
                    .find(|l| l.product_id == e.product.as_str())
                {
                    Some(line) => line.holds.push((e.hold.to_string(), e.quantity)),
                    None => {
                        view.lines.push(CartLineView {
                            product_id: e.product.to_string(),
                            name: e.name.clone(),
                            quantity: 0,
                            unit_price_cents: e.unit_price.cents(),
                            line_total_cents: 0,
                            holds: vec![(e.hold.to_string(), e.quantity)],
                        });
                        view.lines.sort_by(|a, b| a.product_id.cmp(&b.product_id));
                    }
                }
            }
            CartEvent::ItemRemoved(e) => view.shrink(&e.releases),
            CartEvent::CartEmptied(e) => view.shrink(&e.releases),
            CartEvent::CartExpired(e) => view.shrink(&e.releases),
            CartEvent::CartCheckedOut(e) => {
                view.status = "checked_out".into();
                view.order_id = Some(e.order.to_string());
            }
        }
        view.total();
        view.version = record.sequence;
        view.position = record.position;
        documents.put(key, &view)
    }
}
