//! Per-client rate limiting with a token bucket.
//!
//! A client that talks too fast is not cut off and loses nothing: the worker simply stops
//! reading from it until the bucket has a token again, and TCP flow control pushes back on the
//! sender. The bucket answers "how long until the next line may go", which becomes a timer.

use crate::config::RateLimit;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket: a new client may send a burst at once.
    pub fn new(limit: &RateLimit, now: Instant) -> TokenBucket {
        let capacity = f64::from(limit.burst.max(1));
        let per_second = f64::from(limit.messages) / limit.per.as_secs_f64().max(1e-6);
        TokenBucket { capacity, tokens: capacity, per_second, updated: now }
    }

    /// A bucket holding `tokens` (carried over from another worker on reload).
    pub fn with_tokens(limit: &RateLimit, tokens: f64, now: Instant) -> TokenBucket {
        let mut bucket = TokenBucket::new(limit, now);
        bucket.tokens = tokens.clamp(0.0, bucket.capacity);
        bucket
    }

    /// Tokens available now.
    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(missing / self.per_second).max(Duration::from_millis(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let limit = RateLimit { messages: 10, per: Duration::from_secs(1), burst: 3 };
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&limit, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(bucket.take(start + Duration::from_millis(100)), Ok(()));
        // Refill never exceeds the burst.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }
}
