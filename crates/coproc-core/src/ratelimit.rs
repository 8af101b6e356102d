//! Rate limiting for what a domain can trigger: log lines (faults, bad
//! requests), where suppressed lines are counted and reported with the next
//! line that passes, and requests ([`Budget`]), which are delayed, never
//! refused. Both are token buckets.

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
        let mut b = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.tokens = refilled(b.tokens, &mut b.last, now, self.per_sec, self.burst);
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

/// `tokens` after the time from `*last` to `now` at `per_sec`, at most
/// `burst`; `*last` becomes `now`.
fn refilled(tokens: f64, last: &mut Instant, now: Instant, per_sec: f64, burst: f64) -> f64 {
    let dt = now.saturating_duration_since(*last).as_secs_f64();
    *last = now;
    (tokens + dt * per_sec).min(burst)
}

/// A request budget: `burst` requests at once, refilled at `per_sec`. A
/// request over budget is not refused: [`Budget::take`] says how long its
/// caller waits first, so a flood only slows the one who floods.
#[derive(Debug)]
pub struct Budget {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    /// A full budget of `burst`, refilled at `per_sec` (at least 1).
    pub fn new(burst: u32, per_sec: u32) -> Budget {
        Budget {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec.max(1)),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Spend `cost`; returns how long to wait before acting (zero while
    /// within budget). What is spent over budget is owed, and repaid by the
    /// wait.
    pub fn take(&mut self, cost: u32) -> Duration {
        self.take_at(cost, Instant::now())
    }

    fn take_at(&mut self, cost: u32, now: Instant) -> Duration {
        self.tokens = refilled(self.tokens, &mut self.last, now, self.per_sec, self.burst);
        self.tokens -= f64::from(cost);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
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
    fn a_budget_delays_what_exceeds_it_by_what_it_owes() {
        let mut b = Budget::new(10, 100);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(b.take_at(1, t0), Duration::ZERO);
        }
        // One over: owed one token, 10 ms at 100 per second.
        let w = b.take_at(1, t0);
        assert!((w.as_secs_f64() - 0.01).abs() < 1e-9, "{w:?}");
        // A cost of 10 more: 11 owed.
        let w = b.take_at(10, t0);
        assert!((w.as_secs_f64() - 0.11).abs() < 1e-9, "{w:?}");
        // After the wait the debt is paid: the next request waits only for
        // its own token.
        let w = b.take_at(1, t0 + Duration::from_millis(110));
        assert!((w.as_secs_f64() - 0.01).abs() < 1e-9, "{w:?}");
        // A long pause refills only up to the burst.
        let t1 = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(b.take_at(1, t1), Duration::ZERO);
        }
        assert!(b.take_at(1, t1) > Duration::ZERO);
    }

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
