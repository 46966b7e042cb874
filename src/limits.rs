//! Request rate per principal: a token bucket for each authenticated principal
//! (`principals.requests_per_second`, `principals.burst`), shared by all its sessions and
//! transports. One principal's flood empties only its own bucket.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::PrincipalLimits;

/// Buckets kept before full (idle) ones are dropped.
const PRUNE_ABOVE: usize = 4096;

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Clone, Copy)]
struct Rate {
    per_second: f64,
    burst: f64,
}

pub struct RateLimiter {
    rate: Mutex<Rate>,
    buckets: DashMap<Arc<str>, Bucket>,
}

impl RateLimiter {
    pub fn new(limits: &PrincipalLimits) -> RateLimiter {
        let limiter = RateLimiter { rate: Mutex::new(Rate { per_second: 0.0, burst: 0.0 }), buckets: DashMap::new() };
        limiter.configure(limits);
        limiter
    }

    /// New limits (a reload); buckets keep their tokens, capped at the new burst.
    pub fn configure(&self, limits: &PrincipalLimits) {
        *self.rate.lock().unwrap_or_else(|p| p.into_inner()) =
            Rate { per_second: limits.requests_per_second, burst: f64::from(limits.burst) };
    }

    /// Takes `n` requests' worth of tokens from `principal`'s bucket, or says how long until
    /// there are enough. Takes nothing when refused.
    pub fn take(&self, principal: &Arc<str>, n: usize) -> Result<(), Duration> {
        let rate = *self.rate.lock().unwrap_or_else(|p| p.into_inner());
        if rate.per_second <= 0.0 || n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        if self.buckets.len() > PRUNE_ABOVE && !self.buckets.contains_key(principal) {
            self.prune(rate, now);
        }
        let mut bucket = self.buckets.entry(principal.clone()).or_insert(Bucket { tokens: rate.burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.at = now;
        let want = n as f64;
        if bucket.tokens >= want {
            bucket.tokens -= want;
            return Ok(());
        }
        // A request larger than the burst can never pass: it waits as if the bucket were empty.
        let short = (want.min(rate.burst) - bucket.tokens).max(1.0);
        Err(Duration::from_secs_f64(short / rate.per_second))
    }

    /// Drops the buckets that have refilled: they hold nothing a new bucket would not.
    fn prune(&self, rate: Rate, now: Instant) {
        self.buckets
            .retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate.per_second < rate.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refuses_past_its_burst_and_names_the_wait() {
        let l = RateLimiter::new(&PrincipalLimits { max_sessions: 1, requests_per_second: 10.0, burst: 5 });
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        assert!(l.take(&a, 5).is_ok());
        let wait = l.take(&a, 1).unwrap_err();
        assert!(wait > Duration::from_millis(50) && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(l.take(&b, 1).is_ok(), "another principal has its own bucket");
        std::thread::sleep(Duration::from_millis(120));
        assert!(l.take(&a, 1).is_ok(), "the bucket refills");
    }

    #[test]
    fn zero_means_unlimited() {
        let l = RateLimiter::new(&PrincipalLimits { max_sessions: 1, requests_per_second: 0.0, burst: 0 });
        let a: Arc<str> = Arc::from("a");
        assert!((0..10_000).all(|_| l.take(&a, 1).is_ok()));
    }
}
