//! Per-connection flood control: a token bucket that lets bursts through (a browser sends a few
//! dozen ICE candidates at once) and a strike counter that ends a sustained flood.

use std::time::Instant;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused: answer with an `error`, drop the message.
    Refuse,
    /// Refused for too long: close the connection (4029).
    Close,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    strikes: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate_per_s),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            strikes: 0.0,
            last: Instant::now(),
        }
    }

    /// Refused messages that, unforgiven, close the connection. Strikes are forgiven at the
    /// sustained rate, so a client that slows down after a refusal is never closed.
    fn strike_limit(&self) -> f64 {
        self.burst.max(self.rate)
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.strikes = (self.strikes - dt * self.rate).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        self.strikes += 1.0;
        if self.strikes > self.strike_limit() {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_passes_then_refuses_then_closes() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10, 50);
        for _ in 0..50 {
            assert_eq!(rl.check(t0), Verdict::Allow);
        }
        assert_eq!(rl.check(t0), Verdict::Refuse);
        let mut verdicts = Vec::new();
        for _ in 0..60 {
            verdicts.push(rl.check(t0));
        }
        assert_eq!(verdicts.last(), Some(&Verdict::Close));
    }

    #[test]
    fn tokens_refill_at_the_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10, 5);
        for _ in 0..5 {
            rl.check(t0);
        }
        assert_eq!(rl.check(t0), Verdict::Refuse);
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(rl.check(t1), Verdict::Allow);
        assert_eq!(rl.check(t1), Verdict::Allow);
        assert_eq!(rl.check(t1), Verdict::Allow);
        assert_eq!(rl.check(t1), Verdict::Refuse);
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_closed() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(20, 20);
        for i in 0..2000u64 {
            let v = rl.check(t0 + Duration::from_millis(i * 50));
            assert_eq!(v, Verdict::Allow, "message {i}");
        }
    }
}
