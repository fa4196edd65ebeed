//! How the shop's sagas meet the runtime: decoders that turn stored events into each saga's
//! events, and the dispatcher that sends a saga's commands through the gateway (or, for a
//! charge, to the payment provider, then records the answer on the payment).

use std::sync::Arc;

use tracing::warn;

use super::payments::{ChargeRequest, PaymentProvider};
use crate::actors::{CommandError, CommandGateway};
use crate::domain::Aggregate;
use crate::domain::shop::payment::PaymentStatus;
use crate::domain::shop::{
    Cart, CartEvent, ChargeOutcome, Delivery, Invoice, Money, Notification, Order, Payment,
    PaymentCommand, PaymentError, PaymentEvent, PaymentId, PaymentProcessEvent, PaymentProcessing,
    Product, ProductEvent, ProductId, Purchase, PurchaseEvent, ReservationEvent, ReservationKeeper,
    ShopCommand,
};
use crate::projections::{DispatchError, SagaDecoder, SagaDispatcher};
use crate::store::{Codec, Metadata, RecordedEvent};

fn decoded<E: crate::domain::EventSet>(codec: &Codec, record: &RecordedEvent) -> Option<E> {
    match codec.decode_event::<E>(record) {
        Ok(event) => Some(event),
        Err(error) => {
            warn!(position = record.position, %error, "a saga cannot decode an event; it is skipped");
            None
        }
    }
}

/// The purchase hears checkouts and payment outcomes.
pub(crate) fn purchase_decoder(codec: Codec) -> SagaDecoder<Purchase> {
    Arc::new(move |record| {
        let kind = (
            record.stream.aggregate_type.as_str(),
            record.event_type.as_str(),
        );
        match kind {
            (Cart::TYPE, "CartCheckedOut") => match decoded::<CartEvent>(&codec, record)? {
                CartEvent::CartCheckedOut(event) => Some(PurchaseEvent::CheckedOut {
                    cart: crate::domain::shop::CartId::parse(&*record.stream.aggregate_id).ok()?,
                    event: Box::new(event),
                }),
                _ => None,
            },
            (Payment::TYPE, "PaymentSucceeded" | "PaymentFailed" | "PaymentAbandoned") => {
                match decoded::<PaymentEvent>(&codec, record)? {
                    PaymentEvent::PaymentSucceeded(e) => Some(PurchaseEvent::PaymentSucceeded(e)),
                    PaymentEvent::PaymentFailed(e) => Some(PurchaseEvent::PaymentFailed(e)),
                    PaymentEvent::PaymentAbandoned(e) => Some(PurchaseEvent::PaymentAbandoned(e)),
                    PaymentEvent::PaymentRequested(_) => None,
                }
            }
            _ => None,
        }
    })
}

/// Payment processing hears payments requested and ended.
pub(crate) fn payment_decoder(codec: Codec) -> SagaDecoder<PaymentProcessing> {
    Arc::new(move |record| {
        if record.stream.aggregate_type != Payment::TYPE {
            return None;
        }
        let payment = PaymentId::parse(&*record.stream.aggregate_id).ok()?;
        match decoded::<PaymentEvent>(&codec, record)? {
            PaymentEvent::PaymentRequested(event) => {
                Some(PaymentProcessEvent::Requested { payment, event })
            }
            _ => Some(PaymentProcessEvent::Ended { payment }),
        }
    })
}

/// The reservation keeper hears every cart event and the products' holds.
pub(crate) fn reservation_decoder(codec: Codec) -> SagaDecoder<ReservationKeeper> {
    Arc::new(move |record| match record.stream.aggregate_type.as_str() {
        Cart::TYPE => Some(ReservationEvent::Cart {
            cart: crate::domain::shop::CartId::parse(&*record.stream.aggregate_id).ok()?,
            event: decoded(&codec, record)?,
        }),
        Product::TYPE
            if matches!(
                record.event_type.as_str(),
                "StockReserved" | "StockReleased" | "StockSold"
            ) =>
        {
            Some(ReservationEvent::Product {
                product: ProductId::parse(&*record.stream.aggregate_id).ok()?,
                event: decoded::<ProductEvent>(&codec, record)?,
            })
        }
        _ => None,
    })
}

