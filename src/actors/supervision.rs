//! Supervision policy of aggregate actors: exponential backoff with jitter between restarts, and
//! a bound on how many actors rehydrate at once, so a restart with thousands of busy carts does
//! not storm the store.
//!
//! Must not touch: the store or any aggregate; this is policy only.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// How an aggregate actor is restarted after a failure.
#[derive(Clone, Debug)]
pub struct SupervisionPolicy {
    /// The delay before the first restart; doubled for each restart in a row.
    pub min_backoff: Duration,
    /// The longest delay between restarts.
    pub max_backoff: Duration,
    /// How much of the delay is random, 0.0 to 1.0 (0.2: the delay is 80% to 120% of nominal).
    pub jitter: f64,
    /// How many actors may rehydrate at the same time.
    pub max_concurrent_recoveries: usize,
}

impl Default for SupervisionPolicy {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            jitter: 0.2,
            max_concurrent_recoveries: 32,
        }
    }
}

impl SupervisionPolicy {
    /// The delay before restart number `restarts` (1 for the first restart).
    pub fn backoff(&self, restarts: u32) -> Duration {
        if restarts == 0 {
            return Duration::ZERO;
        }
        let doublings = restarts.saturating_sub(1).min(30);
        let nominal = self
            .min_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        let unit = random_unit();
        let factor = 1.0 + self.jitter.clamp(0.0, 1.0) * (2.0 * unit - 1.0);
        nominal.mul_f64(factor.max(0.0))
    }

    /// The semaphore that bounds concurrent recoveries.
    pub fn recovery_permits(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.max_concurrent_recoveries.max(1)))
    }
}

/// A number in [0, 1) from the process's randomly seeded hasher: jitter needs no better.
fn random_unit() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x006e_7572_7365_7279);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_within_the_jitter() {
        let policy = SupervisionPolicy {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            jitter: 0.2,
            max_concurrent_recoveries: 1,
        };
        assert_eq!(policy.backoff(0), Duration::ZERO);
        for (restarts, nominal_ms) in [
            (1, 100.0),
            (2, 200.0),
            (3, 400.0),
            (4, 800.0),
            (5, 1000.0),
            (40, 1000.0),
        ] {
            let delay = policy.backoff(restarts).as_secs_f64() * 1000.0;
            assert!(
                delay >= nominal_ms * 0.8 - 1e-6 && delay <= nominal_ms * 1.2 + 1e-6,
                "{restarts}: {delay}"
            );
        }
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| policy.backoff(3)).collect();
        assert!(delays.len() > 1, "jitter varies the delay");
    }
}
