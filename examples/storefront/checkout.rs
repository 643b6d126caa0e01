//! The order saga: checkout as an orchestrated saga with a durable log. Its steps place the
//! order, charge it (or queue the charge), reserve the stock and book the shipment; when one
//! refuses, the steps before it are undone newest first (the shipment cancelled, the stock
//! given back, the charge refunded or taken out of the queue, the order cancelled). A restart
//! finishes the sagas a crash left open.

use std::time::Duration;

use serde_json::{Value, json};
use tower::{ServiceExt, service_fn};
use tower_patterns::{
    BoxError,
    eventstore::{
        Command, CommandService, Committed, Direction, EventStore, Repository, RepositoryError,
    },
    saga::{
        Attempts, Backoff, Orchestrator, SagaDefinition, Step, StepError, StepRequest, StepService,
    },
    tenant::TenantId,
};

use crate::{
    backend::{self, Index, Store},
    ledger::Ledger,
    orders::{Order, OrderCommand, OrderError, OrderEvent},
    payments::{Charge, Payment, Payments},
    routes::stream_id,
    shards::Shards,
};

/// The orchestrator of the order saga.
pub(crate) type Checkout = Orchestrator<Store, Index>;

/// What one checkout is about.
pub(crate) struct Checkout1<'a> {
    pub(crate) tenant: &'a TenantId,
    pub(crate) customer: &'a str,
    pub(crate) shard: usize,
    pub(crate) order: &'a str,
    pub(crate) sku: &'a str,
    pub(crate) qty: u32,
    pub(crate) amount: i64,
}

/// What a checkout is started with.
pub(crate) fn input(c: &Checkout1<'_>) -> Value {
    json!({
        "tenant": c.tenant.as_str(), "customer": c.customer, "shard": c.shard,
        "order": c.order, "sku": c.sku, "qty": c.qty, "amount": c.amount,
    })
}

/// The fields of a step's input.
struct Input {
    tenant: TenantId,
    customer: String,
    shard: usize,
    order: String,
    sku: String,
    qty: u32,
    amount: i64,
}

impl Input {
    fn of(req: &StepRequest) -> Result<Self, BoxError> {
        let v = &*req.input;
        let text = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("checkout input without {k}"))
        };
        Ok(Self {
            tenant: TenantId::new(&text("tenant")?)?,
            customer: text("customer")?,
            shard: v["shard"]
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or("checkout input without shard")?,
            order: text("order")?,
            sku: text("sku")?,
            qty: v["qty"]
                .as_u64()
                .and_then(|q| u32::try_from(q).ok())
                .ok_or("checkout input without qty")?,
            amount: v["amount"]
                .as_i64()
                .ok_or("checkout input without amount")?,
        })
    }

    fn stream(&self) -> String {
        stream_id(&self.tenant, &self.order)
    }

    /// The orders of this checkout's shard.
    fn orders<'a>(&self, shards: &'a Shards) -> Result<&'a Repository<Order, Store>, BoxError> {
        Ok(&shards
            .all
            .get(self.shard)
            .ok_or("checkout input names no shard")?
            .orders)
    }
}

/// Sends `command` to the order; the order's own refusals come back as `Err(Ok(e))`.
async fn order(
    orders: &Repository<Order, Store>,
    stream: String,
    command: OrderCommand,
) -> Result<Committed, Result<OrderError, BoxError>> {
    match CommandService::new(orders.clone())
        .oneshot(Command::new(stream, command))
        .await
    {
        Ok(committed) => Ok(committed),
        Err(RepositoryError::Domain(e)) => Err(Ok(e)),
        Err(e) => Err(Err(e.into())),
    }
}

/// A step's service from an async function of its request.
fn step_fn<F, Fut>(f: F) -> StepService
where
    F: Fn(StepRequest) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, BoxError>> + Send + 'static,
{
    StepService::new(service_fn(f))
}

/// The shipping step (`booked`) or its compensation (`cancelled`): the order's shipment, under
/// the saga's id, recorded in the ledger with that status. Booked, it answers the shipment's
/// id; cancelled, its status.
fn shipment(ledger: Ledger, status: &'static str) -> StepService {
    step_fn(move |req| {
        let ledger = ledger.clone();
        async move {
            let i = Input::of(&req)?;
            let id = req.saga.to_string();
            ledger
                .ship(id.clone(), i.tenant.as_str().to_owned(), i.order, status)
                .await?;
            let answer = if status == "booked" {
                id
            } else {
                status.to_owned()
            };
            Ok(json!({ "shipment": answer }))
        }
    })
}

