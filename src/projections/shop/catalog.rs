//! The catalog: every product with its price and what is available (on the shelf, neither held
//! for a cart nor sold). Keys: `p:<product id>`.

use serde::{Deserialize, Serialize};

use super::decode;
use crate::domain::Aggregate;
use crate::domain::shop::values::CURRENCY;
use crate::domain::shop::{Product, ProductEvent};
use crate::projections::{ApplyContext, Documents, Projection};
use crate::store::{Codec, RecordedEvent};

/// One product as the catalog shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Unit price in cents.
    pub price_cents: u64,
    /// Always `EUR`.
    pub currency: String,
    /// Items on the shelf.
    pub available: u32,
    /// Items held for carts.
    pub reserved: u32,
    /// Items sold.
    pub sold: u32,
}

/// The catalog read model.
pub struct CatalogProjection {
    codec: Codec,
}

impl CatalogProjection {
    /// The projection's name.
    pub const NAME: &'static str = "catalog";

    /// The catalog, decoding with `codec`.
    pub fn new(codec: Codec) -> Self {
        Self { codec }
    }

    /// The key of a product's document.
    pub fn key(product: &str) -> String {
        format!("p:{product}")
    }
}

impl Projection for CatalogProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, event: &RecordedEvent) -> Vec<String> {
        if event.stream.aggregate_type == Product::TYPE {
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
        let Some(event) = decode::<ProductEvent>(&self.codec, record, Product::TYPE)? else {
            return Ok(());
        };
        let key = Self::key(&record.stream.aggregate_id);
        let mut view = match (&event, documents.get_as::<ProductView>(&key)?) {
            (ProductEvent::ProductCreated(e), _) => ProductView {
                id: record.stream.aggregate_id.clone(),
                name: e.name.clone(),
                description: e.description.clone(),
                price_cents: e.price.cents(),
                currency: CURRENCY.into(),
                available: 0,
                reserved: 0,
                sold: 0,
            },
            (_, Some(view)) => view,
            (_, None) => {
                return Err(format!(
                    "{} before the product was created",
                    record.event_type
                ));
            }
        };
        match event {
            ProductEvent::ProductCreated(e) => view.available = e.stock,
            ProductEvent::StockRestocked(e) => view.available += e.quantity,
            ProductEvent::StockReserved(e) => {
                view.available = view.available.saturating_sub(e.quantity);
                view.reserved += e.quantity;
            }
            ProductEvent::StockReleased(e) => {
                view.reserved = view.reserved.saturating_sub(e.quantity);
                view.available += e.quantity;
            }
            ProductEvent::StockSold(e) => {
                view.reserved = view.reserved.saturating_sub(e.quantity);
                view.sold += e.quantity;
            }
            ProductEvent::StockReturned(e) => {
                view.sold = view.sold.saturating_sub(e.quantity);
                view.available += e.quantity;
            }
        }
        documents.put(key, &view)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::shop::product::{ProductCreated, StockReleased, StockReserved, StockSold};
    use crate::domain::shop::{CartId, HoldId, Money, OrderId};
    use crate::testkit::ProjectionFixture;

    fn id<T: TryFrom<String>>(raw: &str) -> T {
        T::try_from(raw.to_owned()).unwrap_or_else(|_| unreachable!("test ids are valid"))
    }

    #[test]
    fn availability_follows_holds_releases_and_sales() -> Result<(), String> {
        let hold: HoldId = id("h1");
        let cart: CartId = id("c1");
        let events: Vec<ProductEvent> = vec![
            ProductCreated {
                name: "Monstera".into(),
                description: "Big leaves".into(),
                price: Money::from_cents(1000),
                stock: 10,
            }
            .into(),
            StockReserved {
                hold: hold.clone(),
                cart: cart.clone(),
                quantity: 3,
                hold_seconds: 60,
            }
            .into(),
            StockSold {
                hold: hold.clone(),
                cart: cart.clone(),
                order: id::<OrderId>("o1"),
                quantity: 2,
            }
            .into(),
            StockReleased {
                hold,
                cart,
                quantity: 1,
            }
            .into(),
        ];
        ProjectionFixture::new(CatalogProjection::new(Codec::default()))
            .given(Product::TYPE, "monstera", events)?
            .expect_document(
                "p:monstera",
                json!({
                    "id": "monstera", "name": "Monstera", "description": "Big leaves",
                    "price_cents": 1000, "currency": "EUR",
                    "available": 8, "reserved": 0, "sold": 2
                }),
            );
        Ok(())
    }
}
