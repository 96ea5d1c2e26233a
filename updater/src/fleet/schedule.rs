//! When the fleet client polls next: as the server asks (within the
//! config's `max_poll_s`), backing off after failures, honouring a 429's
//! `Retry-After`, always lengthened a little at random (docs/fleet.md,
//! "On paper: 10,000 devices, one server"). Pure: the client passes in what happened and the random
//! draw, so every case is a row of a table test.

use crate::backoff::{lengthened, Backoff};
use std::time::Duration;

/// Wait after the first failed poll; doubles up to `max_poll_s`.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Poll interval when the server names none.
pub const DEFAULT_SLEEP: Duration = Duration::from_secs(60);
/// The shortest wait, whatever a server asks: a server that says "0" must
/// not be polled in a busy loop.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// How the last cycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Last {
    /// The server answered; it asks for this sleep (None: it named none).
    Answered { sleep: Option<Duration> },
    /// The cycle failed, the `failures`-th time in a row; `retry_after`
    /// is the `Retry-After` of a 429, when the failure was one with it.
    Failed {
        failures: u32,
        retry_after: Option<Duration>,
    },
}

/// The wait before the next poll. `max` is `max_poll_s`; `random` is a
/// draw in 0..1 for the jitter.
pub fn next_wait(last: Last, max: Duration, random: f64) -> Duration {
    let max = max.max(MIN_WAIT);
    let wait = match last {
        Last::Answered { sleep } => sleep.unwrap_or(DEFAULT_SLEEP),
        Last::Failed {
            failures,
            retry_after,
        } => {
            let backoff = Backoff {
                first: FIRST_BACKOFF,
                max,
            }
            .after(failures);
            // The server's Retry-After the first time; a server that keeps
            // refusing gets at least half the growing back-off, so that a
            // storm of 429s with a short Retry-After still slows the fleet.
            match retry_after {
                Some(after) if failures <= 1 => after,
                Some(after) => after.max(backoff / 2),
                None => backoff,
            }
        }
    };
    lengthened(wait.clamp(MIN_WAIT, max), random)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(300);

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    fn failed(failures: u32, retry_after: Option<Duration>) -> Last {
        Last::Failed {
            failures,
            retry_after,
        }
    }

    #[test]
    fn the_servers_sleep_is_kept_within_one_second_and_max_poll() {
        for (sleep, want) in [
            (secs(30), 30),
            (None, 60),
            (secs(0), 1),
            (secs(86_400), 300),
            (secs(300), 300),
        ] {
            let got = next_wait(Last::Answered { sleep }, MAX, 0.0);
            assert_eq!(got, Duration::from_secs(want), "sleep {sleep:?}");
        }
    }

    #[test]
    fn failures_back_off_from_five_seconds_doubling_up_to_max_poll() {
        let waits: Vec<u64> = (1..=9)
            .map(|f| next_wait(failed(f, None), MAX, 0.0).as_secs())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        // A max_poll_s below the first back-off is the ceiling.
        assert_eq!(
            next_wait(failed(1, None), Duration::from_secs(2), 0.0),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn a_storm_of_429s_gets_retry_after_once_then_at_least_half_the_back_off() {
        // Retry-After: 2 on every reply.
        let waits: Vec<f64> = (1..=8)
            .map(|f| next_wait(failed(f, secs(2)), MAX, 0.0).as_secs_f64())
            .collect();
        assert_eq!(waits, [2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 150.0, 150.0]);
        // A long Retry-After is honoured as asked, within max_poll_s.
        assert_eq!(
            next_wait(failed(3, secs(200)), MAX, 0.0),
            Duration::from_secs(200)
        );
        assert_eq!(next_wait(failed(1, secs(3600)), MAX, 0.0), MAX);
        // Retry-After: 0 is no busy loop.
        assert_eq!(
            next_wait(failed(1, secs(0)), MAX, 0.0),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn every_wait_is_lengthened_by_up_to_a_tenth_never_shortened() {
        for last in [
            Last::Answered { sleep: secs(100) },
            failed(4, None),
            failed(1, secs(100)),
        ] {
            let low = next_wait(last, MAX, 0.0);
            let high = next_wait(last, MAX, 0.999_999);
            assert!(
                high > low && high <= low + low / 10,
                "{last:?}: {low:?} {high:?}"
            );
        }
    }
}