/// The saga's definition over the storefront's services.
pub(crate) fn definition(
    shards: Shards,
    payments: Payments,
    ledger: Ledger,
) -> Result<SagaDefinition, BoxError> {
    let retry_undo = Attempts::new(5, Backoff::Constant(Duration::from_millis(200)));

    let o = shards.clone();
    let place = step_fn(move |req| {
        let o = o.clone();
        async move {
            let i = Input::of(&req)?;
            let command = OrderCommand::Place {
                sku: i.sku.clone(),
                qty: i.qty,
                customer: i.customer.clone(),
            };
            match order(i.orders(&o)?, i.stream(), command).await {
                // Placed now, or by an earlier attempt of this step.
                Ok(_) | Err(Ok(OrderError::AlreadyPlaced)) => Ok(json!({ "order": i.order })),
                Err(Ok(e)) => Err(StepError::refused(e.phrase()).into()),
                Err(Err(e)) => Err(e),
            }
        }
    });
    let o = shards.clone();
    let cancel = step_fn(move |req| {
        let o = o.clone();
        async move {
            let i = Input::of(&req)?;
            let command = OrderCommand::Cancel {
                reason: "checkout undone".into(),
            };
            match order(i.orders(&o)?, i.stream(), command).await {
                // Never placed: nothing to undo.
                Ok(_) | Err(Ok(OrderError::NotPlaced)) => Ok(json!({ "cancelled": true })),
                Err(Ok(e)) => Err(e.phrase().into()),
                Err(Err(e)) => Err(e),
            }
        }
    });

    let charge = step_fn(move |req| {
        let payments = payments.clone();
        async move {
            let i = Input::of(&req)?;
            let payment = Payment {
                shard: i.shard,
                tenant: i.tenant.as_str().to_owned(),
                order: i.order,
                amount: i.amount,
            };
            match payments.oneshot(payment).await {
                Ok(Charge::Charged(charge)) => Ok(json!({ "charge": charge })),
                Ok(Charge::Queued) => Ok(json!({ "queued": true })),
                // The client retried already: a failure here is the provider's final answer.
                Err(e) => {
                    tracing::info!(error = %e, "payment failed");
                    Err(StepError::refused("payment failed").into())
                }
            }
        }
    });
    let l = ledger.clone();
    let refund = step_fn(move |req| {
        let l = l.clone();
        async move {
            let i = Input::of(&req)?;
            let out = req.outputs.get("payment").cloned().unwrap_or(Value::Null);
            if let Some(charge) = out["charge"].as_str() {
                l.refund(
                    req.key.to_string(),
                    i.tenant.as_str().to_owned(),
                    i.order.clone(),
                    charge.to_owned(),
                )
                .await?;
                tracing::info!(order = %i.order, charge, "refunded");
            }
            let dequeued = l.dequeue(i.tenant.as_str(), &i.order).await?;
            Ok(json!({ "refunded": out["charge"], "dequeued": dequeued }))
        }
    });

    let l = ledger.clone();
    let reserve = step_fn(move |req| {
        let l = l.clone();
        async move {
            let i = Input::of(&req)?;
            let key = format!("{}/{}", req.saga, req.step);
            if l.reserve(
                key,
                i.tenant.as_str().to_owned(),
                i.sku.clone(),
                i64::from(i.qty),
            )
            .await?
            {
                Ok(json!({ "reserved": i.qty }))
            } else {
                Err(StepError::refused("out of stock").into())
            }
        }
    });
    let l = ledger.clone();
    let release = step_fn(move |req| {
        let l = l.clone();
        async move {
            let released = l.release(format!("{}/{}", req.saga, req.step)).await?;
            Ok(json!({ "released": released }))
        }
    });

    let ship = shipment(ledger.clone(), "booked");
    let unship = shipment(ledger, "cancelled");

    let complete = step_fn(move |req| {
        let o = shards.clone();
        async move {
            let i = Input::of(&req)?;
            let outcome = match req
                .outputs
                .get("payment")
                .and_then(|p| p["charge"].as_str())
            {
                Some(charge) => OrderEvent::Paid {
                    charge: charge.to_owned(),
                },
                None => OrderEvent::PaymentQueued,
            };
            let orders = i.orders(&o)?;
            match order(orders, i.stream(), OrderCommand::Settle(outcome)).await {
                // The position the read model must reach to show it: the client's token.
                Ok(c) => Ok(json!({ "position": c.positions.last() })),
                // Settled by an earlier attempt: its position is the stream's last.
                Err(Ok(OrderError::Settled)) => {
                    let stream = format!("{}{}", crate::shards::ORDER_PREFIX, i.stream());
                    let last = orders
                        .store()
                        .read_stream(&stream, u64::MAX, Direction::Backward, 1)
                        .await?;
                    Ok(json!({ "position": last.first().map(|e| e.position) }))
                }
                Err(Ok(e)) => Err(e.phrase().into()),
                Err(Err(e)) => Err(e),
            }
        }
    });

    let timeout = Duration::from_secs(30);
    Ok(SagaDefinition::builder("checkout")
        .step(
            Step::new("order", place)
                .compensate_with(cancel)
                .compensation_retry(retry_undo)
                .timeout(timeout),
        )
        .step(
            Step::new("payment", charge)
                .compensate_with(refund)
                .compensation_retry(retry_undo)
                .failure_reason("payment failed")
                .timeout(timeout),
        )
        .step(
            Step::new("inventory", reserve)
                .compensate_with(release)
                .compensation_retry(retry_undo)
                .failure_reason("out of stock")
                .timeout(timeout),
        )
        .step(
            Step::new("shipping", ship)
                .compensate_with(unship)
                .compensation_retry(retry_undo)
                .timeout(timeout),
        )
        .step(Step::new("complete", complete).retry(Attempts::new(
            5,
            Backoff::Constant(Duration::from_millis(200)),
        )))
        .build()?)
}

/// The orchestrator over the saga log and index (in `dir`, or in PostgreSQL), after taking back
/// the sagas a crash
/// left open; its worker runs until the last clone is dropped.
pub(crate) async fn orchestrator(
    dir: &std::path::Path,
    postgres: Option<&str>,
    definition: SagaDefinition,
) -> Result<Checkout, BoxError> {
    let log = backend::store(dir, postgres, "checkout-log").await?;
    let index = backend::index(dir, &log).await?;
    let orchestrator = Orchestrator::builder("checkout")
        .store(std::sync::Arc::new(log))
        .index(index)
        .owner("storefront")
        .saga(definition)
        .build()?;
    let recovered = orchestrator.recover().await?;
    if recovered > 0 {
        tracing::info!(recovered, "checkouts left open by the last run taken back");
    }
    orchestrator.spawn_worker();
    Ok(orchestrator)
}
