//! How long a client waits before it tries to connect again after its session failed:
//! exponential backoff with full jitter. Attempt `n` (from 0) waits a uniformly random time in
//! `[0, min(cap, base * 2^n)]`, so that a fleet whose server came back does not reconnect in
//! lockstep (each device's wait is its own draw, and the spread doubles with every failure),
//! while the first attempt after a loss can be almost immediate. Sans-IO: the random source is
//! an argument, and the caller sleeps.

use std::time::Duration;

use crate::proto::rng::Rng;

/// The reconnection schedule of a client session. Off unless asked for
/// ([`ReconnectPolicy::new`]); [`ReconnectPolicy::default`] gives 1 s, 60 s and no limit on
/// attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The spread of the first attempt's wait; each failed attempt doubles it.
    pub base: Duration,
    /// The largest spread: waits never exceed it.
    pub cap: Duration,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// Waits spread over `base`, doubling up to `cap`, without a limit on attempts. A `cap`
    /// below `base` is raised to it.
    pub fn new(base: Duration, cap: Duration) -> Self {
        ReconnectPolicy {
            base,
            cap: cap.max(base),
            max_attempts: None,
        }
    }

    /// Gives up after `attempts` failed attempts in a row.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// The largest wait of attempt `attempt` (from 0): `min(cap, base * 2^attempt)`.
    pub fn spread(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before attempt `attempt` (from 0), drawn from `rng`: uniform in
    /// `[0, spread(attempt)]` ("full jitter"). `None` once `max_attempts` failed.
    pub fn delay(&self, attempt: u32, rng: &mut Rng) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        Some(self.spread(attempt).mul_f64(rng.next_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_doubles_from_base_up_to_the_cap() {
        let policy = ReconnectPolicy::new(Duration::from_millis(500), Duration::from_secs(10));
        let spreads: Vec<_> = (0..7).map(|n| policy.spread(n).as_millis()).collect();
        assert_eq!(spreads, vec![500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(
            policy.spread(u32::MAX),
            Duration::from_secs(10),
            "no overflow"
        );
    }

    #[test]
    fn every_wait_is_a_full_jitter_draw_within_its_spread() {
        let policy = ReconnectPolicy::new(Duration::from_secs(1), Duration::from_secs(8));
        let mut rng = Rng::seeded(7);
        for attempt in 0..6 {
            let draws: Vec<_> = (0..1000)
                .map(|_| policy.delay(attempt, &mut rng).unwrap())
                .collect();
            let spread = policy.spread(attempt);
            assert!(draws.iter().all(|d| *d <= spread), "attempt {attempt}");
            // Spread over the whole range, not bunched: about half fall in each half.
            let low = draws.iter().filter(|d| **d < spread / 2).count();
            assert!(
                (400..600).contains(&low),
                "attempt {attempt}: {low} of 1000 low"
            );
        }
    }

    #[test]
    fn a_limit_on_attempts_ends_the_schedule() {
        let policy = ReconnectPolicy::default().with_max_attempts(3);
        let mut rng = Rng::seeded(1);
        assert!((0..3).all(|n| policy.delay(n, &mut rng).is_some()));
        assert_eq!(policy.delay(3, &mut rng), None);
        assert!(ReconnectPolicy::default()
            .delay(1_000_000, &mut rng)
            .is_some());
    }

    #[test]
    fn the_same_seed_draws_the_same_schedule() {
        let policy = ReconnectPolicy::default();
        let draw = |seed| {
            let mut rng = Rng::seeded(seed);
            (0..5)
                .map(|n| policy.delay(n, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4), "devices seeded apart wait apart");
    }
}
