//! A token bucket per customer: a burst from one customer meets 429 with `Retry-After` rather
//! than queueing behind itself with unbounded latency. Other customers are not affected.

use std::time::Instant;

use dashmap::DashMap;

/// Buckets by customer.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: DashMap<String, (f64, Instant)>,
}

impl RateLimiter {
    /// `per_second` sustained, `burst` at once (0 disables the limit).
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: DashMap::new(),
        }
    }

    /// Takes a token for `who`; `Err(seconds)` says when one will be there.
    pub fn take(&self, who: &str) -> Result<(), u64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        if self.buckets.len() > 100_000 {
            // Forget the full buckets of customers who went quiet, so memory stays bounded.
            let (rate, burst) = (self.per_second, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let mut bucket = self
            .buckets
            .entry(who.to_owned())
            .or_insert((self.burst, now));
        let (tokens, at) = &mut *bucket;
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_beyond_the_bucket_is_refused_for_that_customer_only() {
        let limiter = RateLimiter::new(1, 3);
        assert!((0..3).all(|_| limiter.take("alice").is_ok()));
        assert_eq!(limiter.take("alice"), Err(1));
        assert!(limiter.take("bob").is_ok());
    }
}