/// Renders a stored shop event's payload as JSON, for the AMQP relay's consumers.
pub(crate) fn render(codec: Codec) -> crate::projections::Render {
    fn json<E: crate::domain::EventSet>(
        codec: &Codec,
        record: &RecordedEvent,
    ) -> Option<serde_json::Value> {
        codec
            .decode_event::<E>(record)
            .ok()
            .and_then(|e| serde_json::to_value(e).ok())
    }
    Arc::new(move |record| match record.stream.aggregate_type.as_str() {
        Cart::TYPE => json::<CartEvent>(&codec, record),
        Product::TYPE => json::<ProductEvent>(&codec, record),
        Order::TYPE => json::<crate::domain::shop::OrderEvent>(&codec, record),
        Invoice::TYPE => json::<crate::domain::shop::InvoiceEvent>(&codec, record),
        Delivery::TYPE => json::<crate::domain::shop::DeliveryEvent>(&codec, record),
        Payment::TYPE => json::<PaymentEvent>(&codec, record),
        Notification::TYPE => json::<crate::domain::shop::NotificationEvent>(&codec, record),
        _ => None,
    })
}

/// Sends the shop sagas' commands.
pub(crate) fn dispatcher<S>(
    gateway: CommandGateway,
    provider: Arc<dyn PaymentProvider>,
) -> SagaDispatcher<S>
where
    S: crate::domain::Saga<Command = ShopCommand>,
{
    Arc::new(move |command, metadata| {
        let gateway = gateway.clone();
        let provider = Arc::clone(&provider);
        Box::pin(async move { dispatch(&gateway, &*provider, command, metadata).await })
    })
}

async fn dispatch(
    gateway: &CommandGateway,
    provider: &dyn PaymentProvider,
    command: ShopCommand,
    metadata: Metadata,
) -> Result<(), DispatchError> {
    match command {
        ShopCommand::Product { id, command } => {
            send::<Product>(gateway, id.as_str(), command, metadata).await
        }
        ShopCommand::Cart { id, command } => {
            send::<Cart>(gateway, id.as_str(), command, metadata).await
        }
        ShopCommand::Order { id, command } => {
            send::<Order>(gateway, id.as_str(), command, metadata).await
        }
        ShopCommand::Invoice { id, command } => {
            send::<Invoice>(gateway, id.as_str(), command, metadata).await
        }
        ShopCommand::Delivery { id, command } => {
            send::<Delivery>(gateway, id.as_str(), command, metadata).await
        }
        ShopCommand::Payment { id, command } => {
            send::<Payment>(gateway, id.as_str(), command, metadata).await
        }
        ShopCommand::Notify { id, command } => {
            send::<Notification>(gateway, id.as_str(), command, metadata).await
        }
        ShopCommand::Charge {
            payment,
            amount,
            token,
        } => charge(gateway, provider, &payment, amount, token, metadata).await,
    }
}

fn failed<E: std::fmt::Display>(error: CommandError<E>) -> DispatchError {
    if error.is_transient() {
        DispatchError::Transient(error.to_string())
    } else {
        DispatchError::Permanent(error.to_string())
    }
}

async fn send<A: Aggregate>(
    gateway: &CommandGateway,
    id: &str,
    command: A::Command,
    metadata: Metadata,
) -> Result<(), DispatchError> {
    gateway
        .send_and_wait::<A>(id, command, metadata)
        .await
        .map(|_| ())
        .map_err(failed)
}

/// Charges the card (the payment id is the idempotency key) and records the answer. A provider
/// that does not answer leaves the command in the saga's outbox, to be sent again with the same
/// key; a payment the purchase abandoned meanwhile is not charged, and a charge that lands on
/// one anyway is refunded.
async fn charge(
    gateway: &CommandGateway,
    provider: &dyn PaymentProvider,
    payment: &PaymentId,
    amount: Money,
    token: String,
    metadata: Metadata,
) -> Result<(), DispatchError> {
    // Not charging decides on its own: that answer is read again as the store has it.
    let status = gateway
        .inspect_confirmed::<Payment, _>(
            payment.as_str(),
            |p, _| p.status,
            |status| *status == PaymentStatus::Requested,
        )
        .await
        .map_err(failed)?;
    if status != PaymentStatus::Requested {
        return Ok(()); // answered already, or abandoned: nothing to charge
    }
    let request = ChargeRequest {
        key: payment.to_string(),
        amount,
        token,
    };
    let outcome = provider
        .charge(&request)
        .await
        .map_err(|e| DispatchError::Transient(e.to_string()))?;
    let succeeded = matches!(outcome, ChargeOutcome::Succeeded { .. });
    let record = PaymentCommand::Record { outcome };
    match gateway
        .send_and_wait::<Payment>(payment.as_str(), record, metadata)
        .await
    {
        Ok(_) => Ok(()),
        Err(CommandError::Rejected(PaymentError::Abandoned)) if succeeded => {
            warn!(%payment, "a charge landed on an abandoned payment; refunding it");
            provider
                .refund(&request.key)
                .await
                .map_err(|e| DispatchError::Transient(e.to_string()))
        }
        Err(error) => Err(failed(error)),
    }
}
