//! The reservation keeper: a saga per cart that makes sure stock held for a cart goes back on
//! the shelf when nobody will use it. Three cases:
//!
//! - The cart sat idle for its hold time: the keeper tells the cart its holds lapsed
//!   (`Expire`), and when the cart records that, releases them.
//! - A hold the cart never recorded (the process died between the product reserving and the
//!   cart writing its line), or recorded smaller (it died between the cart removing items and
//!   the product releasing them): at the idle deadline, or after a checkout, the keeper shrinks
//!   the hold to what the cart holds.
//! - After a checkout the order owns the holds it lists; the purchase sells or releases them.
//!
//! Every release is absolute (`keep` items), never a delta, so a release the keeper sends and
//! one the shop sent itself cannot together release an item twice.
//!
//! Must not touch: any runtime, store or clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ShopCommand;
use super::cart::{CartCommand, CartEvent, HoldRelease};
use super::product::{ProductCommand, ProductEvent};
use super::values::{CartId, HoldId, ProductId};
use crate::domain::{Association, Routing, Saga, Step};

/// The deadline that fires when the cart has been idle for its hold time.
pub const IDLE_DEADLINE: &str = "idle";
/// The deadline that clears stray holds some time after a checkout.
pub const SWEEP_DEADLINE: &str = "sweep";

/// The events the keeper listens to: the cart's, and the products' holds for the cart.
#[derive(Clone, Debug, PartialEq)]
pub enum ReservationEvent {
    /// An event of the cart.
    Cart {
        /// The cart.
        cart: CartId,
        /// The event.
        event: CartEvent,
    },
    /// An event of a product.
    Product {
        /// The product.
        product: ProductId,
        /// The event.
        event: ProductEvent,
    },
}

/// One hold, as the keeper sees it from both sides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The product that holds the items.
    pub product: ProductId,
    /// Items the product holds.
    pub reserved: u32,
    /// Items the cart counts on.
    pub in_cart: u32,
}

/// The keeper of one cart's holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReservationKeeper {
    /// The cart.
    pub cart: Option<CartId>,
    /// How long the cart may sit idle.
    pub hold_seconds: u64,
    /// Whether the cart was checked out.
    pub checked_out: bool,
    /// The holds.
    pub holds: BTreeMap<HoldId, Kept>,
}

impl ReservationKeeper {
    fn kept(&mut self, hold: &HoldId, product: &ProductId) -> &mut Kept {
        self.holds.entry(hold.clone()).or_insert_with(|| Kept {
            product: product.clone(),
            reserved: 0,
            in_cart: 0,
        })
    }

    fn shrink(&mut self, releases: &[HoldRelease]) {
        for release in releases {
            let kept = self.kept(&release.hold, &release.product);
            kept.in_cart = kept.in_cart.min(release.keep);
        }
        self.forget_settled();
    }

    fn take(&mut self, hold: &HoldId, quantity: u32) {
        if let Some(kept) = self.holds.get_mut(hold) {
            kept.reserved = kept.reserved.saturating_sub(quantity);
        }
        self.forget_settled();
    }

    fn forget_settled(&mut self) {
        let open = !self.checked_out;
        self.holds
            .retain(|_, kept| kept.reserved > 0 || (kept.in_cart > 0 && open));
    }

    /// Shrinks every hold the product keeps beyond what the cart counts on.
    fn release_strays(&self, mut step: Step<ShopCommand>) -> Step<ShopCommand> {
        for (hold, kept) in &self.holds {
            if kept.reserved > kept.in_cart {
                step = step.send(ShopCommand::Product {
                    id: kept.product.clone(),
                    command: ProductCommand::Release {
                        hold: hold.clone(),
                        keep: kept.in_cart,
                    },
                });
            }
        }
        step
    }

    fn rearm(&self, step: Step<ShopCommand>) -> Step<ShopCommand> {
        if self.checked_out {
            step.cancel(SWEEP_DEADLINE)
                .deadline(SWEEP_DEADLINE, self.hold_seconds)
        } else {
            step.cancel(IDLE_DEADLINE)
                .deadline(IDLE_DEADLINE, self.hold_seconds)
        }
    }

    fn settled(&self) -> bool {
        self.holds.is_empty()
    }
}

impl Saga for ReservationKeeper {
    const NAME: &'static str = "CartReservations";
    type Event = ReservationEvent;
    type Command = ShopCommand;

    fn routing(event: &ReservationEvent) -> Option<Routing> {
        let by_cart = |cart: &CartId| Association::new("cart_id", cart.as_str());
        match event {
            ReservationEvent::Cart { cart, event } => match event {
                CartEvent::CartCreated(_) => Some(Routing::Start(by_cart(cart))),
                _ => Some(Routing::To(by_cart(cart))),
            },
            ReservationEvent::Product { event, .. } => match event {
                ProductEvent::StockReserved(e) => Some(Routing::Start(by_cart(&e.cart))),
                ProductEvent::StockReleased(e) => Some(Routing::To(by_cart(&e.cart))),
                ProductEvent::StockSold(e) => Some(Routing::To(by_cart(&e.cart))),
                _ => None,
            },
        }
    }

