//! A shopping cart: one customer's lines, each backed by holds of stock the products reserved,
//! then checked out into an order. The cart never decides stock (the product does); it records
//! which holds back its lines so that removing, emptying, expiring and checking out say exactly
//! which holds to release or sell.
//!
//! Must not touch: any runtime, store or clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::values::{
    Address, CustomerId, HoldId, MAX_QUANTITY, Money, OrderId, PaymentMethod, ProductId, Quantity,
};
use crate::domain::{Aggregate, Command};

/// The most lines (distinct products) one cart may hold.
pub const MAX_LINES: usize = 20;

/// What can be asked of a cart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CartCommand {
    /// Opens the cart for its owner.
    Create {
        /// The customer it belongs to.
        owner: CustomerId,
        /// How long the cart may sit idle before its holds expire.
        hold_seconds: u64,
    },
    /// Adds items the product already reserved under `hold`.
    AddItem {
        /// Who asks.
        customer: CustomerId,
        /// The product.
        product: ProductId,
        /// Its name, as the product said when it reserved.
        name: String,
        /// Its unit price, as the product said.
        unit_price: Money,
        /// How many.
        quantity: Quantity,
        /// The hold that backs them.
        hold: HoldId,
    },
    /// Removes some (or, with `None`, all) of a line.
    RemoveItem {
        /// Who asks.
        customer: CustomerId,
        /// The product.
        product: ProductId,
        /// How many (`None`: the whole line).
        quantity: Option<Quantity>,
    },
    /// Removes every line.
    Empty {
        /// Who asks.
        customer: CustomerId,
    },
    /// Turns the cart into an order.
    Checkout {
        /// Who asks.
        customer: CustomerId,
        /// The order's id.
        order: OrderId,
        /// Where to deliver.
        address: Address,
        /// How to pay.
        payment: PaymentMethod,
        /// How long the payment may take before the purchase is compensated.
        payment_timeout_seconds: u64,
    },
    /// Lets the listed holds lapse (the cart sat idle): their lines go. Sent by the reservation
    /// keeper; holds the cart no longer has are ignored.
    Expire {
        /// The holds that lapse.
        holds: Vec<HoldId>,
    },
}

impl Command for CartCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "CreateCart",
            Self::AddItem { .. } => "AddItem",
            Self::RemoveItem { .. } => "RemoveItem",
            Self::Empty { .. } => "EmptyCart",
            Self::Checkout { .. } => "Checkout",
            Self::Expire { .. } => "ExpireCart",
        }
    }
}

/// The cart was opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartCreated {
    /// Its owner.
    pub owner: CustomerId,
    /// How long it may sit idle before its holds expire.
    pub hold_seconds: u64,
}

/// Items were added (their stock is held).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemAdded {
    /// The product.
    pub product: ProductId,
    /// Its name.
    pub name: String,
    /// Its unit price.
    pub unit_price: Money,
    /// How many.
    pub quantity: u32,
    /// The hold that backs them.
    pub hold: HoldId,
}

/// What a hold should shrink to now that the cart holds less.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRelease {
    /// The product.
    pub product: ProductId,
    /// The hold.
    pub hold: HoldId,
    /// Items the hold keeps.
    pub keep: u32,
}

/// Items were removed from a line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRemoved {
    /// The product.
    pub product: ProductId,
    /// How many.
    pub quantity: u32,
    /// The holds to shrink.
    pub releases: Vec<HoldRelease>,
}

/// Every line was removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartEmptied {
    /// The holds to release.
    pub releases: Vec<HoldRelease>,
}

/// A line of an order, with the holds that back it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product.
    pub product: ProductId,
    /// Its name.
    pub name: String,
    /// How many.
    pub quantity: u32,
    /// Unit price.
    pub unit_price: Money,
    /// The holds and how many items of each the order takes.
    pub holds: Vec<(HoldId, u32)>,
}

impl OrderLine {
    /// `quantity × unit_price`.
    pub fn total(&self) -> Money {
        self.unit_price.times(self.quantity)
    }
}

