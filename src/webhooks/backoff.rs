//! Exponential backoff with full jitter: the wait before retry `n` is uniform in
//! `[0, min(cap, base * 2^(n-1))]`, which spreads the retries of many failed deliveries instead of
//! sending them back in lockstep to an endpoint that just recovered.

use std::time::Duration;

use rand::Rng;

/// The largest wait before retry `attempt` (1 = the retry after the first failure).
pub fn ceiling(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    base.checked_mul(1 << doublings).unwrap_or(cap).min(cap)
}

/// The wait before retry `attempt`, drawn from `rng`.
pub fn delay(attempt: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let ceil = u64::try_from(ceiling(attempt, base, cap).as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=ceil))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const BASE: Duration = Duration::from_secs(5);
    const CAP: Duration = Duration::from_secs(3600);

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let secs: Vec<u64> = (1..=12).map(|n| ceiling(n, BASE, CAP).as_secs()).collect();
        assert_eq!(
            secs,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(ceiling(0, BASE, CAP), BASE);
        assert_eq!(ceiling(1000, BASE, CAP), CAP);
        assert_eq!(ceiling(u32::MAX, Duration::MAX, CAP), CAP);
    }

    #[test]
    fn delays_stay_within_bounds_and_spread() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=20 {
            let ceil = ceiling(attempt, BASE, CAP);
            let draws: Vec<Duration> = (0..200)
                .map(|_| delay(attempt, BASE, CAP, &mut rng))
                .collect();
            assert!(draws.iter().all(|d| *d <= ceil), "attempt {attempt}");
            // Jittered: not all the same, and some in each half of the range.
            assert!(draws.iter().any(|d| *d < ceil / 2), "attempt {attempt}");
            assert!(draws.iter().any(|d| *d > ceil / 2), "attempt {attempt}");
        }
    }

    #[test]
    fn delays_grow_on_average() {
        let mut rng = StdRng::seed_from_u64(42);
        let mean = |attempt, rng: &mut StdRng| {
            (0..500)
                .map(|_| delay(attempt, BASE, CAP, rng).as_millis())
                .sum::<u128>()
                / 500
        };
        let means: Vec<u128> = (1..=8).map(|n| mean(n, &mut rng)).collect();
        assert!(means.windows(2).all(|w| w[0] < w[1]), "{means:?}");
    }

    #[test]
    fn deterministic_under_a_seeded_rng() {
        let a: Vec<_> = {
            let mut rng = StdRng::seed_from_u64(1);
            (1..10).map(|n| delay(n, BASE, CAP, &mut rng)).collect()
        };
        let b: Vec<_> = {
            let mut rng = StdRng::seed_from_u64(1);
            (1..10).map(|n| delay(n, BASE, CAP, &mut rng)).collect()
        };
        assert_eq!(a, b);
    }
}
