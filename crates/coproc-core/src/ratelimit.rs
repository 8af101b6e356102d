//! Rate limiting for log lines a domain can trigger (faults, bad requests):
//! a token bucket per limiter; suppressed lines are counted and reported
//! with the next line that passes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// At most `burst` lines at once, refilled at `per_sec` lines per second.
#[derive(Debug)]
pub struct RateLimit {
    burst: f64,
    per_sec: f64,
    bucket: Mutex<Bucket>,
}

impl RateLimit {
    /// A limiter allowing `burst` lines, then `per_sec` per second.
    pub fn new(burst: u32, per_sec: u32) -> RateLimit {
        RateLimit {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(burst),
                last: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now; if so, also how many were
    /// suppressed since the last one that was.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + dt * self.per_sec).min(self.burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
}

impl Default for RateLimit {
    /// 10 lines at once, then 1 per second.
    fn default() -> Self {
        RateLimit::new(10, 1)
    }
}

/// How long until a limiter with `per_sec` refills one line.
pub fn refill(per_sec: u32) -> Duration {
    Duration::from_secs_f64(1.0 / f64::from(per_sec.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_and_counts_suppressed() {
        let rl = RateLimit::new(3, 2);
        let t0 = Instant::now();
        let passed = (0..100).filter(|_| rl.check_at(t0).is_some()).count();
        assert_eq!(passed, 3);
        // Half a second later one token is back, and 97 were suppressed.
        assert_eq!(rl.check_at(t0 + refill(2)), Some(97));
        assert_eq!(rl.check_at(t0 + refill(2)), None);
    }
}