/// The cart became an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartCheckedOut {
    /// The order.
    pub order: OrderId,
    /// Its customer.
    pub customer: CustomerId,
    /// Its lines.
    pub lines: Vec<OrderLine>,
    /// Their total.
    pub total: Money,
    /// Where to deliver.
    pub address: Address,
    /// How to pay.
    pub payment: PaymentMethod,
    /// How long the payment may take.
    pub payment_timeout_seconds: u64,
}

/// Holds lapsed because the cart sat idle; their lines went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartExpired {
    /// The holds to release.
    pub releases: Vec<HoldRelease>,
}

crate::event_set! {
    /// What happens to a cart.
    pub enum CartEvent {
        CartCreated,
        ItemAdded,
        ItemRemoved,
        CartEmptied,
        CartCheckedOut,
        CartExpired,
    }
}

/// Why a cart refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    /// No such cart, or it is another customer's (a 404: never say which).
    #[error("no such cart")]
    NotFound,
    /// The cart id is taken.
    #[error("the cart already exists")]
    AlreadyExists,
    /// The cart was checked out already (a 409 `already_checked_out`).
    #[error("the cart is already checked out")]
    AlreadyCheckedOut,
    /// The product is not in the cart, or not that many of it (a 422 `not_in_cart`).
    #[error("only {in_cart} of {product} in the cart")]
    NotInCart {
        /// The product.
        product: ProductId,
        /// How many of it the cart holds.
        in_cart: u32,
    },
    /// Nothing to check out (a 422 `empty_cart`).
    #[error("the cart is empty")]
    EmptyCart,
    /// The cart holds the most distinct products it may (a 422 `cart_full`).
    #[error("a cart holds at most {max} different products")]
    TooManyLines {
        /// The cap.
        max: usize,
    },
    /// The line would hold more than the cap (a 422 `quantity_too_large`).
    #[error("a line holds at most {max} items; it has {in_cart}")]
    TooManyItems {
        /// The cap.
        max: u32,
        /// Items in the line now.
        in_cart: u32,
    },
}

/// One line of the cart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The product's name.
    pub name: String,
    /// Its unit price.
    pub unit_price: Money,
    /// The holds backing the line, oldest first, with the items each backs.
    pub holds: Vec<(HoldId, u32)>,
}

impl Line {
    /// Items in the line.
    pub fn quantity(&self) -> u32 {
        self.holds.iter().map(|(_, q)| q).sum()
    }
}

/// Where a cart is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CartStatus {
    /// Not created.
    #[default]
    New,
    /// Taking items.
    Open,
    /// Turned into an order.
    CheckedOut,
}

/// A cart's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    /// Where it is in its life.
    pub status: CartStatus,
    /// Its owner.
    pub owner: Option<CustomerId>,
    /// Its lines by product.
    pub lines: BTreeMap<ProductId, Line>,
    /// The order it became.
    pub order: Option<OrderId>,
}

impl Cart {
    /// Checks that `customer` may change this cart, and that it is still open.
    pub fn check_open_for(&self, customer: &CustomerId) -> Result<(), CartError> {
        if self.status == CartStatus::New || self.owner.as_ref() != Some(customer) {
            return Err(CartError::NotFound);
        }
        if self.status == CartStatus::CheckedOut {
            return Err(CartError::AlreadyCheckedOut);
        }
        Ok(())
    }

