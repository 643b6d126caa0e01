//! A payment gateway client with a circuit breaker and
//! fallbacks, served over HTTP with axum.
//!
//! - The breaker opens after 5 gateway failures in a row and stays open 60 s.
//! - While it is open, payments are queued and the client answers `QUEUED` (fallback 1).
//! - On a gateway failure, the user's previous charge of the same amount stands in, if it is
//!   less than an hour old (fallback 2).
//! - A 2 s timeout inside the breaker turns a hung gateway into a failure it counts.
//!
//! ```text
//! cargo run --example payment_gateway --features breaker   # 127.0.0.1:3000 (TP_ADDR to change)
//! curl -s -XPOST 127.0.0.1:3000/charge/alice/100     # CHARGED alice 100
//! curl -s -XPOST 127.0.0.1:3000/gateway/down         # the gateway starts failing
//! curl -s -XPOST 127.0.0.1:3000/charge/alice/100     # CHARGED alice 100 (previous charge)
//! curl -s -XPOST 127.0.0.1:3000/charge/bob/5         # 502 five times in all, then QUEUED
//! curl -s 127.0.0.1:3000/health                      # breaker payment-gateway: open ...
//! ```

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError, KeyError,
    breaker::{CircuitBreakerHandle, CircuitBreakerLayer, FallbackLayer},
    key::key_fn,
    observe::StateHandle,
};

#[derive(Clone, Debug)]
struct Payment {
    user: String,
    amount: u64,
}

#[derive(Clone, Debug)]
struct Charge {
    status: &'static str,
    user: String,
    amount: u64,
}

type Client = BoxCloneSyncService<Payment, Charge, BoxError>;

#[derive(Clone)]
struct App {
    client: Client,
    breaker: CircuitBreakerHandle,
    gateway_up: Arc<AtomicBool>,
    queue: Arc<Mutex<Vec<Payment>>>,
}

/// The payment client: fallbacks outside the breaker, a timeout inside it.
fn client(
    gateway_up: Arc<AtomicBool>,
    queue: Arc<Mutex<Vec<Payment>>>,
) -> (Client, CircuitBreakerHandle) {
    let gateway = service_fn(move |p: Payment| {
        let up = gateway_up.load(Ordering::SeqCst);
        async move {
            if up {
                Ok(Charge {
                    status: "CHARGED",
                    user: p.user,
                    amount: p.amount,
                })
            } else {
                Err(BoxError::from("payment gateway unavailable"))
            }
        }
    });
    let enqueue = service_fn(move |p: Payment| {
        let queue = queue.clone();
        async move {
            queue.lock().unwrap().push(p.clone());
            Ok::<_, BoxError>(Charge {
                status: "QUEUED",
                user: p.user,
                amount: p.amount,
            })
        }
    });
    let breaker = CircuitBreakerLayer::builder("payment-gateway")
        .no_failure_rate()
        .consecutive_failures(5)
        .open_duration(Duration::from_secs(60))
        .build()
        .expect("valid breaker configuration");
    let handle = breaker.handle();
    let previous_charge = FallbackLayer::last_good(
        key_fn(|p: &Payment| Ok::<_, KeyError>(format!("{}:{}", p.user, p.amount))),
        100_000,
        Some(Duration::from_secs(3_600)),
    )
    .expect("valid fallback configuration");
    let client = ServiceBuilder::new()
        .layer(previous_charge)
        .layer(FallbackLayer::service(enqueue).on_rejection_only())
        .layer(breaker)
        .timeout(Duration::from_secs(2))
        .service(gateway);
    (BoxCloneSyncService::new(client), handle)
}

async fn charge(
    State(app): State<App>,
    Path((user, amount)): Path<(String, u64)>,
) -> (StatusCode, String) {
    match app.client.oneshot(Payment { user, amount }).await {
        Ok(c) => (
            StatusCode::OK,
            format!("{} {} {}\n", c.status, c.user, c.amount),
        ),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("failed: {e}\n")),
    }
}

async fn health(State(app): State<App>) -> String {
    let r = app.breaker.report();
    let queued = app.queue.lock().unwrap().len();
    format!(
        "breaker {}: {} ({}), failure rate {:.2}, queued payments {queued}\n",
        r.name,
        r.state,
        r.health,
        r.value("failure_rate").unwrap_or(0.0)
    )
}

/// The client's HTTP routes: charges, health, and the demo switch of the simulated gateway.
pub(crate) fn router() -> Router {
    let gateway_up = Arc::new(AtomicBool::new(true));
    let queue = Arc::new(Mutex::new(Vec::new()));
    let (client, breaker) = client(gateway_up.clone(), queue.clone());
    let app = App {
        client,
        breaker,
        gateway_up,
        queue,
    };
    Router::new()
        .route("/charge/{user}/{amount}", post(charge))
        .route("/health", get(health))
        .route(
            "/gateway/{state}",
            post(
                |State(app): State<App>, Path(state): Path<String>| async move {
                    app.gateway_up.store(state == "up", Ordering::SeqCst);
                    format!("gateway {state}\n")
                },
            ),
        )
        .with_state(app)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let router = router();
    let addr = std::env::var("TP_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "payment gateway client on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, router).await?;
    Ok(())
}