    fn handle(&mut self, event: &ReservationEvent, _now: i64) -> Step<ShopCommand> {
        match event {
            ReservationEvent::Cart { cart, event } => {
                self.cart = Some(cart.clone());
                match event {
                    CartEvent::CartCreated(e) => {
                        self.hold_seconds = e.hold_seconds;
                        self.rearm(Step::nothing())
                    }
                    CartEvent::ItemAdded(e) => {
                        self.kept(&e.hold, &e.product).in_cart += e.quantity;
                        self.rearm(Step::nothing())
                    }
                    CartEvent::ItemRemoved(e) => {
                        self.shrink(&e.releases);
                        self.rearm(Step::nothing())
                    }
                    CartEvent::CartEmptied(e) => {
                        self.shrink(&e.releases);
                        self.rearm(Step::nothing())
                    }
                    CartEvent::CartExpired(e) => {
                        let mut step = Step::nothing();
                        for release in &e.releases {
                            step = step.send(ShopCommand::Product {
                                id: release.product.clone(),
                                command: ProductCommand::Release {
                                    hold: release.hold.clone(),
                                    keep: release.keep,
                                },
                            });
                        }
                        self.shrink(&e.releases);
                        step
                    }
                    CartEvent::CartCheckedOut(_) => {
                        self.checked_out = true;
                        self.forget_settled();
                        let step = Step::nothing().cancel(IDLE_DEADLINE);
                        if self.settled() {
                            step.end()
                        } else {
                            self.rearm(step)
                        }
                    }
                }
            }
            ReservationEvent::Product { product, event } => match event {
                ProductEvent::StockReserved(e) => {
                    self.cart = Some(e.cart.clone());
                    self.hold_seconds = e.hold_seconds;
                    self.kept(&e.hold, product).reserved += e.quantity;
                    self.rearm(Step::nothing())
                }
                ProductEvent::StockReleased(e) => {
                    self.take(&e.hold, e.quantity);
                    self.end_if_done()
                }
                ProductEvent::StockSold(e) => {
                    // Sold units leave the cart as well as the hold: what the hold keeps beyond
                    // the rest of the line (a release that was lost) is then a stray the sweep
                    // gives back.
                    if let Some(kept) = self.holds.get_mut(&e.hold) {
                        kept.in_cart = kept.in_cart.saturating_sub(e.quantity);
                    }
                    self.take(&e.hold, e.quantity);
                    self.end_if_done()
                }
                _ => Step::nothing(),
            },
        }
    }

    fn on_deadline(&mut self, name: &str, _now: i64) -> Step<ShopCommand> {
        match name {
            IDLE_DEADLINE if !self.checked_out => {
                if self.settled() {
                    return Step::nothing().end();
                }
                let lapsing: Vec<HoldId> = self
                    .holds
                    .iter()
                    .filter(|(_, kept)| kept.in_cart > 0)
                    .map(|(hold, _)| hold.clone())
                    .collect();
                let mut step = self.release_strays(Step::nothing());
                if let (false, Some(cart)) = (lapsing.is_empty(), &self.cart) {
                    step = step.send(ShopCommand::Cart {
                        id: cart.clone(),
                        command: CartCommand::Expire { holds: lapsing },
                    });
                }
                // Looked at again one hold time later, should the cart not have expired.
                self.rearm(step)
            }
            SWEEP_DEADLINE => self.release_strays(Step::nothing()).end(),
            _ => Step::nothing(),
        }
    }
}

