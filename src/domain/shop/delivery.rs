//! A delivery for an order: prepared while payment runs, then released to the carrier, or
//! cancelled when the purchase is compensated. A released delivery is never cancelled.
//!
//! Must not touch: any runtime, store or clock.

use serde::{Deserialize, Serialize};

use super::values::{Address, OrderId};
use crate::domain::{Aggregate, Command};

/// What can be asked of a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryCommand {
    /// Prepares the parcel.
    Prepare {
        /// The order.
        order: OrderId,
        /// Where it goes.
        address: Address,
    },
    /// Hands it to the carrier.
    Release,
    /// Cancels it.
    Cancel {
        /// Why.
        reason: String,
    },
}

impl Command for DeliveryCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Prepare { .. } => "PrepareDelivery",
            Self::Release => "ReleaseDelivery",
            Self::Cancel { .. } => "CancelDelivery",
        }
    }
}

/// The parcel was prepared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryPrepared {
    /// The order.
    pub order: OrderId,
    /// Where it goes.
    pub address: Address,
}

/// The parcel went to the carrier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReleased {
    /// The order.
    pub order: OrderId,
}

/// The delivery was cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCancelled {
    /// The order.
    pub order: OrderId,
    /// Why.
    pub reason: String,
}

crate::event_set! {
    /// What happens to a delivery.
    pub enum DeliveryEvent { DeliveryPrepared, DeliveryReleased, DeliveryCancelled }
}

/// Where a delivery is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not prepared.
    #[default]
    New,
    /// Prepared.
    Prepared,
    /// With the carrier.
    Released,
    /// Cancelled.
    Cancelled,
}

/// Why a delivery refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No such delivery.
    #[error("no such delivery")]
    NotFound,
    /// The delivery cannot do that in its present status.
    #[error("the delivery is {status:?}")]
    WrongStatus {
        /// Its status.
        status: DeliveryStatus,
    },
}

/// A delivery's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Where it is.
    pub status: DeliveryStatus,
    /// The order.
    pub order: Option<OrderId>,
}

impl Aggregate for Delivery {
    const TYPE: &'static str = "Delivery";
    type Command = DeliveryCommand;
    type Event = DeliveryEvent;
    type Error = DeliveryError;

    fn decide(&self, command: &DeliveryCommand) -> Result<Vec<DeliveryEvent>, DeliveryError> {
        use DeliveryStatus::*;
        let order = || self.order.clone().ok_or(DeliveryError::NotFound);
        match (command, self.status) {
            (DeliveryCommand::Prepare { order, address }, New) => Ok(vec![
                DeliveryPrepared {
                    order: order.clone(),
                    address: address.clone(),
                }
                .into(),
            ]),
            (DeliveryCommand::Prepare { .. }, _) => Ok(Vec::new()),
            (_, New) => Err(DeliveryError::NotFound),
            (DeliveryCommand::Release, Prepared) => {
                Ok(vec![DeliveryReleased { order: order()? }.into()])
            }
            (DeliveryCommand::Release, Released) | (DeliveryCommand::Cancel { .. }, Cancelled) => {
                Ok(Vec::new())
            }
            (DeliveryCommand::Cancel { reason }, Prepared) => Ok(vec![
                DeliveryCancelled {
                    order: order()?,
                    reason: reason.clone(),
                }
                .into(),
            ]),
            (_, status) => Err(DeliveryError::WrongStatus { status }),
        }
    }

    fn apply(&mut self, event: &DeliveryEvent) {
        match event {
            DeliveryEvent::DeliveryPrepared(e) => {
                self.status = DeliveryStatus::Prepared;
                self.order = Some(e.order.clone());
            }
            DeliveryEvent::DeliveryReleased(_) => self.status = DeliveryStatus::Released,
            DeliveryEvent::DeliveryCancelled(_) => self.status = DeliveryStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::AggregateFixture;

    fn prepared() -> DeliveryEvent {
        DeliveryPrepared {
            order: OrderId::parse("o1").unwrap_or_else(|_| unreachable!()),
            address: Address::parse("Ada", "1 Leaf Lane", "Kew", "TW9", "UK")
                .unwrap_or_else(|_| unreachable!()),
        }
        .into()
    }

    #[test]
    fn a_released_delivery_is_never_cancelled() {
        AggregateFixture::<Delivery>::given([
            prepared(),
            DeliveryReleased {
                order: OrderId::parse("o1").unwrap_or_else(|_| unreachable!()),
            }
            .into(),
        ])
        .when(DeliveryCommand::Cancel { reason: "x".into() })
        .expect_error(DeliveryError::WrongStatus {
            status: DeliveryStatus::Released,
        });
    }

    #[test]
    fn an_unknown_delivery_cannot_be_released() {
        AggregateFixture::<Delivery>::given([])
            .when(DeliveryCommand::Release)
            .expect_error(DeliveryError::NotFound);
    }
}
