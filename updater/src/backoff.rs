//! Waiting before trying again, for the HTTP source's retries and the fleet
//! client's polls alike: a first wait that doubles after each failure up to
//! a ceiling, and a random lengthening so that devices do not retry in step.

use std::time::Duration;

/// Doubling waits: `first` after the first failure, twice that after the
/// second, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after `failures` failures in a row (none: no wait).
    pub fn after(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        // 2^16 times any first wait is past every ceiling in use.
        let factor = 2u32.pow((failures - 1).min(16));
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// `wait` lengthened by `random` tenths of itself (`random` in 0..1):
/// devices that start together (a site's power back, the end of an outage)
/// drift apart rather than call a server in step. Never shorter than
/// `wait`, so what a server asked is honoured.
pub fn lengthened(wait: Duration, random: f64) -> Duration {
    wait + wait.mul_f64(random.clamp(0.0, 1.0) / 10.0)
}

/// [`lengthened`] by a random amount.
pub fn jittered(wait: Duration) -> Duration {
    lengthened(wait, fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_first_up_to_the_ceiling() {
        let b = Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        let waits: Vec<u128> = (0..10).map(|f| b.after(f).as_millis()).collect();
        assert_eq!(
            waits,
            [0, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.after(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_lengthens_by_at_most_a_tenth_and_never_shortens() {
        let asked = Duration::from_secs(100);
        assert_eq!(lengthened(asked, 0.0), asked);
        assert_eq!(lengthened(asked, 0.5), Duration::from_secs(105));
        assert_eq!(lengthened(asked, 7.0), Duration::from_secs(110));
        let waits: Vec<Duration> = (0..50).map(|_| jittered(asked)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= asked && *w <= asked + asked / 10));
        assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
    }
}
