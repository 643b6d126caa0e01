//! Governor on Tokio's clock, and a check that never refuses on a stale clock reading.

use std::time::Duration;

use governor::{
    clock::Clock,
    middleware::{StateInformationMiddleware, StateSnapshot},
    nanos::Nanos,
    state::{InMemoryState, NotKeyed},
};

/// Governor's clock on Tokio's: paused test time drives the limiter.
#[derive(Clone, Copy, Debug)]
pub(super) struct TokioClock {
    pub(super) base: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(tokio::time::Instant::now().saturating_duration_since(self.base))
    }
}

pub(super) type Governor =
    governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

/// How many times [`check_fresh`] checks again after a refusal that a fresh clock reading
/// shows to be stale.
const STALE_RETRIES: u32 = 8;

/// One check of `limiter`, refused only when the wait is above zero on a fresh clock reading.
///
/// governor reads the clock once, before its compare-and-swap. A thread paused between the
/// two (preempted, say) judges its request at that past instant against a state that requests
/// arriving meanwhile have moved on, and is refused although the allowance is there now: seen
/// in a benchmark with 2 tasks (a burst of 4,000 at 1 ns refused, with a wait of 0). A stale
/// refusal is checked again with a new reading; a limit that is really spent still refuses, with
/// the wait measured from now.
pub(super) fn check_fresh<C>(
    limiter: &governor::RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>,
    clock: &C,
    interval: Duration,
) -> Result<StateSnapshot, Duration>
where
    C: Clock<Instant = Nanos>,
{
    for _ in 0..STALE_RETRIES {
        match limiter.check() {
            Ok(snapshot) => return Ok(snapshot),
            Err(not_until) => {
                let wait = not_until.wait_time_from(clock.now());
                if !wait.is_zero() {
                    return Err(wait);
                }
            }
        }
    }
    // Stale again and again: other requests keep taking the allowance as it comes back.
    Err(interval)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::rate::Rate;

    /// A clock that reads out a script, one instant per reading, repeating the last.
    #[derive(Clone)]
    struct Script(Arc<Mutex<Vec<u64>>>);

    impl Script {
        fn then(&self, nanos: &[u64]) {
            let mut script = self.0.lock().unwrap();
            script.clear();
            script.extend(nanos.iter().rev());
        }
    }

    impl Clock for Script {
        type Instant = Nanos;

        fn now(&self) -> Nanos {
            let mut script = self.0.lock().unwrap();
            let now = if script.len() > 1 {
                script.pop()
            } else {
                script.last().copied()
            };
            Nanos::from(now.unwrap_or(0))
        }
    }

    type Limiter =
        governor::RateLimiter<NotKeyed, InMemoryState, Script, StateInformationMiddleware>;

    /// A limiter of 2 per 2 µs whose burst two requests at 10 µs have spent (1 µs apart).
    fn spent() -> (Script, Limiter) {
        let clock = Script(Arc::default());
        clock.then(&[0]);
        let rate = Rate::new(2, Duration::from_micros(2));
        let limiter = Limiter::new(
            rate.quota().unwrap(),
            InMemoryState::default(),
            clock.clone(),
        );
        clock.then(&[10_000]);
        assert!(check_fresh(&limiter, &clock, INTERVAL).is_ok());
        assert!(check_fresh(&limiter, &clock, INTERVAL).is_ok());
        (clock, limiter)
    }

    const INTERVAL: Duration = Duration::from_micros(1);

    #[test]
    fn a_request_judged_on_a_stale_reading_is_checked_again() {
        let (clock, limiter) = spent();
        // A thread that read 5 µs, then was paused until 50 µs before its compare-and-swap:
        // governor refuses it, yet the allowance is back by now.
        clock.then(&[5_000, 50_000]);
        assert!(limiter.check().is_err(), "governor alone refuses it");
        clock.then(&[5_000, 50_000]);
        assert!(check_fresh(&limiter, &clock, INTERVAL).is_ok());
    }

    #[test]
    fn a_spent_limit_still_refuses_with_the_wait_from_now() {
        let (clock, limiter) = spent();
        // Read at 10 µs, checked at 10.4 µs: the next allowance comes at 11 µs.
        clock.then(&[10_000, 10_400]);
        assert_eq!(
            check_fresh(&limiter, &clock, INTERVAL),
            Err(Duration::from_nanos(600))
        );
    }

    #[test]
    fn a_reading_stale_every_time_ends_in_a_refusal() {
        let (clock, limiter) = spent();
        let mut script = Vec::new();
        for _ in 0..STALE_RETRIES {
            script.extend([5_000, 50_000]);
        }
        script.push(5_000);
        clock.then(&script);
        assert_eq!(check_fresh(&limiter, &clock, INTERVAL), Err(INTERVAL));
    }
}
