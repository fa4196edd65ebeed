//! A product on the shelf and its stock: created, restocked, reserved for carts (one hold per
//! AddItem), released, sold and returned. The one place that decides whether stock exists, so
//! stock is never oversold: every reservation is decided here, one at a time, against the
//! product's own count.
//!
//! Conservation: `received = available + reserved + sold` after every event, where `received`
//! is the initial stock plus every restock, and a return moves items from sold back to
//! available.
//!
//! Must not touch: any runtime, store or clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::values::{CartId, HoldId, Money, OrderId, Quantity};
use crate::domain::{Aggregate, Command};

/// The most one restock or initial stock may add.
pub const MAX_RESTOCK: u32 = 1_000_000;

/// What can be asked of a product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductCommand {
    /// Puts a new product on the shelf.
    Create {
        /// Its display name.
        name: String,
        /// Its description.
        description: String,
        /// Its unit price.
        price: Money,
        /// Items on the shelf at the start.
        stock: u32,
    },
    /// Adds items to the shelf.
    Restock {
        /// How many (1 to [`MAX_RESTOCK`]).
        quantity: u32,
    },
    /// Reserves items for a cart under a new hold.
    Reserve {
        /// The hold (derived from the AddItem command, so a retry does not reserve twice).
        hold: HoldId,
        /// The cart the items are held for.
        cart: CartId,
        /// How many.
        quantity: Quantity,
        /// How long an idle cart keeps its holds (recorded for the reservation keeper).
        hold_seconds: u64,
    },
    /// Shrinks a hold to at most `keep` items, putting the rest back on the shelf. Absolute, not
    /// a delta, so sending it twice, late or out of order releases nothing twice.
    Release {
        /// The hold.
        hold: HoldId,
        /// How many items the hold keeps (0: release it all).
        keep: u32,
    },
    /// Sells up to `quantity` items of a hold to an order; what the hold has beyond that goes
    /// back on the shelf.
    Sell {
        /// The hold.
        hold: HoldId,
        /// The order that bought the items.
        order: OrderId,
        /// How many items the order bought from this hold.
        quantity: u32,
    },
    /// Takes sold items back onto the shelf.
    Return {
        /// The order they were sold to.
        order: OrderId,
        /// How many.
        quantity: Quantity,
    },
}

impl Command for ProductCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "CreateProduct",
            Self::Restock { .. } => "Restock",
            Self::Reserve { .. } => "ReserveStock",
            Self::Release { .. } => "ReleaseStock",
            Self::Sell { .. } => "SellStock",
            Self::Return { .. } => "ReturnStock",
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Self::Create {
                name,
                description,
                stock,
                ..
            } => {
                if name.trim().is_empty() || name.chars().count() > 100 {
                    return Err("name: must be 1 to 100 characters".into());
                }
                if description.chars().count() > 2_000 {
                    return Err("description: must be at most 2000 characters".into());
                }
                if *stock > MAX_RESTOCK {
                    return Err(format!("stock: must be at most {MAX_RESTOCK}"));
                }
                Ok(())
            }
            Self::Restock { quantity } if *quantity == 0 || *quantity > MAX_RESTOCK => {
                Err(format!("quantity: must be from 1 to {MAX_RESTOCK}"))
            }
            _ => Ok(()),
        }
    }
}

/// A product was put on the shelf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductCreated {
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Unit price.
    pub price: Money,
    /// Items on the shelf at the start.
    pub stock: u32,
}

/// Items were added to the shelf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRestocked {
    /// How many.
    pub quantity: u32,
}

/// Items were taken off the shelf and held for a cart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    /// The hold.
    pub hold: HoldId,
    /// The cart.
    pub cart: CartId,
    /// How many.
    pub quantity: u32,
    /// How long an idle cart keeps its holds.
    pub hold_seconds: u64,
}

/// Items of a hold went back on the shelf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    /// The hold.
    pub hold: HoldId,
    /// The cart it was for.
    pub cart: CartId,
    /// How many items went back.
    pub quantity: u32,
}

/// Items of a hold were sold to an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockSold {
    /// The hold.
    pub hold: HoldId,
    /// The cart it was for.
    pub cart: CartId,
    /// The order that bought them.
    pub order: OrderId,
    /// How many.
    pub quantity: u32,
}

/// Sold items came back onto the shelf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReturned {
    /// The order they were sold to.
    pub order: OrderId,
    /// How many.
    pub quantity: u32,
}

