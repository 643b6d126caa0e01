//! The storefront, the main job: one axum service on embedded defaults (SQLite files and
//! in-process caches, nothing to install) that composes the patterns.
//!
//! `--demo` runs a scripted tour against itself on 127.0.0.1 (a progress bar on a terminal):
//! normal traffic over the order shards; the payment provider failing (the breaker opens,
//! payments are queued, it recovers, the queue drains); the provider hanging (timeouts fire,
//! the payment bulkhead fills and refuses, other routes stay fast); a noisy tenant limited while
//! another is not slowed; a cache stampede on a slow database making one load; an order out of
//! stock that the saga undoes; read-your-writes holding while a projection lags. It ends with
//! a table of what each pattern did, in numbers, and exits 0 only if every expectation held
//! (about 6 s; it prints the status page's address to watch it live).
//!
//! Every request proves its tenant with an API key in `x-api-key`, or with a bearer token
//! (HS256, audience `storefront`, the tenant in its `tenant` claim, the customer in `sub`;
//! signed with `--jwt-secret`, else a secret made at start, which also prints a demo token for
//! acme's customer `ada`); the registry (TOML, keys
//! stored as SHA-256 only) knows `acme` (plan gold, key `demo-key-acme`), `globex` (free,
//! `demo-key-globex`) and `initech` (suspended, `demo-key-initech`). These demo keys are public:
//! point `--tenants` (`TP_TENANTS`) at a registry file of your own (the same TOML,
//! `api_key_sha256 = [...]`) before the server listens anywhere but loopback.
//!
//! `--tenant-header-only` (`TP_TENANT_HEADER_ONLY=1`) switches to header-only tenancy: `x-tenant-id` alone names the
//! tenant and is believed as sent, so anyone who can reach the server can act as any tenant.
//! Use it only behind a gateway that has already authenticated the caller.
//!
//! | route | what it shows |
//! |---|---|
//! | `GET /products?q=` | the tenant's catalog (or a search by name), from the catalog's read model (a CQRS projection of the product events, with an FTS5 name index), read through `Scoped` (the tenant filter cannot be left out), cache-aside per tenant and per search |
//! | `POST /products/{sku}` | a product command, event-sourced: `{"name": "Matcha", "price": 9}` creates, `{"price": 6}` reprices; it answers once the read model shows it and the tenant's cached answers are dropped, with a consistency token |
//! | `POST /orders/{sku}/{qty}` | an order of 1 to 100 through the order saga (`checkout.rs`): the order placed (event-sourced on SQLite), charged through the payment client (fallback, retry, circuit breaker, timeout, bulkhead; queued while the breaker is open), the stock reserved, the shipment booked; a refused step undoes the ones before it, newest first (201 PAID, 202 QUEUED, 502 CANCELLED when the payment failed, 409 CANCELLED when out of stock) |
//! | `GET /orders/{id}` | the order from its shard's read model (a CQRS projection of the order events); another customer's or another tenant's order is a 404 |
//! | `GET /health` | breaker, cache and queue, in one line |
//! | `GET /admin` | admin: the status page, every pattern's report live (polled twice a second), the ones in trouble first, and the payment breaker's transitions (`/admin?token=…` in a browser) |
//! | `GET /admin/patterns` | admin: every pattern's report (state, health, numbers) as JSON, and the breaker's transitions |
//! | `POST /admin/cache/catalog/invalidate` | admin: empties the catalog cache |
//! | `GET /metrics` | admin: Prometheus text, every pattern's series |
//! | `POST /admin/provider/{up,down,slow}` | admin: the simulated payment provider, through its chaos layer's handle: no fault, an error on every charge, or one second of latency on every charge |
//! | `POST /admin/chaos/payment-provider` | admin: any plan of faults, as JSON (`{"faults":[{"kind":"latency","ms":300,"rate":0.5}]}`; kinds `latency`, `status`, `error`, `hang`, `abort`) |
//!
//! Admin routes sit outside the tenant layer, behind the admin token (`--admin-token` or
//! `TP_ADMIN_TOKEN`, else a random one printed at start) sent as `Authorization: Bearer` or
//! `?token=`; without it they answer 401.
//!
//! Every request first meets the edge: a request id (`x-request-id`: the client's own, else a new UUIDv7; echoed back), a
//! trace span (method, path without the query, request id, tenant), the server-wide load shed
//! (a bulkhead of `--max-inflight` requests, default 256, then 503 at once), a request timeout
//! (`--request-timeout`, default 10 s, then 504) and a body limit (64 KiB, then 413). The
//! server speaks HTTP/1 and HTTP/2 (prior knowledge) on one port, cuts off a client that takes
//! longer than `--header-timeout` (default 10 s) to send its headers (HTTP/1), answers 431 to
//! headers over 32 KiB, and on SIGTERM or Ctrl-C stops accepting and lets the requests in flight
//! finish for up to `--drain` seconds. Logs follow `RUST_LOG` (default `info`), pretty, or JSON
//! lines with `--log-json`.
//!
//! The data (catalog and orders, SQLite) lives in `--data` (`TP_DATA`), by default
//! `$XDG_DATA_HOME/tower-patterns/storefront` (else `~/.local/share/tower-patterns/storefront`,
//! else `./storefront-data`), so a restart keeps the orders. A bad flag or variable, an address
//! in use or a data directory that cannot be made stops it with one line naming the flag and
//! its variable; `--help` lists them. `--redis URL` counts the tenants' rate limits in Redis
//! (the same GCRA, one Lua script), so that several storefronts share each tenant's limit;
//! with `--postgres` too, the catalog cache is shared as well (`catalog.rs`).
//! `--postgres URL` keeps the events (each order shard, the products, the saga log) and the
//! saga index in PostgreSQL, a schema per store (`backend.rs`), so that several storefronts
//! share them; each keeps its read models in SQLite and follows the shared events.
//! `--postgres-replicas URLS` watches that database's streaming replicas: `/admin/patterns`
//! and the status page show how far behind each one is, in WAL bytes and seconds.
//! `--nats URL` publishes every order event to NATS JetStream (stream `STOREFRONT_ORDERS`,
//! subjects `storefront.orders.<shard>.<event>`): each shard's event log is its outbox, and a
//! relay per shard publishes what it committed, at least once and in order (`bus.rs`).
//!
//! In front of the tenant routes, and only of routes that exist (an unknown path is a 404 that
//! costs no tenant anything): the tenant layer (401 without a valid key, 400 malformed, 403
//! suspended), a GCRA rate limit per tenant chosen by plan (gold 100/s, free 5/s; 429 with
//! `Retry-After` and `RateLimit-*`), a bulkhead per tenant (at most
//! 32 requests (`TENANT_CONCURRENCY`) in flight each, then 503), and the HTTP error mapping of
//! `tower_patterns::http`. Handlers answer with fixed phrases too: a bad path or quantity is a
//! 400, a dependency that fails is a 503 (or what the mapping says for its error), never its
//! error text.
//!
//! Orders are sharded by customer (`--shards`, default 4, jump hash): the customer is the
//! verified token's `sub`, else `x-customer-id` sent with the tenant's API key, else `guest`.
//! Each shard has its own event store (`orders-<i>.db`), a projection into its read model
//! (`orders-read-<i>.db`), and a consistency layer: every order answers with a signed token of
//! the position it reached (`tp-consistency` and a `tp_consistency_orders-<i>` cookie), and a
//! read that sends it back waits (up to 2 s) until the read model has caught up, so a client
//! always reads its own writes. `POST /admin/chaos/orders-projection` with a latency fault makes
//! the projections lag, to watch it.
//!
//! The payment client follows the stack of `docs/patterns/retry.md`: fallback → retry →
//! circuit breaker → timeout (per attempt) → bulkhead → chaos → provider. The breaker judges every
//! attempt, and once it is open the retry stops at once (a `Rejected` is never retried) and
//! the fallback queues the payment in `ledger.db`. A worker (`queue.rs`) sends the queued
//! payments through the same client without its fallback after every breaker transition and
//! every half second while the breaker lets calls through, so they drain once the provider is
//! back, also after a restart. The saga's log and index (`checkout-log.db`,
//! `checkout-index.db`) let a restart finish the checkouts a crash left open.
//!
//! ```text
//! cargo run --example storefront --features full -- --admin-token my-admin-token-0123
//! curl -s -H 'x-api-key: demo-key-acme' 127.0.0.1:3000/products
//! curl -s -XPOST -H 'x-api-key: demo-key-acme' 127.0.0.1:3000/orders/tea/2   # PAID order ...
//! curl -s -XPOST -H 'authorization: Bearer my-admin-token-0123' 127.0.0.1:3000/admin/provider/down
//! curl -s -XPOST -H 'x-api-key: demo-key-acme' 127.0.0.1:3000/orders/tea/1   # CANCELLED, then QUEUED
//! curl -s -H 'x-api-key: demo-key-globex' 127.0.0.1:3000/orders/<acme's id>  # 404
//! curl -s -H 'authorization: Bearer my-admin-token-0123' 127.0.0.1:3000/admin/patterns
//! cargo run --example storefront --features full -- --tenant-header-only  # then -H 'x-tenant-id: acme'
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example server says where it listens"
)]

