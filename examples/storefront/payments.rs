//! The payment client (fallback, retry, circuit breaker, timeout, bulkhead) over a simulated
//! provider whose failures come from a chaos layer that `/admin/provider/{state}` switches.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tower::{ServiceBuilder, service_fn, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError,
    breaker::{CircuitBreakerHandle, CircuitBreakerLayer, FallbackLayer},
    bulkhead::{BulkheadHandle, BulkheadLayer},
    chaos::{AnswerAsError, ChaosHandle, ChaosLayer, Fault},
    retry::{RetryPolicy, RetryPolicyHandle},
};

use crate::ledger::Ledger;

/// How long the provider takes to answer in `/admin/provider/slow`.
pub(crate) const SLOW_PROVIDER: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub(crate) struct Payment {
    /// The shard that holds the order, for the queue.
    pub(crate) shard: usize,
    pub(crate) tenant: String,
    pub(crate) order: String,
    pub(crate) amount: i64,
}

#[derive(Clone, Debug)]
pub(crate) enum Charge {
    Charged(String),
    Queued,
}

pub(crate) type Payments = BoxCloneSyncService<Payment, Charge, BoxError>;

/// The simulated payment provider's states, switched by `/admin/provider/{state}`.
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
    /// The documented states of `/admin/provider/{state}`; anything else names no state.
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

/// How the payment client is tuned: the storefront's defaults, shorter for the demo.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PaymentSettings {
    /// How long the breaker stays open before it lets a probe through.
    pub(crate) open: Duration,
    /// How long one attempt may take.
    pub(crate) attempt_timeout: Duration,
    /// How many charges may be in flight to the provider at once.
    pub(crate) max_concurrent: u32,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            open: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(2),
            max_concurrent: 64,
        }
    }
}

/// The payment client and what reads it.
#[derive(Clone)]
pub(crate) struct PaymentClient {
    /// The whole client: a payment the breaker or the bulkhead refuses is queued.
    pub(crate) client: Payments,
    /// The same client without the fallback, for the worker that drains the queue (a refusal
    /// leaves the payment in the queue rather than queueing it again).
    pub(crate) direct: Payments,
    pub(crate) breaker: CircuitBreakerHandle,
    pub(crate) bulkhead: BulkheadHandle,
    pub(crate) retry: RetryPolicyHandle,
    /// The provider's failures.
    pub(crate) chaos: ChaosHandle,
    /// Attempts the timeout cut short.
    pub(crate) timeouts: Arc<AtomicU64>,
}

/// The payment client, in the order of `docs/patterns/retry.md`: the fallback queues the
/// payment (durably, in the ledger) when the breaker or the bulkhead refuses it; the retry
/// makes up to two attempts, each one call the breaker judges (and stops at an open breaker: a
/// `Rejected` is never retried); a timeout per attempt; a bulkhead around the provider; the
/// chaos layer that makes the provider fail or slow down. `attempts` counts the calls sent to
/// the provider (failed by chaos or not).
pub(crate) fn payments(
    settings: PaymentSettings,
    attempts: Arc<AtomicU64>,
    ledger: Ledger,
) -> Result<PaymentClient, BoxError> {
    let provider = service_fn(|p: Payment| async move {
        Ok::<_, BoxError>(Charge::Charged(format!("ch_{}_{}", p.order, p.amount)))
    });
    let chaos = ChaosLayer::builder("payment-provider")
        .answer_with(AnswerAsError)
        .build()?;
    let provider_chaos = chaos.handle();
    let enqueue = service_fn(move |p: Payment| {
        let ledger = ledger.clone();
        async move {
            ledger
                .enqueue(p.shard, &p.tenant, &p.order, p.amount)
                .await?;
            tracing::info!(order = %p.order, "payment queued: the provider is refused for now");
            Ok::<_, BoxError>(Charge::Queued)
        }
    });
    // Three failed attempts in a row open it: the two of a first failed order, then the
    // first of the next, whose retry the open breaker refuses (so that order is queued).
    let breaker = CircuitBreakerLayer::builder("payments")
        .no_failure_rate()
        .consecutive_failures(3)
        .open_duration(settings.open)
        // One good charge after the open time closes it: the queue's worker sends it.
        .half_open_probes(1)
        .build()?;
    let retry = RetryPolicy::builder("payments").max_attempts(2).build()?;
    let bulkhead = BulkheadLayer::builder("payments")
        .max_concurrent(settings.max_concurrent)
        .build()?;
    let handles = (breaker.handle(), bulkhead.handle(), retry.handle());
    let timeouts = Arc::new(AtomicU64::new(0));
    let count_timeouts = {
        let timeouts = timeouts.clone();
        move |e: BoxError| {
            if e.is::<tower::timeout::error::Elapsed>() {
                timeouts.fetch_add(1, Ordering::Relaxed);
            }
            e
        }
    };
    let direct = ServiceBuilder::new()
        .layer(retry.layer())
        .layer(breaker)
        .map_err(count_timeouts)
        .timeout(settings.attempt_timeout)
        .layer(bulkhead)
        .map_request(move |p: Payment| {
            attempts.fetch_add(1, Ordering::SeqCst);
            p
        })
        .layer(chaos)
        .service(provider);
    let direct = BoxCloneSyncService::new(direct);
    let client = ServiceBuilder::new()
        .layer(FallbackLayer::service(enqueue).on_rejection_only())
        .service(direct.clone());
    Ok(PaymentClient {
        client: BoxCloneSyncService::new(client),
        direct,
        breaker: handles.0,
        bulkhead: handles.1,
        retry: handles.2,
        chaos: provider_chaos,
        timeouts,
    })
}
