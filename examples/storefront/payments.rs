//! The payment client (fallback, retry, circuit breaker, timeout, bulkhead) over a simulated
//! provider whose failures come from a chaos layer that `/gateway/{state}` switches.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tower::{ServiceBuilder, service_fn, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError,
    breaker::{CircuitBreakerHandle, CircuitBreakerLayer, FallbackLayer},
    bulkhead::BulkheadLayer,
    chaos::{AnswerAsError, ChaosHandle, ChaosLayer, Fault},
    retry::RetryPolicy,
};

/// How long the provider takes to answer in `/gateway/slow`.
pub(crate) const SLOW_PROVIDER: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub(crate) struct Payment {
    pub(crate) order: String,
    pub(crate) amount: i64,
}

#[derive(Clone, Debug)]
pub(crate) enum Charge {
    Charged(String),
    Queued,
}

pub(crate) type Payments = BoxCloneSyncService<Payment, Charge, BoxError>;

/// The simulated payment provider's states, switched by `/gateway/{state}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Provider {
    /// Charges at once.
    Up,
    /// Fails every charge.
    Down,
    /// Charges after [`SLOW_PROVIDER`].
    Slow,
}

impl Provider {
    /// The documented states of `/gateway/{state}`; anything else names no state.
    pub(crate) fn parse(state: &str) -> Option<Self> {
        match state {
            "up" => Some(Self::Up),
            "down" => Some(Self::Down),
            "slow" => Some(Self::Slow),
            _ => None,
        }
    }

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Slow => "slow",
        }
    }

    /// Puts the provider in this state through its chaos layer's handle: no fault, an error
    /// on every charge, or [`SLOW_PROVIDER`] of latency on every charge.
    pub(crate) fn apply(self, chaos: &ChaosHandle) -> Result<(), BoxError> {
        match self {
            Self::Up => chaos.clear(),
            Self::Down => chaos.set([Fault::error(|| "payment provider unavailable".into())])?,
            Self::Slow => chaos.set([Fault::latency(SLOW_PROVIDER)])?,
        }
        Ok(())
    }
}

/// The payment client, in the order of `docs/patterns/retry.md`: the fallback queues the
/// payment when the breaker refuses it; the retry makes up to two attempts, each one call the
/// breaker judges (and stops at an open breaker: a `Rejected` is never retried); a timeout
/// per attempt; a bulkhead around the provider; the chaos layer that makes the provider fail
/// or slow down. `attempts` counts the calls sent to the provider (failed by chaos or not).
pub(crate) fn payments(
    attempts: Arc<AtomicU64>,
    queue: Arc<Mutex<Vec<Payment>>>,
) -> Result<(Payments, CircuitBreakerHandle, ChaosHandle), BoxError> {
    let provider = service_fn(|p: Payment| async move {
        Ok::<_, BoxError>(Charge::Charged(format!("ch_{}_{}", p.order, p.amount)))
    });
    let chaos = ChaosLayer::builder("payment-provider")
        .answer_with(AnswerAsError)
        .build()?;
    let provider_chaos = chaos.handle();
    let enqueue = service_fn(move |p: Payment| {
        let queue = queue.clone();
        async move {
            queue
                .lock()
                .map_err(|_| BoxError::from("queue lock poisoned"))?
                .push(p);
            Ok::<_, BoxError>(Charge::Queued)
        }
    });
    // Three failed attempts in a row open it: the two of a first failed order, then the
    // first of the next, whose retry the open breaker refuses (so that order is queued).
    let breaker = CircuitBreakerLayer::builder("payments")
        .no_failure_rate()
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(30))
        .build()?;
    let handle = breaker.handle();
    let client = ServiceBuilder::new()
        .layer(FallbackLayer::service(enqueue).on_rejection_only())
        .layer(
            RetryPolicy::builder("payments")
                .max_attempts(2)
                .build()?
                .leak()
                .layer(),
        )
        .layer(breaker)
        .timeout(Duration::from_secs(2))
        .layer(
            BulkheadLayer::builder("payments")
                .max_concurrent(64)
                .build()?,
        )
        .map_request(move |p: Payment| {
            attempts.fetch_add(1, Ordering::SeqCst);
            p
        })
        .layer(chaos)
        .service(provider);
    Ok((BoxCloneSyncService::new(client), handle, provider_chaos))
}