crate::event_set! {
    /// What happens to a product's stock.
    pub enum ProductEvent {
        ProductCreated,
        StockRestocked,
        StockReserved,
        StockReleased,
        StockSold,
        StockReturned,
    }
}

/// Why a product refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    /// No such product (a 422 `unknown_product` for AddItem, a 404 elsewhere).
    #[error("no such product")]
    UnknownProduct,
    /// The product id is taken (a 409).
    #[error("the product already exists")]
    AlreadyExists,
    /// Not enough items on the shelf (a 422 `insufficient_stock`); `available` is what there is.
    #[error("only {available} left on the shelf")]
    InsufficientStock {
        /// Items on the shelf now.
        available: u32,
    },
    /// The hold does not exist or was released: nothing to sell.
    #[error("no such hold")]
    UnknownHold,
    /// More items returned than were ever sold.
    #[error("only {sold} were sold")]
    ReturnExceedsSold {
        /// Items sold so far.
        sold: u32,
    },
    /// The restock would overflow the shelf.
    #[error("the shelf cannot hold that many")]
    TooMuchStock,
}

/// One reservation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The cart it is for.
    pub cart: Option<CartId>,
    /// Items held.
    pub quantity: u32,
}

/// A product's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Whether it was created.
    pub exists: bool,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Unit price.
    pub price: Money,
    /// Items on the shelf (not held, not sold).
    pub available: u32,
    /// Items held for carts (the sum of `holds`).
    pub reserved: u32,
    /// Items sold (net of returns).
    pub sold: u32,
    /// Items ever received: the initial stock plus restocks.
    pub received: u64,
    /// Open holds.
    pub holds: BTreeMap<HoldId, Hold>,
}

impl Product {
    /// Whether `received = available + reserved + sold` holds.
    pub fn conserves_stock(&self) -> bool {
        let held: u64 = self.holds.values().map(|h| u64::from(h.quantity)).sum();
        held == u64::from(self.reserved)
            && self.received
                == u64::from(self.available) + u64::from(self.reserved) + u64::from(self.sold)
    }

    fn hold(&self, hold: &HoldId) -> Option<(&CartId, u32)> {
        self.holds
            .get(hold)
            .and_then(|h| h.cart.as_ref().map(|c| (c, h.quantity)))
    }
}

impl Aggregate for Product {
    const TYPE: &'static str = "Product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    fn decide(&self, command: &ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        if let ProductCommand::Create {
            name,
            description,
            price,
            stock,
        } = command
        {
            if self.exists {
                return Err(ProductError::AlreadyExists);
            }
            return Ok(vec![
                ProductCreated {
                    name: name.trim().to_owned(),
                    description: description.trim().to_owned(),
                    price: *price,
                    stock: *stock,
                }
                .into(),
            ]);
        }
        if !self.exists {
            return Err(ProductError::UnknownProduct);
        }
        match command {
            ProductCommand::Create { .. } => Err(ProductError::AlreadyExists),
            ProductCommand::Restock { quantity } => {
                if self.available.checked_add(*quantity).is_none()
                    || self.received.saturating_add(u64::from(*quantity)) > u64::from(u32::MAX)
                {
                    return Err(ProductError::TooMuchStock);
                }
                Ok(vec![
                    StockRestocked {
                        quantity: *quantity,
                    }
                    .into(),
                ])
            }
            ProductCommand::Reserve {
                hold,
                cart,
                quantity,
                hold_seconds,
            } => {
                if self.holds.contains_key(hold) {
                    return Ok(Vec::new()); // reserved already, by this same AddItem
                }
                if quantity.get() > self.available {
                    return Err(ProductError::InsufficientStock {
                        available: self.available,
                    });
                }
                Ok(vec![
                    StockReserved {
                        hold: hold.clone(),
                        cart: cart.clone(),
                        quantity: quantity.get(),
                        hold_seconds: *hold_seconds,
                    }
                    .into(),
                ])
            }
            ProductCommand::Release { hold, keep } => match self.hold(hold) {
                Some((cart, held)) if held > *keep => Ok(vec![
                    StockReleased {
                        hold: hold.clone(),
                        cart: cart.clone(),
                        quantity: held - keep,
                    }
                    .into(),
                ]),
                _ => Ok(Vec::new()),
            },
            ProductCommand::Sell {
                hold,
                order,
                quantity,
            } => {
                let Some((cart, held)) = self.hold(hold) else {
                    return Err(ProductError::UnknownHold);
                };
                let sold = held.min(*quantity);
                let mut events = Vec::new();
                if sold > 0 {
                    events.push(
                        StockSold {
                            hold: hold.clone(),
                            cart: cart.clone(),
                            order: order.clone(),
                            quantity: sold,
                        }
                        .into(),
                    );
                }
                if held > sold {
                    events.push(
                        StockReleased {
                            hold: hold.clone(),
                            cart: cart.clone(),
                            quantity: held - sold,
                        }
                        .into(),
                    );
                }
                Ok(events)
            }
            ProductCommand::Return { order, quantity } => {
                if quantity.get() > self.sold {
                    return Err(ProductError::ReturnExceedsSold { sold: self.sold });
                }
                Ok(vec![
                    StockReturned {
                        order: order.clone(),
                        quantity: quantity.get(),
                    }
                    .into(),
                ])
            }
        }
    }

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::ProductCreated(e) => {
                self.exists = true;
                self.name.clone_from(&e.name);
                self.description.clone_from(&e.description);
                self.price = e.price;
                self.available = e.stock;
                self.received = u64::from(e.stock);
            }
            ProductEvent::StockRestocked(e) => {
                self.available = self.available.saturating_add(e.quantity);
                self.received += u64::from(e.quantity);
            }
            ProductEvent::StockReserved(e) => {
                self.available = self.available.saturating_sub(e.quantity);
                self.reserved += e.quantity;
                self.holds.insert(
                    e.hold.clone(),
                    Hold {
                        cart: Some(e.cart.clone()),
                        quantity: e.quantity,
                    },
                );
            }
            ProductEvent::StockReleased(e) => {
                self.take_from_hold(&e.hold, e.quantity);
                self.available += e.quantity;
            }
            ProductEvent::StockSold(e) => {
                self.take_from_hold(&e.hold, e.quantity);
                self.sold += e.quantity;
            }
            ProductEvent::StockReturned(e) => {
                self.sold = self.sold.saturating_sub(e.quantity);
                self.available += e.quantity;
            }
        }
    }
}

