//! The worker that drains queued payments once the payment provider is reachable again, and
//! the handle that shows the queue.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tower::ServiceExt;
use tower_patterns::{
    BoxError, Rejected,
    breaker::{CircuitBreakerHandle, State},
    eventstore::{Command, CommandService},
    observe::{Health, Report, StateHandle},
    tenant::TenantId,
};

use crate::{
    ledger::Ledger,
    orders::{OrderCommand, Status},
    payments::{Charge, Payment, Payments},
    routes::stream_id,
    shards::Shards,
};

/// How often the worker looks at the queue when no breaker transition wakes it.
pub(crate) const SWEEP: Duration = Duration::from_millis(500);
/// The most payments one sweep sends.
const BATCH: u32 = 32;

/// The queue's counts, shared by the worker and its handle.
#[derive(Clone)]
pub(crate) struct QueueHandle {
    ledger: Ledger,
    drained: Arc<AtomicU64>,
}

impl QueueHandle {
    /// Payments sent and recorded as paid since the start.
    pub(crate) fn drained(&self) -> u64 {
        self.drained.load(Ordering::Relaxed)
    }

    /// Payments waiting now.
    pub(crate) fn queued(&self) -> u64 {
        self.ledger.queue_depth().0
    }
}

impl StateHandle for QueueHandle {
    fn pattern(&self) -> &'static str {
        "payment_queue"
    }

    fn name(&self) -> &str {
        "payments"
    }

    /// Degraded while payments wait. Values: `queued`, `drained`, `oldest_seconds`.
    fn report(&self) -> Report {
        let (queued, oldest) = self.ledger.queue_depth();
        let health = if queued == 0 {
            Health::Ready
        } else {
            Health::Degraded
        };
        let state = if queued == 0 { "empty" } else { "waiting" };
        metrics::gauge!("storefront_payment_queue").set(queued as f64);
        Report::new("payment_queue", "payments", health, state)
            .with_value("queued", queued as f64)
            .with_value("drained", self.drained() as f64)
            .with_value("oldest_seconds", oldest as f64)
    }
}

/// Starts the worker: after every breaker transition, and every [`SWEEP`], while the breaker
/// lets calls through it sends the oldest queued payments through the client without its
/// fallback; each that is charged is recorded on its order and leaves the queue. A refusal
/// (the breaker opened again) ends the sweep and leaves the rest where they are. It stops when
/// `stop` resolves.
pub(crate) fn spawn_drain(
    ledger: Ledger,
    direct: Payments,
    breaker: CircuitBreakerHandle,
    shards: Shards,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> QueueHandle {
    let handle = QueueHandle {
        ledger: ledger.clone(),
        drained: Arc::new(AtomicU64::new(0)),
    };
    let drained = handle.drained.clone();
    let mut transitions = breaker.subscribe();
    metrics::describe_gauge!(
        "storefront_payment_queue",
        "payments waiting for the provider"
    );
    metrics::gauge!("storefront_payment_queue").set(0.0);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = transitions.recv() => {}
                () = tokio::time::sleep(SWEEP) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if matches!(breaker.state(), State::Open | State::ForcedOpen) {
                continue;
            }
            let swept = sweep(&ledger, &direct, &shards).await;
            if let Err(e) = ledger.refresh_depth().await {
                tracing::warn!(error = %e, "the payment queue cannot be counted");
            }
            match swept {
                Ok(0) => {}
                Ok(n) => {
                    let left = ledger.queue_depth().0;
                    drained.fetch_add(n, Ordering::Relaxed);
                    tracing::info!(drained = n, left, "queued payments sent");
                }
                Err(e) => tracing::debug!(error = %e, "queued payments wait"),
            }
        }
    });
    handle
}

/// Sends a batch; how many went through before the first refusal.
async fn sweep(ledger: &Ledger, direct: &Payments, shards: &Shards) -> Result<u64, BoxError> {
    let mut sent = 0;
    for queued in ledger.queued(BATCH).await? {
        let orders = &shards
            .all
            .get(queued.shard)
            .ok_or("a queued payment names no shard")?
            .orders;
        let tenant = TenantId::new(&queued.tenant)?;
        let stream = stream_id(&tenant, &queued.order);
        // Only an order whose checkout ended with its payment queued is charged here: one
        // still in its saga is left for later (the saga may yet undo it), one cancelled or
        // already paid leaves the queue uncharged.
        match orders.load(&stream).await?.state.status {
            Some(Status::PaymentQueued) => {}
            Some(Status::Placed) | None => continue,
            Some(Status::Paid | Status::Cancelled) => {
                ledger.dequeue(&queued.tenant, &queued.order).await?;
                continue;
            }
        }
        let payment = Payment {
            shard: queued.shard,
            tenant: queued.tenant.clone(),
            order: queued.order.clone(),
            amount: queued.amount,
        };
        let charge = match direct.clone().oneshot(payment).await {
            Ok(Charge::Charged(charge)) => charge,
            Ok(Charge::Queued) => {
                return Err("the client without a fallback queued a payment".into());
            }
            // Refused (the breaker opened again, the pool is full): the rest wait too.
            Err(e) if Rejected::find(&*e).is_some() => return Err(e),
            // This charge failed: the next may not.
            Err(e) => {
                tracing::warn!(order = %queued.order, error = %e, "a queued payment failed; it stays queued");
                continue;
            }
        };
        CommandService::new(orders.clone())
            .oneshot(Command::new(stream, OrderCommand::PayQueued { charge }))
            .await?;
        ledger.dequeue(&queued.tenant, &queued.order).await?;
        sent += 1;
    }
    Ok(sent)
}