    /// Checks that `quantity` more of `product` fits the cart's caps.
    pub fn check_room(&self, product: &ProductId, quantity: Quantity) -> Result<(), CartError> {
        match self.lines.get(product) {
            None if self.lines.len() >= MAX_LINES => {
                Err(CartError::TooManyLines { max: MAX_LINES })
            }
            Some(line) if line.quantity() + quantity.get() > MAX_QUANTITY => {
                Err(CartError::TooManyItems {
                    max: MAX_QUANTITY,
                    in_cart: line.quantity(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The cart's total.
    pub fn total(&self) -> Money {
        self.lines.values().fold(Money::ZERO, |sum, l| {
            sum.plus(l.unit_price.times(l.quantity()))
        })
    }

    fn all_releases(&self) -> Vec<HoldRelease> {
        self.lines
            .iter()
            .flat_map(|(product, line)| {
                line.holds.iter().map(|(hold, _)| HoldRelease {
                    product: product.clone(),
                    hold: hold.clone(),
                    keep: 0,
                })
            })
            .collect()
    }
}

impl Aggregate for Cart {
    const TYPE: &'static str = "Cart";
    type Command = CartCommand;
    type Event = CartEvent;
    type Error = CartError;

    fn decide(&self, command: &CartCommand) -> Result<Vec<CartEvent>, CartError> {
        match command {
            CartCommand::Create {
                owner,
                hold_seconds,
            } => {
                if self.status != CartStatus::New {
                    // The same owner opening it again is a repeat (two identical requests in
                    // one batch); anyone else is refused.
                    if self.owner.as_ref() == Some(owner) {
                        return Ok(Vec::new());
                    }
                    return Err(CartError::AlreadyExists);
                }
                Ok(vec![
                    CartCreated {
                        owner: owner.clone(),
                        hold_seconds: *hold_seconds,
                    }
                    .into(),
                ])
            }
            CartCommand::AddItem {
                customer,
                product,
                name,
                unit_price,
                quantity,
                hold,
            } => {
                self.check_open_for(customer)?;
                if self
                    .lines
                    .values()
                    .any(|line| line.holds.iter().any(|(h, _)| h == hold))
                {
                    return Ok(Vec::new()); // this hold is in the cart already
                }
                self.check_room(product, *quantity)?;
                Ok(vec![
                    ItemAdded {
                        product: product.clone(),
                        name: name.clone(),
                        unit_price: *unit_price,
                        quantity: quantity.get(),
                        hold: hold.clone(),
                    }
                    .into(),
                ])
            }
            CartCommand::RemoveItem {
                customer,
                product,
                quantity,
            } => {
                self.check_open_for(customer)?;
                let in_cart = self.lines.get(product).map_or(0, Line::quantity);
                let wanted = quantity.map_or(in_cart, Quantity::get);
                let Some(line) = self.lines.get(product).filter(|_| wanted <= in_cart) else {
                    return Err(CartError::NotInCart {
                        product: product.clone(),
                        in_cart,
                    });
                };
                // Newest holds go first: the oldest reservation is the last to be given up.
                let mut left = wanted;
                let mut releases = Vec::new();
                for (hold, held) in line.holds.iter().rev() {
                    if left == 0 {
                        break;
                    }
                    let taken = left.min(*held);
                    left -= taken;
                    releases.push(HoldRelease {
                        product: product.clone(),
                        hold: hold.clone(),
                        keep: held - taken,
                    });
                }
                Ok(vec![
                    ItemRemoved {
                        product: product.clone(),
                        quantity: wanted,
                        releases,
                    }
                    .into(),
                ])
            }
            CartCommand::Empty { customer } => {
                self.check_open_for(customer)?;
                if self.lines.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![
                    CartEmptied {
                        releases: self.all_releases(),
                    }
                    .into(),
                ])
            }
            CartCommand::Checkout {
                customer,
                order,
                address,
                payment,
                payment_timeout_seconds,
            } => {
                if self.status == CartStatus::CheckedOut && self.order.as_ref() == Some(order) {
                    return Ok(Vec::new()); // this same checkout, again
                }
                self.check_open_for(customer)?;
                if self.lines.is_empty() {
                    return Err(CartError::EmptyCart);
                }
                let lines = self
                    .lines
                    .iter()
                    .map(|(product, line)| OrderLine {
                        product: product.clone(),
                        name: line.name.clone(),
                        quantity: line.quantity(),
                        unit_price: line.unit_price,
                        holds: line.holds.clone(),
                    })
                    .collect();
                Ok(vec![
                    CartCheckedOut {
                        order: order.clone(),
                        customer: customer.clone(),
                        lines,
                        total: self.total(),
                        address: address.clone(),
                        payment: payment.clone(),
                        payment_timeout_seconds: *payment_timeout_seconds,
                    }
                    .into(),
                ])
            }
            CartCommand::Expire { holds } => {
                if self.status != CartStatus::Open {
                    return Ok(Vec::new());
                }
                let releases: Vec<HoldRelease> = self
                    .all_releases()
                    .into_iter()
                    .filter(|r| holds.contains(&r.hold))
                    .collect();
                if releases.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![CartExpired { releases }.into()])
            }
        }
    }

    fn apply(&mut self, event: &CartEvent) {
        match event {
            CartEvent::CartCreated(e) => {
                self.status = CartStatus::Open;
                self.owner = Some(e.owner.clone());
            }
            CartEvent::ItemAdded(e) => {
                self.lines
                    .entry(e.product.clone())
                    .or_insert_with(|| Line {
                        name: e.name.clone(),
                        unit_price: e.unit_price,
                        holds: Vec::new(),
                    })
                    .holds
                    .push((e.hold.clone(), e.quantity));
            }
            CartEvent::ItemRemoved(ItemRemoved { releases, .. })
            | CartEvent::CartEmptied(CartEmptied { releases })
            | CartEvent::CartExpired(CartExpired { releases }) => {
                for release in releases {
                    self.shrink(release);
                }
            }
            CartEvent::CartCheckedOut(e) => {
                self.status = CartStatus::CheckedOut;
                self.order = Some(e.order.clone());
            }
        }
    }
}

impl Cart {
    fn shrink(&mut self, release: &HoldRelease) {
        let Some(line) = self.lines.get_mut(&release.product) else {
            return;
        };
        for (hold, held) in &mut line.holds {
            if *hold == release.hold {
                *held = (*held).min(release.keep);
            }
        }
        line.holds.retain(|(_, held)| *held > 0);
        if line.holds.is_empty() {
            self.lines.remove(&release.product);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::AggregateFixture;

    fn id<T: TryFrom<String>>(raw: &str) -> T {
        T::try_from(raw.to_owned()).unwrap_or_else(|_| unreachable!("test ids are valid"))
    }

    fn q(n: u32) -> Quantity {
        Quantity::parse(i64::from(n)).unwrap_or_else(|_| unreachable!())
    }

    fn created() -> CartEvent {
        CartCreated {
            owner: id("alice"),
            hold_seconds: 1800,
        }
        .into()
    }

    fn added(product: &str, hold: &str, quantity: u32) -> CartEvent {
        ItemAdded {
            product: id(product),
            name: product.to_uppercase(),
            unit_price: Money::from_cents(1000),
            quantity,
            hold: id(hold),
        }
        .into()
    }

    fn add(customer: &str, product: &str, hold: &str, quantity: u32) -> CartCommand {
        CartCommand::AddItem {
            customer: id(customer),
            product: id(product),
            name: product.to_uppercase(),
            unit_price: Money::from_cents(1000),
            quantity: q(quantity),
            hold: id(hold),
        }
    }

    fn checkout(order: &str) -> CartCommand {
        CartCommand::Checkout {
            customer: id("alice"),
            order: id(order),
            address: Address::parse("Ada", "1 Leaf Lane", "Kew", "TW9", "UK")
                .unwrap_or_else(|_| unreachable!()),
            payment: PaymentMethod {
                token: "tok".into(),
                last4: "4242".into(),
            },
            payment_timeout_seconds: 900,
        }
    }

    #[test]
    fn another_customers_cart_is_not_found() {
        AggregateFixture::<Cart>::given([created()])
            .when(add("bob", "monstera", "h1", 1))
            .expect_error(CartError::NotFound);
    }

    #[test]
    fn removing_part_of_a_line_shrinks_the_newest_hold_first() {
        let cart = AggregateFixture::<Cart>::given([
            created(),
            added("monstera", "h1", 2),
            added("monstera", "h2", 3),
        ])
        .when(CartCommand::RemoveItem {
            customer: id("alice"),
            product: id("monstera"),
            quantity: Some(q(4)),
        })
        .expect_events([ItemRemoved {
            product: id("monstera"),
            quantity: 4,
            releases: vec![
                HoldRelease {
                    product: id("monstera"),
                    hold: id("h2"),
                    keep: 0,
                },
                HoldRelease {
                    product: id("monstera"),
                    hold: id("h1"),
                    keep: 1,
                },
            ],
        }
        .into()]);
        assert_eq!(cart.lines[&id::<ProductId>("monstera")].quantity(), 1);
    }

    #[test]
    fn removing_what_is_not_in_the_cart_is_refused() {
        AggregateFixture::<Cart>::given([created(), added("monstera", "h1", 2)])
            .when(CartCommand::RemoveItem {
                customer: id("alice"),
                product: id("monstera"),
                quantity: Some(q(3)),
            })
            .expect_error(CartError::NotInCart {
                product: id("monstera"),
                in_cart: 2,
            });
        AggregateFixture::<Cart>::given([created()])
            .when(CartCommand::RemoveItem {
                customer: id("alice"),
                product: id("fern"),
                quantity: None,
            })
            .expect_error(CartError::NotInCart {
                product: id("fern"),
                in_cart: 0,
            });
    }

    #[test]
    fn an_empty_cart_cannot_be_checked_out() {
        AggregateFixture::<Cart>::given([created()])
            .when(checkout("o1"))
            .expect_error(CartError::EmptyCart);
    }

    #[test]
    fn a_second_checkout_is_refused_and_the_same_one_is_a_no_op() {
        let given = || {
            let mut events = vec![created(), added("monstera", "h1", 2)];
            let mut cart = Cart::default();
            cart.apply_all(&events);
            let decided = cart.decide(&checkout("o1")).unwrap_or_default();
            events.extend(decided);
            events
        };
        AggregateFixture::<Cart>::given(given())
            .when(checkout("o2"))
            .expect_error(CartError::AlreadyCheckedOut);
        AggregateFixture::<Cart>::given(given())
            .when(checkout("o1"))
            .expect_no_events();
    }

    #[test]
    fn checkout_lists_lines_with_their_holds_and_the_total() {
        let then = AggregateFixture::<Cart>::given([
            created(),
            added("monstera", "h1", 2),
            added("fern", "h2", 1),
        ])
        .when(checkout("o1"));
        let cart = then.expect_events_matching(|events| {
            let [CartEvent::CartCheckedOut(e)] = events else {
                return false;
            };
            e.total == Money::from_cents(3000)
                && e.lines.len() == 2
                && e.lines.iter().any(|l| l.holds == vec![(id("h1"), 2)])
        });
        assert_eq!(cart.status, CartStatus::CheckedOut);
    }

    #[test]
    fn the_line_and_quantity_caps_hold() {
        let mut events = vec![created()];
        for n in 0..MAX_LINES {
            events.push(added(&format!("p{n}"), &format!("h{n}"), 1));
        }
        AggregateFixture::<Cart>::given(events)
            .when(add("alice", "one-more", "hx", 1))
            .expect_error(CartError::TooManyLines { max: MAX_LINES });
        AggregateFixture::<Cart>::given([created(), added("monstera", "h1", 98)])
            .when(add("alice", "monstera", "h2", 2))
            .expect_error(CartError::TooManyItems {
                max: MAX_QUANTITY,
                in_cart: 98,
            });
    }

    #[test]
    fn expiring_lets_only_the_listed_holds_lapse() {
        let cart = AggregateFixture::<Cart>::given([
            created(),
            added("monstera", "h1", 2),
            added("fern", "h2", 1),
        ])
        .when(CartCommand::Expire {
            holds: vec![id("h1")],
        })
        .expect_events([CartExpired {
            releases: vec![HoldRelease {
                product: id("monstera"),
                hold: id("h1"),
                keep: 0,
            }],
        }
        .into()]);
        assert_eq!(cart.lines.len(), 1);
        assert_eq!(cart.status, CartStatus::Open);
    }
}