impl Product {
    fn take_from_hold(&mut self, hold: &HoldId, quantity: u32) {
        self.reserved = self.reserved.saturating_sub(quantity);
        if let Some(h) = self.holds.get_mut(hold) {
            h.quantity = h.quantity.saturating_sub(quantity);
            if h.quantity == 0 {
                self.holds.remove(hold);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testkit::AggregateFixture;

    fn id<T: TryFrom<String>>(raw: &str) -> T {
        T::try_from(raw.to_owned()).unwrap_or_else(|_| unreachable!("test ids are valid"))
    }

    fn created(stock: u32) -> ProductEvent {
        ProductCreated {
            name: "Monstera".into(),
            description: "Big leaves".into(),
            price: Money::from_cents(1000),
            stock,
        }
        .into()
    }

    fn reserve(hold: &str, cart: &str, quantity: u32) -> ProductCommand {
        ProductCommand::Reserve {
            hold: id(hold),
            cart: id(cart),
            quantity: Quantity::parse(i64::from(quantity)).unwrap_or_else(|_| unreachable!()),
            hold_seconds: 60,
        }
    }

    fn reserved(hold: &str, cart: &str, quantity: u32) -> ProductEvent {
        StockReserved {
            hold: id(hold),
            cart: id(cart),
            quantity,
            hold_seconds: 60,
        }
        .into()
    }

    #[test]
    fn reserving_more_than_the_shelf_holds_says_what_is_available() {
        AggregateFixture::<Product>::given([created(10), reserved("h1", "c1", 8)])
            .when(reserve("h2", "c2", 3))
            .expect_error(ProductError::InsufficientStock { available: 2 });
    }

    #[test]
    fn reserving_under_a_known_hold_reserves_nothing_twice() {
        AggregateFixture::<Product>::given([created(10), reserved("h1", "c1", 2)])
            .when(reserve("h1", "c1", 2))
            .expect_no_events();
    }

    #[test]
    fn a_release_keeps_what_it_is_told_and_repeating_it_changes_nothing() {
        let product = AggregateFixture::<Product>::given([created(10), reserved("h1", "c1", 5)])
            .when(ProductCommand::Release {
                hold: id("h1"),
                keep: 2,
            })
            .expect_events([StockReleased {
                hold: id("h1"),
                cart: id("c1"),
                quantity: 3,
            }
            .into()]);
        assert_eq!((product.available, product.reserved), (8, 2));
        AggregateFixture::<Product>::given([
            created(10),
            reserved("h1", "c1", 5),
            StockReleased {
                hold: id("h1"),
                cart: id("c1"),
                quantity: 3,
            }
            .into(),
        ])
        .when(ProductCommand::Release {
            hold: id("h1"),
            keep: 2,
        })
        .expect_no_events();
    }

    #[test]
    fn selling_a_hold_sells_what_the_order_bought_and_shelves_the_rest() {
        let product = AggregateFixture::<Product>::given([created(10), reserved("h1", "c1", 3)])
            .when(ProductCommand::Sell {
                hold: id("h1"),
                order: id("o1"),
                quantity: 2,
            })
            .expect_events([
                StockSold {
                    hold: id("h1"),
                    cart: id("c1"),
                    order: id("o1"),
                    quantity: 2,
                }
                .into(),
                StockReleased {
                    hold: id("h1"),
                    cart: id("c1"),
                    quantity: 1,
                }
                .into(),
            ]);
        assert_eq!(
            (product.available, product.reserved, product.sold),
            (8, 0, 2)
        );
        assert!(product.conserves_stock());
    }

    #[test]
    fn an_unknown_product_refuses_everything_but_creation() {
        AggregateFixture::<Product>::given([])
            .when(ProductCommand::Restock { quantity: 1 })
            .expect_error(ProductError::UnknownProduct);
        AggregateFixture::<Product>::given([created(1)])
            .when(ProductCommand::Create {
                name: "x".into(),
                description: String::new(),
                price: Money::from_cents(1),
                stock: 1,
            })
            .expect_error(ProductError::AlreadyExists);
    }

    #[test]
    fn returns_cannot_exceed_sales() {
        AggregateFixture::<Product>::given([created(10)])
            .when(ProductCommand::Return {
                order: id("o1"),
                quantity: Quantity::parse(1).unwrap_or_else(|_| unreachable!()),
            })
            .expect_error(ProductError::ReturnExceedsSold { sold: 0 });
    }

    #[derive(Clone, Debug)]
    enum Op {
        Reserve(u8, u32),
        Release(u8, u32),
        Sell(u8, u32),
        Restock(u32),
        Return(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, 1u32..=20).prop_map(|(h, q)| Op::Reserve(h, q)),
            2 => (0u8..6, 0u32..=20).prop_map(|(h, q)| Op::Release(h, q)),
            2 => (0u8..6, 0u32..=20).prop_map(|(h, q)| Op::Sell(h, q)),
            1 => (1u32..=15).prop_map(Op::Restock),
            1 => (1u32..=15).prop_map(Op::Return),
        ]
    }

    proptest! {
        /// Any interleaving of reservations, releases, sales, restocks and returns, each decided
        /// against the state the ones before it left: the shelf never goes negative, no hold
        /// is sold beyond what it holds, and stock is conserved after every event.
        #[test]
        fn stock_is_never_oversold_and_always_conserved(initial in 0u32..30, ops in proptest::collection::vec(op(), 1..80)) {
            let mut product = Product::default();
            product.apply_all(&[created(initial)]);
            let mut granted: u64 = 0;
            for op in ops {
                let command = match op {
                    Op::Reserve(h, q) => reserve(&format!("h{h}"), "c", q.min(99)),
                    Op::Release(h, keep) => ProductCommand::Release { hold: id(&format!("h{h}")), keep },
                    Op::Sell(h, q) => ProductCommand::Sell { hold: id(&format!("h{h}")), order: id("o"), quantity: q },
                    Op::Restock(q) => ProductCommand::Restock { quantity: q },
                    Op::Return(q) => ProductCommand::Return { order: id("o"), quantity: Quantity::parse(i64::from(q)).unwrap_or_else(|_| unreachable!()) },
                };
                let before = product.clone();
                if let Ok(events) = product.decide(&command) {
                    for event in &events {
                        if let ProductEvent::StockReserved(e) = event {
                            prop_assert!(e.quantity <= before.available, "reserved {} with {} on the shelf", e.quantity, before.available);
                            granted += u64::from(e.quantity);
                        }
                        product.apply(event);
                        prop_assert!(product.conserves_stock(), "after {event:?}: {product:?}");
                    }
                }
            }
            prop_assert!(u64::from(product.reserved) + u64::from(product.sold) <= product.received);
            prop_assert!(granted >= u64::from(product.reserved));
        }
    }
}