impl ReservationKeeper {
    fn end_if_done(&self) -> Step<ShopCommand> {
        if self.settled() && self.checked_out {
            Step::nothing().end()
        } else {
            Step::nothing()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::shop::cart::{CartCreated, CartExpired, ItemAdded, ItemRemoved};
    use crate::domain::shop::product::{StockReleased, StockReserved};
    use crate::domain::shop::values::Money;
    use crate::testkit::SagaFixture;

    fn id<T: TryFrom<String>>(raw: &str) -> T {
        T::try_from(raw.to_owned()).unwrap_or_else(|_| unreachable!("test ids are valid"))
    }

    fn cart(event: impl Into<CartEvent>) -> ReservationEvent {
        ReservationEvent::Cart {
            cart: id("c1"),
            event: event.into(),
        }
    }

    fn product(event: impl Into<ProductEvent>) -> ReservationEvent {
        ReservationEvent::Product {
            product: id("monstera"),
            event: event.into(),
        }
    }

    fn reserved(hold: &str, quantity: u32) -> ReservationEvent {
        product(StockReserved {
            hold: id(hold),
            cart: id("c1"),
            quantity,
            hold_seconds: 600,
        })
    }

    fn added(hold: &str, quantity: u32) -> ReservationEvent {
        cart(ItemAdded {
            product: id("monstera"),
            name: "Monstera".into(),
            unit_price: Money::from_cents(1000),
            quantity,
            hold: id(hold),
        })
    }

    fn release(hold: &str, keep: u32) -> ShopCommand {
        ShopCommand::Product {
            id: id("monstera"),
            command: ProductCommand::Release {
                hold: id(hold),
                keep,
            },
        }
    }

    /// The cart checked out with one Monstera, held by `h1`.
    fn checked_out_with_h1() -> ReservationEvent {
        use crate::domain::shop::cart::{CartCheckedOut, OrderLine};
        use crate::domain::shop::values::{Address, PaymentMethod};
        cart(CartCheckedOut {
            order: id("o1"),
            customer: id("alice"),
            lines: vec![OrderLine {
                product: id("monstera"),
                name: "Monstera".into(),
                quantity: 1,
                unit_price: Money::from_cents(1000),
                holds: vec![(id("h1"), 1)],
            }],
            total: Money::from_cents(1000),
            address: Address::parse("Ada", "1 Leaf Lane", "Kew", "TW9", "UK")
                .unwrap_or_else(|_| unreachable!()),
            payment: PaymentMethod {
                token: "tok".into(),
                last4: "4242".into(),
            },
            payment_timeout_seconds: 900,
        })
    }

    fn created() -> ReservationEvent {
        cart(CartCreated {
            owner: id("alice"),
            hold_seconds: 600,
        })
    }

    #[test]
    fn an_idle_cart_is_told_its_holds_lapse_and_they_are_released_once_it_records_it() {
        SagaFixture::<ReservationKeeper>::new()
            .given([created(), reserved("h1", 2), added("h1", 2)])
            .when_time_elapses(599)
            .expect_no_commands()
            .and()
            .when_time_elapses(1)
            .expect_commands([ShopCommand::Cart {
                id: id("c1"),
                command: CartCommand::Expire {
                    holds: vec![id("h1")],
                },
            }])
            .and()
            .when(cart(CartExpired {
                releases: vec![HoldRelease {
                    product: id("monstera"),
                    hold: id("h1"),
                    keep: 0,
                }],
            }))
            .expect_commands([release("h1", 0)])
            .and()
            .when(product(StockReleased {
                hold: id("h1"),
                cart: id("c1"),
                quantity: 2,
            }))
            .expect_no_commands()
            .and()
            .when_time_elapses(600)
            .expect_ended();
    }

    #[test]
    fn activity_pushes_the_idle_deadline_back() {
        SagaFixture::<ReservationKeeper>::new()
            .given([created(), reserved("h1", 2), added("h1", 2)])
            .when_time_elapses(500)
            .and()
            .when(reserved("h2", 1))
            .expect_deadline_set(IDLE_DEADLINE)
            .and()
            .when_time_elapses(500)
            .expect_no_commands();
    }

    #[test]
    fn a_hold_whose_cart_line_was_never_written_goes_back_at_the_idle_deadline() {
        SagaFixture::<ReservationKeeper>::new()
            .given([
                created(),
                reserved("h1", 2),
                added("h1", 2),
                reserved("h2", 3),
            ])
            .when_time_elapses(600)
            .expect_commands([
                release("h2", 0),
                ShopCommand::Cart {
                    id: id("c1"),
                    command: CartCommand::Expire {
                        holds: vec![id("h1")],
                    },
                },
            ]);
    }

    #[test]
    fn a_removal_whose_release_was_lost_is_released_to_what_the_cart_keeps() {
        SagaFixture::<ReservationKeeper>::new()
            .given([
                created(),
                reserved("h1", 5),
                added("h1", 5),
                cart(ItemRemoved {
                    product: id("monstera"),
                    quantity: 3,
                    releases: vec![HoldRelease {
                        product: id("monstera"),
                        hold: id("h1"),
                        keep: 2,
                    }],
                }),
            ])
            .when_time_elapses(600)
            .expect_commands([
                release("h1", 2),
                ShopCommand::Cart {
                    id: id("c1"),
                    command: CartCommand::Expire {
                        holds: vec![id("h1")],
                    },
                },
            ]);
    }

    #[test]
    fn a_reservation_that_lands_after_checkout_is_swept() {
        SagaFixture::<ReservationKeeper>::new()
            .given([
                created(),
                reserved("h1", 1),
                added("h1", 1),
                checked_out_with_h1(),
                reserved("h9", 2),
            ])
            .when_time_elapses(600)
            .expect_commands([release("h9", 0)])
            .expect_ended();
    }

    #[test]
    fn a_hold_larger_than_its_sold_line_gives_back_the_rest() {
        use crate::domain::shop::product::StockSold;
        // Two held, the line says one (the release after a removal was lost), one sold.
        SagaFixture::<ReservationKeeper>::new()
            .given([
                created(),
                reserved("h1", 2),
                added("h1", 1),
                checked_out_with_h1(),
                product(StockSold {
                    hold: id("h1"),
                    cart: id("c1"),
                    order: id("o1"),
                    quantity: 1,
                }),
            ])
            .when_time_elapses(600)
            .expect_commands([release("h1", 0)]);
    }
}