mod admin;
mod app;
mod auth;
mod backend;
mod bus;
mod catalog;
mod checkout;
mod config;
mod demo;
mod edge;
mod lag;
mod ledger;
mod orders;
mod payments;
mod products;
mod queue;
mod routes;
mod shards;
mod status;
#[cfg(test)]
mod tests;

use std::{
    future::Future,
    io::Write,
    process::ExitCode,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use axum::{body::Body, http::Request, response::Response};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::util::BoxCloneSyncService;
use tower_patterns::{
    BoxError, breaker::CircuitBreakerHandle, bulkhead::BulkheadLayer, chaos::ChaosHandle,
    cqrs::ProjectionHandle, observe::StateHandle, ratelimit::Rate, tenant::StaticTenants,
};

pub(crate) use crate::app::storefront;
use crate::{
    catalog::Catalog,
    checkout::Checkout,
    config::{Auth, Config, LogFormat},
    ledger::Ledger,
    queue::QueueHandle,
    shards::Shards,
};

/// One shard's order routes, boxed: the shard router needs one type for all.
type ShardService = BoxCloneSyncService<Request<Body>, Response, BoxError>;

/// The demo registry. The keys are `demo-key-<tenant>`; only their SHA-256 is stored.
const TENANTS: &str = r#"
[[tenants]]
id = "acme"
plan = "gold"
api_key_sha256 = ["8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873"]
[[tenants]]
id = "globex"
plan = "free"
api_key_sha256 = ["0aef9a797b1f4523f91fe6c361cd0df88248789ca6cb8cad188d5030ac2f717e"]
[[tenants]]
id = "initech"
plan = "gold"
status = "suspended"
api_key_sha256 = ["9873bbdaaa392d094b7f1aaf4bb0da5756431cd88a323b9576f08576e7b7a571"]
"#;

/// The header that carries a tenant's API key.
const API_KEY_HEADER: &str = "x-api-key";
/// The header that names the tenant in header-only mode.
const TENANT_HEADER: &str = "x-tenant-id";
/// The most requests one tenant may have in flight at once; the next gets 503.
const TENANT_CONCURRENCY: u32 = 32;

impl App {
    /// Stops the background work: the queue's worker, the breaker's transition log, the
    /// outbox relays, the replicas' monitor, and the projections (the catalog's and each
    /// shard's). The saga orchestrator's worker stops when the last clone of the storefront is
    /// dropped.
    fn shutdown(&self) {
        let _ = self.stop.send(true);
        for relay in self.relays.iter() {
            relay.stop();
        }
        if let Some(set) = &self.replicas {
            set.handle().shutdown();
        }
        self.catalog_view.shutdown();
        for shard in self.shards.all.iter() {
            shard.view.shutdown();
        }
    }
}

/// The rate of a plan.
fn plan_rate(plan: &str) -> Rate {
    match plan {
        "gold" => Rate::per_second(100),
        _ => Rate::per_second(5),
    }
}

/// Every stateful layer's handle, for `/admin/patterns` and `/metrics`.
pub(crate) type Handles = Arc<Vec<Box<dyn StateHandle>>>;

/// What the handlers share: the services, the handles and the demo's counters.
#[derive(Clone)]
struct App {
    /// How callers prove their tenant.
    auth: Auth,
    catalog: Catalog,
    /// Empties the catalog cache (`POST /admin/cache/catalog/invalidate`).
    invalidate_catalog: catalog::Invalidate,
    /// Drops one tenant's cached catalog answers (after a product command).
    invalidate_tenant: catalog::InvalidateTenant,
    /// The projection that keeps the catalog's read model.
    catalog_view: ProjectionHandle,
    /// The products' events (the catalog's write side).
    products: products::Products,
    /// The catalog database's faults (`POST /admin/chaos/catalog-db`).
    catalog_db: ChaosHandle,
    catalog_loads: Arc<AtomicU64>,
    shards: Shards,
    checkout: Checkout,
    ledger: Ledger,
    breaker: CircuitBreakerHandle,
    provider: ChaosHandle,
    /// The orders' projections' lag (a chaos layer on their reads).
    lag: ChaosHandle,
    provider_attempts: Arc<AtomicU64>,
    /// Payment attempts the timeout cut short.
    payment_timeouts: Arc<AtomicU64>,
    queue: QueueHandle,
    /// The streaming replicas of `--postgres-replicas`, watched for lag.
    replicas: Option<tower_patterns::consistency::replica::ReplicaSet>,
    /// The outbox relays of `--nats`, one per shard.
    relays: Arc<[tower_patterns::cqrs::bus::OutboxRelayHandle]>,
    /// The payment breaker's last transitions, for the status page.
    transitions: status::Transitions,
    /// Stops the background workers (the queue's drain) when the server stops.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// The server-wide bulkhead that sheds load, built here so that it is listed with the
    /// others; the edge stack applies it.
    edge_layer: BulkheadLayer,
    handles: Handles,
    admin_token: Arc<str>,
    /// The secret of the customers' bearer tokens.
    jwt_secret: Arc<str>,
    prometheus: Option<PrometheusHandle>,
}

/// The registry: the file `--tenants` names, else the demo tenants.
fn tenants(cfg: &Config) -> Result<StaticTenants, String> {
    match &cfg.tenants {
        Some(path) => StaticTenants::from_file(path).map_err(|e| {
            format!(
                "storefront: --tenants {:?}: {e} (also TP_TENANTS)",
                path.display()
            )
        }),
        None => StaticTenants::from_toml(TENANTS)
            .map_err(|e| format!("storefront: the demo tenants: {e}")),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The log subscriber: pretty lines, or one JSON object per line, written by `writer`.
pub(crate) fn logs<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Pretty => Box::new(logs.finish()),
        LogFormat::Json => Box::new(logs.json().finish()),
    }
}

fn main() -> ExitCode {
    let cfg = match config::parse(std::env::args().skip(1).collect(), |v| {
        std::env::var(v).ok()
    }) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // The demo prints a report; its logs would drown it unless asked for.
    let default = if cfg.demo { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if tracing::subscriber::set_global_default(logs(cfg.log, filter, std::io::stderr)).is_err() {
        eprintln!("storefront: logs are already set up elsewhere");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("storefront: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        // Before any layer is built: each registers its metrics on the recorder present then.
        let prometheus =
            match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    eprintln!("storefront: no /metrics: {e}");
                    None
                }
            };
        match run(cfg, &mut std::io::stdout(), shutdown_signal(), prometheus).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Serves the storefront until `shutdown`, then drains. Telling the user where it listens and
/// what to try on `out`; errors are one line naming the flag and its variable.
pub(crate) async fn run(
    cfg: Config,
    out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()> + Send + 'static,
    prometheus: Option<PrometheusHandle>,
) -> Result<(), String> {
    if cfg.demo {
        return demo::run(cfg, out, prometheus, None).await;
    }
    // The address first: a port in use stops it before it touches the data.
    let listener = tokio::net::TcpListener::bind(cfg.addr).await.map_err(|e| {
        format!(
            "storefront: --addr {}: cannot listen: {e} (also TP_ADDR)",
            cfg.addr
        )
    })?;
    std::fs::create_dir_all(&cfg.data).map_err(|e| {
        format!(
            "storefront: --data {:?}: cannot create it: {e} (also TP_DATA)",
            cfg.data.display()
        )
    })?;
    let tenants = tenants(&cfg)?;
    let token: Arc<str> = match &cfg.admin_token {
        Some(token) => token.as_str().into(),
        None => admin::random_token().into(),
    };
    let (router, app) = storefront(&cfg, tenants, token.clone(), prometheus)
        .await
        .map_err(|e| {
            // A setting's own error already names it.
            let e = e.to_string();
            if e.starts_with("storefront: ") {
                e
            } else {
                format!(
                    "storefront: cannot open the data in {:?}: {e} (--data, TP_DATA)",
                    cfg.data.display()
                )
            }
        })?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("storefront: --addr {}: {e} (also TP_ADDR)", cfg.addr))?;
    let try_it = match cfg.auth {
        Auth::ApiKey => {
            format!("curl -H '{API_KEY_HEADER}: demo-key-acme' http://{local}/products")
        }
        Auth::HeaderOnly => {
            tracing::warn!(
                "header-only tenancy: {TENANT_HEADER} is believed as sent; only for callers a \
                 gateway has already authenticated"
            );
            format!("curl -H '{TENANT_HEADER}: acme' http://{local}/products")
        }
    };
    let say = |out: &mut (dyn Write + Send), line: String| {
        writeln!(out, "{line}").map_err(|e| format!("storefront: cannot write: {e}"))
    };
    say(
        out,
        format!(
            "storefront on http://{local} (data in {})",
            cfg.data.display()
        ),
    )?;
    say(out, format!("try: {try_it}"))?;
    if cfg.auth == Auth::ApiKey
        && let Ok(token) = auth::mint(&app.jwt_secret, "acme", "ada", Duration::from_secs(3600))
    {
        say(
            out,
            format!(
                "or:  curl -H 'authorization: Bearer {token}' http://{local}/products  (acme's customer ada, 1 h)"
            ),
        )?;
    }
    if cfg.admin_token.is_none() {
        say(
            out,
            format!(
                "admin: http://{local}/admin/patterns?token={token} (a new token each start; set --admin-token to keep one)"
            ),
        )?;
    } else {
        say(
            out,
            format!("admin: http://{local}/admin/patterns (the token from --admin-token)"),
        )?;
    }
    let served = edge::serve(listener, router, &app, &cfg, shutdown).await;
    app.shutdown();
    served.map_err(|e| format!("storefront: {e}"))
}
