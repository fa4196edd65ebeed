//! The payment provider: the trait the shop charges cards through, and a simulated provider
//! that follows the usual test cards (4242 4242 4242 4242 succeeds, 4000 0000 0000 0002 is
//! declined, 4000 0000 0000 9995 fails for insufficient funds, any other valid number
//! succeeds).
//!
//! Charges are idempotent by key: the purchase charges with the payment id as the key, so a
//! charge retried after a timeout (the provider may have charged before the answer was lost)
//! charges at most once.
//!
//! Must not touch: the runtime, the store, HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use dashmap::DashMap;

use crate::domain::shop::{CardNumber, ChargeOutcome, Money, PaymentMethod};

/// One charge to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The idempotency key: the same key charges once, whatever the number of calls.
    pub key: String,
    /// How much.
    pub amount: Money,
    /// The card's token.
    pub token: String,
}

/// Why the provider gave no answer. The charge may or may not have happened: retry with the
/// same key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("payment provider unavailable: {0}")]
pub struct ProviderUnavailable(pub String);

/// A payment provider.
#[async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// Turns a card number into what the shop keeps: a token and the last four digits. The
    /// card number itself is never stored.
    fn tokenize(&self, card: &CardNumber) -> PaymentMethod;

    /// Charges the card, once per key.
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderUnavailable>;

    /// Refunds the charge made under `key`, if any (once per key).
    async fn refund(&self, key: &str) -> Result<(), ProviderUnavailable>;
}

const DECLINED: &str = "4000000000000002";
const INSUFFICIENT_FUNDS: &str = "4000000000009995";

/// A provider in memory that follows the test cards. Its tokens say how the card behaves
/// (`tok_ok_4242`, `tok_declined_0002`, `tok_insufficient_funds_9995`), so a charge answers the
/// same after a restart.
#[derive(Clone, Debug, Default)]
pub struct SimulatedProvider {
    charges: Arc<DashMap<String, ChargeOutcome>>,
    refunds: Arc<DashMap<String, ()>>,
    taken: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    time_out_after_charging: Arc<AtomicUsize>,
    unavailable: Arc<AtomicUsize>,
}

impl SimulatedProvider {
    /// A provider with no charges.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` charges take the money and then time out, as a provider whose answer was
    /// lost on the way back.
    pub fn time_out_after_charging(&self, n: usize) {
        self.time_out_after_charging.store(n, Ordering::SeqCst);
    }

    /// The next `n` calls fail before charging (the provider is down).
    pub fn be_unavailable(&self, n: usize) {
        self.unavailable.store(n, Ordering::SeqCst);
    }

    /// How many times money was actually taken (a repeat with a known key takes none).
    pub fn charges_taken(&self) -> u64 {
        self.taken.load(Ordering::SeqCst)
    }

    /// How many charge calls were made, repeats included.
    pub fn charge_calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The outcome recorded under `key`.
    pub fn outcome_of(&self, key: &str) -> Option<ChargeOutcome> {
        self.charges.get(key).map(|c| c.clone())
    }

    /// Whether the charge under `key` was refunded.
    pub fn refunded(&self, key: &str) -> bool {
        self.refunds.contains_key(key)
    }

    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    fn tokenize(&self, card: &CardNumber) -> PaymentMethod {
        let behaviour = match card.digits() {
            DECLINED => "declined",
            INSUFFICIENT_FUNDS => "insufficient_funds",
            _ => "ok",
        };
        PaymentMethod {
            token: format!("tok_{behaviour}_{}", card.last4()),
            last4: card.last4().to_owned(),
        }
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderUnavailable> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if Self::take(&self.unavailable) {
            return Err(ProviderUnavailable("connection refused".into()));
        }
        let outcome = self
            .charges
            .entry(request.key.clone())
            .or_insert_with(|| {
                if request.token.starts_with("tok_declined_") {
                    ChargeOutcome::Failed {
                        code: "card_declined".into(),
                        reason: "card declined".into(),
                    }
                } else if request.token.starts_with("tok_insufficient_funds_") {
                    ChargeOutcome::Failed {
                        code: "insufficient_funds".into(),
                        reason: "insufficient funds".into(),
                    }
                } else {
                    self.taken.fetch_add(1, Ordering::SeqCst);
                    ChargeOutcome::Succeeded {
                        charge: format!("ch_{}", request.key),
                    }
                }
            })
            .clone();
        if Self::take(&self.time_out_after_charging) {
            return Err(ProviderUnavailable("timed out".into()));
        }
        Ok(outcome)
    }

    async fn refund(&self, key: &str) -> Result<(), ProviderUnavailable> {
        if matches!(self.outcome_of(key), Some(ChargeOutcome::Succeeded { .. })) {
            self.refunds.insert(key.to_owned(), ());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(n: &str) -> CardNumber {
        CardNumber::parse(n).unwrap_or_else(|_| unreachable!("test cards are valid"))
    }

    #[actix_rt::test]
    async fn the_test_cards_behave_as_documented() {
        let provider = SimulatedProvider::new();
        let charge = |token: String, key: &str| ChargeRequest {
            key: key.into(),
            amount: Money::from_cents(1000),
            token,
        };
        let ok = provider.tokenize(&card("4242424242424242"));
        assert_eq!(ok.last4, "4242");
        assert!(matches!(
            provider.charge(&charge(ok.token, "a")).await,
            Ok(ChargeOutcome::Succeeded { .. })
        ));
        let declined = provider.tokenize(&card("4000000000000002")).token;
        assert!(matches!(
            provider.charge(&charge(declined, "b")).await,
            Ok(ChargeOutcome::Failed { code, .. }) if code == "card_declined"
        ));
        let broke = provider.tokenize(&card("4000000000009995")).token;
        assert!(matches!(
            provider.charge(&charge(broke, "c")).await,
            Ok(ChargeOutcome::Failed { code, .. }) if code == "insufficient_funds"
        ));
        assert_eq!(provider.charges_taken(), 1);
    }

    #[actix_rt::test]
    async fn a_charge_that_timed_out_after_charging_is_not_taken_again() {
        let provider = SimulatedProvider::new();
        provider.time_out_after_charging(1);
        let request = ChargeRequest {
            key: "pay-1".into(),
            amount: Money::from_cents(1000),
            token: provider.tokenize(&card("4242424242424242")).token,
        };
        assert!(provider.charge(&request).await.is_err());
        assert!(provider.charge(&request).await.is_ok());
        assert_eq!(provider.charges_taken(), 1);
        assert_eq!(provider.charge_calls(), 2);
    }
}
