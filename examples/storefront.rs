//! The storefront, the main job: one axum service on embedded defaults (SQLite files and
//! in-process caches, nothing to install) that composes the patterns.
//!
//! Every request proves its tenant with an API key in `x-api-key`; the registry (TOML, keys
//! stored as SHA-256 only) knows `acme` (plan gold, key `demo-key-acme`), `globex` (free,
//! `demo-key-globex`) and `initech` (suspended, `demo-key-initech`). These demo keys are public:
//! point `TP_TENANTS` at a registry file of your own (the same TOML, `api_key_sha256 = [...]`)
//! before the server listens anywhere but loopback.
//!
//! `TP_TENANT_HEADER_ONLY=1` switches to header-only tenancy: `x-tenant-id` alone names the
//! tenant and is believed as sent, so anyone who can reach the server can act as any tenant.
//! Use it only behind a gateway that has already authenticated the caller.
//!
//! | route | what it shows |
//! |---|---|
//! | `GET /products` | the tenant's catalog, read from a shared SQLite table through `Scoped` (the tenant filter cannot be left out), cache-aside per tenant |
//! | `POST /orders/{sku}/{qty}` | an order of 1 to 100, event-sourced on SQLite: placed, then charged through the payment client (fallback, retry, circuit breaker, timeout, bulkhead; queued while the breaker is open), then paid, queued or cancelled |
//! | `GET /orders/{id}` | the order rebuilt from its events; another tenant's order is a 404 |
//! | `POST /gateway/{up,down,slow}` | switches the simulated payment provider (not per tenant, no key: a demo control): answering, failing, or answering after one second |
//! | `GET /health` | breaker, cache and queue |
//!
//! In front of the tenant routes, and only of routes that exist (an unknown path is a 404 that
//! costs no tenant anything): the tenant layer (401 without a valid key, 400 malformed, 403
//! suspended), a GCRA rate limit per tenant chosen by plan (gold 100/s, free 5/s; 429 with
//! `Retry-After` and `RateLimit-*`), a bulkhead per tenant (at most
//! 8 requests (`TENANT_CONCURRENCY`) in flight each, then 503), and the HTTP error mapping of
//! `tower_patterns::http`. Handlers answer with fixed phrases too: a bad path or quantity is a
//! 400, a dependency that fails is a 503 (or what the mapping says for its error), never its
//! error text.
//!
//! The payment client follows the stack of `docs/patterns/retry.md`: fallback → retry →
//! circuit breaker → timeout (per attempt) → bulkhead → provider. The breaker judges every
//! attempt, and once it is open the retry stops at once (a `Rejected` is never retried) and
//! the fallback queues the payment.
//!
//! ```text
//! cargo run --example storefront --features full     # 127.0.0.1:3000 (TP_ADDR), data in TP_DATA
//! curl -s -H 'x-api-key: demo-key-acme' 127.0.0.1:3000/products
//! curl -s -XPOST -H 'x-api-key: demo-key-acme' 127.0.0.1:3000/orders/tea/2   # PAID order ...
//! curl -s -XPOST 127.0.0.1:3000/gateway/down
//! curl -s -XPOST -H 'x-api-key: demo-key-acme' 127.0.0.1:3000/orders/tea/1   # CANCELLED, then QUEUED
//! curl -s -H 'x-api-key: demo-key-globex' 127.0.0.1:3000/orders/<acme's id>  # 404
//! TP_TENANT_HEADER_ONLY=1 cargo run --example storefront --features full  # then -H 'x-tenant-id: acme'
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example server says where it listens"
)]

use std::{
    path::{Path as FsPath, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    error_handling::HandleErrorLayer,
    extract::{FromRequestParts, Path, State},
    http::{Request, StatusCode, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use rusqlite::{Connection, types::Value};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError, KeyError, ServiceBuilderExt,
    breaker::{CircuitBreakerHandle, CircuitBreakerLayer, FallbackLayer},
    bulkhead::{BulkheadLayer, PartitionedBulkheadLayer},
    cache::{CacheLayer, store::MokaStore},
    eventstore::{
        Aggregate, Command, CommandService, DomainEvent, Repository, RepositoryError,
        sqlite::SqliteStore,
    },
    http::{classify_error, error_response},
    key::{ExtensionKey, key_fn},
    observe::StateHandle,
    ratelimit::{GcraLimiter, Rate, RateLimitLayer},
    retry::RetryPolicy,
    tenant::TenantId,
    tenant_resolution::{StaticTenants, Tenant, TenantContext, TenantLayer, sqlite::Scoped},
};

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
const TENANT_CONCURRENCY: u32 = 8;
/// The largest quantity of one order line.
const MAX_QTY: u32 = 100;
/// How long the provider takes to answer in `/gateway/slow`.
const SLOW_PROVIDER: Duration = Duration::from_secs(1);

/// The rate of a plan.
fn plan_rate(plan: &str) -> Rate {
    match plan {
        "gold" => Rate::per_second(100),
        _ => Rate::per_second(5),
    }
}

/// How the storefront learns which tenant calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Auth {
    /// The tenant that owns the API key in `x-api-key` (the default).
    ApiKey,
    /// `x-tenant-id` alone, believed as sent: for trusted internal callers only.
    HeaderOnly,
}

impl Auth {
    /// Reads `TP_TENANT_HEADER_ONLY`: unset, empty, `0` or `false` is [`Auth::ApiKey`]; `1` or
    /// `true` is [`Auth::HeaderOnly`]; anything else is refused, so a typo never weakens it.
    fn from_env_value(value: Option<&str>) -> Result<Self, BoxError> {
        match value.map(str::trim) {
            None | Some("" | "0" | "false") => Ok(Self::ApiKey),
            Some("1" | "true") => Ok(Self::HeaderOnly),
            Some(_) => Err("TP_TENANT_HEADER_ONLY must be 1, true, 0, false or unset".into()),
        }
    }
}

// ------------------------------------------------------------------ answers

/// Why a handler could not do what was asked. Every variant answers with a fixed phrase: no
/// error text, type name or input ever reaches the body.
#[derive(Debug)]
enum ApiError {
    /// 400: the request itself is wrong.
    BadRequest(&'static str),
    /// 404: nothing by that name, for this tenant.
    NotFound(&'static str),
    /// 422: the order refused the command.
    Refused(OrderError),
    /// A dependency failed. The core mapping answers the errors it knows (an open circuit,
    /// a full bulkhead: 503 with `Retry-After`; a timeout: 504); any other failure of the
    /// dependency is a 503 with this phrase, never a 500 or a 404.
    Unavailable(&'static str, BoxError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, phrase) = match self {
            Self::BadRequest(phrase) => (StatusCode::BAD_REQUEST, phrase),
            Self::NotFound(phrase) => (StatusCode::NOT_FOUND, phrase),
            Self::Refused(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.phrase()),
            Self::Unavailable(what, err) => {
                if classify_error(&*err).status != StatusCode::INTERNAL_SERVER_ERROR {
                    return error_response::<String>(&*err).map(Body::from);
                }
                eprintln!("{what}: {err}");
                (StatusCode::SERVICE_UNAVAILABLE, what)
            }
        };
        (status, phrase).into_response()
    }
}

/// Path parameters whose rejection is a fixed 400 (axum's own names the types it expected).
struct Params<T>(T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Self(t))
            .map_err(|_| ApiError::BadRequest("malformed path"))
    }
}

/// A quantity from the path: digits only, 1 to [`MAX_QTY`].
fn quantity(text: &str) -> Result<u32, ApiError> {
    const PHRASE: &str = "the quantity must be a whole number from 1 to 100";
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(PHRASE));
    }
    match text.parse::<u32>() {
        Ok(qty) if (1..=MAX_QTY).contains(&qty) => Ok(qty),
        _ => Err(ApiError::BadRequest(PHRASE)),
    }
}

// ------------------------------------------------------------------ catalog (cache-aside)

#[derive(Clone, Debug, Serialize)]
struct Product {
    sku: String,
    price: i64,
}

/// What the catalog loader is asked: a tenant's products.
#[derive(Clone, Debug)]
struct CatalogQuery {
    tenant: TenantId,
}

type Catalog = BoxCloneSyncService<CatalogQuery, Arc<[Product]>, BoxError>;

/// Reads a tenant's products from the shared table; `loads` counts the reads that reach SQLite.
fn catalog(db: Arc<Mutex<Connection>>, loads: Arc<AtomicU64>) -> Result<Catalog, BoxError> {
    let loader = service_fn(move |q: CatalogQuery| {
        let db = db.clone();
        let loads = loads.clone();
        async move {
            loads.fetch_add(1, Ordering::Relaxed);
            let rows = tokio::task::spawn_blocking(move || {
                let conn = db
                    .lock()
                    .map_err(|_| BoxError::from("catalog lock poisoned"))?;
                Scoped::new(&conn, &q.tenant)
                    .select("products", &["sku", "price"], &[])
                    .map_err(BoxError::from)
            })
            .await??;
            let products: Arc<[Product]> = rows
                .into_iter()
                .filter_map(|row| match row.as_slice() {
                    [Value::Text(sku), Value::Integer(price)] => Some(Product {
                        sku: sku.clone(),
                        price: *price,
                    }),
                    _ => None,
                })
                .collect();
            Ok::<_, BoxError>(products)
        }
    });
    let cache = CacheLayer::builder("catalog", MokaStore::builder().max_entries(10_000).build())
        .key(key_fn(|_: &CatalogQuery| Ok::<_, KeyError>("all")))
        .scope_fn(|q: &CatalogQuery| Some(q.tenant.clone()))
        .require_tenant()
        .ttl(Duration::from_secs(30))
        .build()?;
    Ok(BoxCloneSyncService::new(cache.layer(loader)))
}

/// The shared table and two tenants' rows.
fn open_catalog(path: &FsPath) -> Result<Connection, BoxError> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS products (tenant_id TEXT NOT NULL, sku TEXT NOT NULL, price INTEGER NOT NULL);
         DELETE FROM products;",
    )?;
    for (tenant, sku, price) in [
        ("acme", "tea", 4),
        ("acme", "coffee", 5),
        ("globex", "widget", 120),
    ] {
        let tenant = TenantId::new(tenant)?;
        Scoped::new(&conn, &tenant).insert(
            "products",
            &[
                ("sku", Value::Text(sku.into())),
                ("price", Value::Integer(price)),
            ],
        )?;
    }
    Ok(conn)
}

// ------------------------------------------------------------------ orders (event-sourced)

#[derive(Clone, Debug, Serialize, Deserialize)]
enum OrderEvent {
    Placed { sku: String, qty: u32 },
    Paid { charge: String },
    PaymentQueued,
    Cancelled { reason: String },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Placed { .. } => "Placed",
            Self::Paid { .. } => "Paid",
            Self::PaymentQueued => "PaymentQueued",
            Self::Cancelled { .. } => "Cancelled",
        }
    }
}

#[derive(Clone, Debug)]
enum OrderCommand {
    Place { sku: String, qty: u32 },
    Settle(OrderEvent),
}

#[derive(Debug)]
enum OrderError {
    AlreadyPlaced,
    NotPlaced,
    Settled,
    NoQuantity,
}

impl OrderError {
    const fn phrase(&self) -> &'static str {
        match self {
            Self::AlreadyPlaced => "the order is already placed",
            Self::NotPlaced => "no such order",
            Self::Settled => "the order is already settled",
            Self::NoQuantity => "the quantity must be at least 1",
        }
    }
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.phrase())
    }
}

impl std::error::Error for OrderError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    Placed,
    Paid,
    PaymentQueued,
    Cancelled,
}

impl Status {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "PLACED",
            Self::Paid => "PAID",
            Self::PaymentQueued => "PAYMENT_QUEUED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Order {
    sku: Option<String>,
    qty: u32,
    status: Option<Status>,
}

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { .. } if self.sku.is_some() => Err(OrderError::AlreadyPlaced),
            OrderCommand::Place { qty: 0, .. } => Err(OrderError::NoQuantity),
            OrderCommand::Place { sku, qty } => Ok(vec![OrderEvent::Placed {
                sku: sku.clone(),
                qty: *qty,
            }]),
            OrderCommand::Settle(_) if self.sku.is_none() => Err(OrderError::NotPlaced),
            OrderCommand::Settle(_) if self.status != Some(Status::Placed) => {
                Err(OrderError::Settled)
            }
            OrderCommand::Settle(event) => Ok(vec![event.clone()]),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { sku, qty } => {
                self.sku = Some(sku.clone());
                self.qty = *qty;
                self.status = Some(Status::Placed);
            }
            OrderEvent::Paid { .. } => self.status = Some(Status::Paid),
            OrderEvent::PaymentQueued => self.status = Some(Status::PaymentQueued),
            OrderEvent::Cancelled { .. } => self.status = Some(Status::Cancelled),
        }
    }
}

// ------------------------------------------------------------------ payments

#[derive(Clone, Debug)]
struct Payment {
    order: String,
    amount: i64,
}

#[derive(Clone, Debug)]
enum Charge {
    Charged(String),
    Queued,
}

type Payments = BoxCloneSyncService<Payment, Charge, BoxError>;

/// The simulated payment provider, switched by `/gateway/{state}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Provider {
    /// Charges at once.
    Up = 0,
    /// Fails every charge.
    Down = 1,
    /// Charges after [`SLOW_PROVIDER`].
    Slow = 2,
}

impl Provider {
    /// The documented states of `/gateway/{state}`; anything else names no state.
    fn parse(state: &str) -> Option<Self> {
        match state {
            "up" => Some(Self::Up),
            "down" => Some(Self::Down),
            "slow" => Some(Self::Slow),
            _ => None,
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Slow => "slow",
        }
    }

    fn load(cell: &AtomicU8) -> Self {
        match cell.load(Ordering::SeqCst) {
            0 => Self::Up,
            2 => Self::Slow,
            _ => Self::Down,
        }
    }
}

/// The payment client, in the order of `docs/patterns/retry.md`: the fallback queues the
/// payment when the breaker refuses it; the retry makes up to two attempts, each one call the
/// breaker judges (and stops at an open breaker: a `Rejected` is never retried); a timeout
/// per attempt; a bulkhead around the provider. `attempts` counts the calls that reach it.
fn payments(
    provider: Arc<AtomicU8>,
    attempts: Arc<AtomicU64>,
    queue: Arc<Mutex<Vec<Payment>>>,
) -> Result<(Payments, CircuitBreakerHandle), BoxError> {
    let provider = service_fn(move |p: Payment| {
        attempts.fetch_add(1, Ordering::SeqCst);
        let state = Provider::load(&provider);
        async move {
            match state {
                Provider::Up => {}
                Provider::Slow => tokio::time::sleep(SLOW_PROVIDER).await,
                Provider::Down => return Err(BoxError::from("payment provider unavailable")),
            }
            Ok(Charge::Charged(format!("ch_{}_{}", p.order, p.amount)))
        }
    });
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
        .retry_with(
            RetryPolicy::errors("payments")
                .max_attempts(2)
                .build_static()?,
        )
        .circuit_breaker(breaker)
        .timeout(Duration::from_secs(2))
        .bulkhead(
            BulkheadLayer::builder("payments")
                .max_concurrent(64)
                .build()?,
        )
        .service(provider);
    Ok((BoxCloneSyncService::new(client), handle))
}

// ------------------------------------------------------------------ the service

#[derive(Clone)]
struct App {
    catalog: Catalog,
    catalog_loads: Arc<AtomicU64>,
    orders: Repository<Order, SqliteStore>,
    payments: Payments,
    breaker: CircuitBreakerHandle,
    provider: Arc<AtomicU8>,
    provider_attempts: Arc<AtomicU64>,
    queue: Arc<Mutex<Vec<Payment>>>,
}

/// An order's stream id: the tenant's id, then the order's. A tenant can only name its own.
fn stream_id(tenant: &TenantId, order: &str) -> String {
    format!("{tenant}.{order}")
}

/// The tenant's catalog; a failure is a 503, whatever its cause.
async fn catalog_of(app: &App, tenant: &TenantId) -> Result<Arc<[Product]>, ApiError> {
    app.catalog
        .clone()
        .oneshot(CatalogQuery {
            tenant: tenant.clone(),
        })
        .await
        .map_err(|e| ApiError::Unavailable("catalog unavailable", e))
}

/// A repository error: the order's own refusal is a 422, anything else a 503.
fn order_error(e: RepositoryError<OrderError>) -> ApiError {
    match e {
        RepositoryError::Domain(e) => ApiError::Refused(e),
        e => ApiError::Unavailable("orders unavailable", e.into()),
    }
}

async fn products(State(app): State<App>, Tenant(t): Tenant) -> Result<String, ApiError> {
    let list = catalog_of(&app, t.id()).await?;
    Ok(list
        .iter()
        .map(|p| format!("{} {}\n", p.sku, p.price))
        .collect())
}

async fn place(
    State(app): State<App>,
    Tenant(t): Tenant,
    Params((sku, qty)): Params<(String, String)>,
) -> Result<(StatusCode, String), ApiError> {
    let qty = quantity(&qty)?;
    let price = catalog_of(&app, t.id())
        .await?
        .iter()
        .find(|p| p.sku == sku)
        .map(|p| p.price)
        .ok_or(ApiError::NotFound("no such product"))?;
    let amount = price
        .checked_mul(i64::from(qty))
        .ok_or(ApiError::BadRequest("the order is too large"))?;
    let order = uuid::Uuid::now_v7().simple().to_string();
    let stream = stream_id(t.id(), &order);
    let commands = CommandService::new(app.orders.clone());
    commands
        .clone()
        .oneshot(Command::new(
            stream.clone(),
            OrderCommand::Place {
                sku: sku.clone(),
                qty,
            },
        ))
        .await
        .map_err(order_error)?;
    // The order's saga: charge, then record the outcome; a failed charge cancels the order.
    let payment = Payment {
        order: order.clone(),
        amount,
    };
    let (outcome, status, answer) = match app.payments.clone().oneshot(payment).await {
        Ok(Charge::Charged(charge)) => (OrderEvent::Paid { charge }, StatusCode::CREATED, "PAID"),
        Ok(Charge::Queued) => (OrderEvent::PaymentQueued, StatusCode::ACCEPTED, "QUEUED"),
        Err(e) => (
            OrderEvent::Cancelled {
                reason: e.to_string(),
            },
            StatusCode::BAD_GATEWAY,
            "CANCELLED",
        ),
    };
    commands
        .oneshot(Command::new(stream, OrderCommand::Settle(outcome)))
        .await
        .map_err(order_error)?;
    Ok((status, format!("{answer} order {order} {sku} x{qty}\n")))
}

async fn show(
    State(app): State<App>,
    Tenant(t): Tenant,
    Params(order): Params<String>,
) -> Result<String, ApiError> {
    if !order.bytes().all(|b| b.is_ascii_alphanumeric()) || order.len() > 64 {
        return Err(ApiError::BadRequest("malformed order id"));
    }
    let o = app
        .orders
        .load(&stream_id(t.id(), &order))
        .await
        .map_err(|e| ApiError::Unavailable("orders unavailable", e.into()))?;
    match (o.state.status, o.state.sku) {
        (Some(status), Some(sku)) => Ok(format!(
            "{} {sku} x{} (version {})\n",
            status.as_str(),
            o.state.qty,
            o.version
        )),
        _ => Err(ApiError::NotFound("no such order")),
    }
}

async fn gateway(
    State(app): State<App>,
    Params(state): Params<String>,
) -> Result<String, ApiError> {
    let state = Provider::parse(&state).ok_or(ApiError::NotFound("no such gateway state"))?;
    app.provider.store(state as u8, Ordering::SeqCst);
    Ok(format!("payment provider {}\n", state.as_str()))
}

async fn health(State(app): State<App>) -> String {
    let r = app.breaker.report();
    let queued = app.queue.lock().map_or(0, |q| q.len());
    format!(
        "breaker {}: {} ({}); catalog loads {}; payment attempts {}; queued payments {queued}\n",
        r.name,
        r.state,
        r.health,
        app.catalog_loads.load(Ordering::Relaxed),
        app.provider_attempts.load(Ordering::Relaxed),
    )
}

/// The tenant layer for `auth` over `tenants`.
fn tenant_layer(
    tenants: StaticTenants,
    auth: Auth,
) -> Result<TenantLayer<StaticTenants>, BoxError> {
    let builder = TenantLayer::builder(tenants).header(TENANT_HEADER);
    let builder = match auth {
        // The key proves the tenant; `x-tenant-id`, when sent, may only agree with it (403).
        Auth::ApiKey => builder.api_key(API_KEY_HEADER),
        Auth::HeaderOnly => builder.allow_unverified(),
    };
    Ok(builder.build()?)
}

/// The storefront over the data in `dir`, its tenants in `tenants`, identified by `auth`.
fn storefront(dir: &FsPath, tenants: StaticTenants, auth: Auth) -> Result<(Router, App), BoxError> {
    let catalog_loads = Arc::new(AtomicU64::new(0));
    let db = Arc::new(Mutex::new(open_catalog(&dir.join("catalog.db"))?));
    let store = SqliteStore::open(dir.join("orders.db"))?;
    let provider = Arc::new(AtomicU8::new(Provider::Up as u8));
    let provider_attempts = Arc::new(AtomicU64::new(0));
    let queue = Arc::new(Mutex::new(Vec::new()));
    let (payments, breaker) = payments(provider.clone(), provider_attempts.clone(), queue.clone())?;
    let app = App {
        catalog: catalog(db, catalog_loads.clone())?,
        catalog_loads,
        orders: Repository::new(Arc::new(store), "order-"),
        payments,
        breaker,
        provider,
        provider_attempts,
        queue,
    };
    let limiter = GcraLimiter::builder("tenant", ExtensionKey::<TenantId>::new())
        .rate(plan_rate("free"))
        .rate_for(
            |req: &Request<Body>| {
                req.extensions()
                    .get::<TenantContext>()
                    .map(|t| plan_rate(t.plan()))
            },
            plan_rate("free").refill(),
        )
        .build::<TenantId>()?;
    let bulkheads = PartitionedBulkheadLayer::builder::<TenantId>("tenant")
        .default_size(TENANT_CONCURRENCY)
        .build(ExtensionKey::<TenantId>::new())?;
    // `route_layer`, not `layer`: a path no route matches is a 404 before any of these run,
    // so it neither needs a tenant nor spends one's rate limit.
    let tenant_routes = Router::new()
        .route("/products", get(products))
        .route("/orders/{sku}/{qty}", post(place))
        .route("/orders/{id}", get(show))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(tower_patterns::http::handle_error))
                .layer(tenant_layer(tenants, auth)?)
                .layer(RateLimitLayer::new(limiter))
                .layer(bulkheads),
        );
    let router = Router::new()
        .route("/health", get(health))
        .route("/gateway/{state}", post(gateway))
        .merge(tenant_routes)
        .with_state(app.clone());
    Ok((router, app))
}

fn data_dir() -> Result<PathBuf, BoxError> {
    let dir = std::env::var_os("TP_DATA").map_or_else(
        || std::env::temp_dir().join(format!("tower-patterns-storefront-{}", std::process::id())),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The registry: the file `TP_TENANTS` names, else the demo tenants.
fn tenants() -> Result<StaticTenants, BoxError> {
    Ok(match std::env::var_os("TP_TENANTS") {
        Some(path) => StaticTenants::from_file(path)?,
        None => StaticTenants::from_toml(TENANTS)?,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let auth = Auth::from_env_value(std::env::var("TP_TENANT_HEADER_ONLY").ok().as_deref())?;
    let dir = data_dir()?;
    let (router, _) = storefront(&dir, tenants()?, auth)?;
    let addr = std::env::var("TP_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    let try_it = match auth {
        Auth::ApiKey => {
            format!("curl -H '{API_KEY_HEADER}: demo-key-acme' http://{local}/products")
        }
        Auth::HeaderOnly => {
            eprintln!(
                "header-only tenancy (TP_TENANT_HEADER_ONLY): {TENANT_HEADER} is believed as sent; \
                 only for callers a gateway has already authenticated"
            );
            format!("curl -H '{TENANT_HEADER}: acme' http://{local}/products")
        }
    };
    eprintln!(
        "storefront on http://{local} (data in {}); try: {try_it}",
        dir.display()
    );
    axum::serve(listener, router).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, Method, Response};
    use http_body_util::BodyExt;

    use super::*;

    struct Shop {
        router: Router,
        app: App,
        dir: TempDir,
    }

    /// A directory removed when dropped.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn shop_with(name: &str, auth: Auth) -> Shop {
        let dir =
            std::env::temp_dir().join(format!("tp-storefront-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tenants = StaticTenants::from_toml(TENANTS).unwrap();
        let (router, app) = storefront(&dir, tenants, auth).unwrap();
        Shop {
            router,
            app,
            dir: TempDir(dir),
        }
    }

    fn shop(name: &str) -> Shop {
        shop_with(name, Auth::ApiKey)
    }

    /// Sends `req` and reads the answer.
    async fn exchange(router: Router, req: Request<Body>) -> (u16, String) {
        let res: Response<Body> = router.oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A request with `headers`.
    fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(Body::empty()).unwrap()
    }

    /// A request as `tenant`, with its demo API key (or no credential at all).
    async fn send(shop: &Shop, method: Method, uri: &str, tenant: Option<&str>) -> (u16, String) {
        let key = tenant.map(|t| format!("demo-key-{t}"));
        let headers: Vec<(&str, &str)> = key.iter().map(|k| (API_KEY_HEADER, k.as_str())).collect();
        exchange(shop.router.clone(), request(method, uri, &headers)).await
    }

    async fn code(shop: &Shop, method: Method, uri: &str, tenant: Option<&str>) -> u16 {
        send(shop, method, uri, tenant).await.0
    }

    #[tokio::test(start_paused = true)]
    async fn each_tenant_sees_its_own_catalog_loaded_once() {
        let shop = shop("catalog");
        let (status, body) = send(&shop, Method::GET, "/products", Some("acme")).await;
        assert_eq!((status, body.as_str()), (200, "tea 4\ncoffee 5\n"));
        let (_, body) = send(&shop, Method::GET, "/products", Some("globex")).await;
        assert_eq!(body, "widget 120\n");
        for _ in 0..3 {
            send(&shop, Method::GET, "/products", Some("acme")).await;
        }
        assert_eq!(
            shop.app.catalog_loads.load(Ordering::Relaxed),
            2,
            "one load per tenant"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn who_may_call() {
        let shop = shop("who");
        let call = |headers: &[(&str, &str)]| {
            exchange(
                shop.router.clone(),
                request(Method::GET, "/products", headers),
            )
        };
        assert_eq!(call(&[]).await.0, 401, "no credential");
        assert_eq!(call(&[(API_KEY_HEADER, "guessed")]).await.0, 401);
        assert_eq!(call(&[(API_KEY_HEADER, "demo-key-initech")]).await.0, 403);
        assert_eq!(call(&[(API_KEY_HEADER, "demo-key-acme")]).await.0, 200);
        // The header alone proves nothing: any client could send it.
        assert_eq!(call(&[(TENANT_HEADER, "acme")]).await.0, 401);
        // With a key, it may only agree.
        let both = [(API_KEY_HEADER, "demo-key-acme"), (TENANT_HEADER, "acme")];
        assert_eq!(call(&both).await.0, 200);
        let other = [(API_KEY_HEADER, "demo-key-acme"), (TENANT_HEADER, "globex")];
        assert_eq!(call(&other).await.0, 403);
        // A key that is not visible ASCII is malformed, and says no more than that.
        let mut req = request(Method::GET, "/products", &[]);
        req.headers_mut().insert(
            API_KEY_HEADER,
            HeaderValue::from_bytes(b"demo-key-\xffacme").unwrap(),
        );
        assert_eq!(exchange(shop.router.clone(), req).await.0, 400);
        assert_eq!(code(&shop, Method::GET, "/health", None).await, 200);
    }

    #[tokio::test(start_paused = true)]
    async fn header_only_tenancy_is_an_explicit_mode() {
        assert_eq!(Auth::from_env_value(None).unwrap(), Auth::ApiKey);
        for off in ["", "0", "false"] {
            assert_eq!(Auth::from_env_value(Some(off)).unwrap(), Auth::ApiKey);
        }
        for on in ["1", "true", " 1 "] {
            assert_eq!(Auth::from_env_value(Some(on)).unwrap(), Auth::HeaderOnly);
        }
        for typo in ["yes", "ture", "2"] {
            assert!(Auth::from_env_value(Some(typo)).is_err(), "{typo}");
        }
        let shop = shop_with("header-only", Auth::HeaderOnly);
        let call = |tenant: &str| {
            exchange(
                shop.router.clone(),
                request(Method::GET, "/products", &[(TENANT_HEADER, tenant)]),
            )
        };
        assert_eq!(call("acme").await, (200, "tea 4\ncoffee 5\n".to_owned()));
        assert_eq!(call("ac me").await.0, 400);
        assert_eq!(call("umbrella").await.0, 403);
        assert_eq!(call("initech").await.0, 403);
        assert_eq!(code(&shop, Method::GET, "/products", None).await, 401);
    }

    #[tokio::test(start_paused = true)]
    async fn orders_are_paid_and_private() {
        let shop = shop("orders");
        let (status, body) = send(&shop, Method::POST, "/orders/tea/2", Some("acme")).await;
        assert_eq!(status, 201, "{body}");
        let id = body.split_whitespace().nth(2).unwrap().to_owned();
        let (status, body) = send(&shop, Method::GET, &format!("/orders/{id}"), Some("acme")).await;
        assert_eq!((status, body.as_str()), (200, "PAID tea x2 (version 2)\n"));
        // globex names the same id: its stream is its own, and empty.
        let (status, _) = send(&shop, Method::GET, &format!("/orders/{id}"), Some("globex")).await;
        assert_eq!(status, 404);
        // A product of another tenant is not for sale here.
        assert_eq!(
            send(&shop, Method::POST, "/orders/widget/1", Some("acme")).await,
            (404, "no such product".to_owned())
        );
        assert_eq!(
            send(&shop, Method::GET, "/orders/..%2F", Some("acme")).await,
            (400, "malformed order id".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bad_paths_and_quantities_are_fixed_400s() {
        let shop = shop("quantities");
        let phrase = "the quantity must be a whole number from 1 to 100";
        for qty in ["0", "101", "abc", "-1", "+5", "4294967296", "1e3", "007x"] {
            let (status, body) = send(
                &shop,
                Method::POST,
                &format!("/orders/tea/{qty}"),
                Some("acme"),
            )
            .await;
            assert_eq!((status, body.as_str()), (400, phrase), "quantity {qty:?}");
        }
        // The path itself undecodable: one phrase, no parser's words.
        for uri in ["/orders/%FF/1", "/orders/%FF"] {
            let method = if uri.matches('/').count() == 3 {
                Method::POST
            } else {
                Method::GET
            };
            let (status, body) = send(&shop, method, uri, Some("acme")).await;
            assert_eq!((status, body.as_str()), (400, "malformed path"), "{uri}");
        }
        // The bound itself is an order.
        assert_eq!(
            code(&shop, Method::POST, "/orders/tea/100", Some("acme")).await,
            201
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_catalog_outage_is_503_with_a_fixed_phrase() {
        let shop = shop("outage");
        Connection::open(shop.dir.0.join("catalog.db"))
            .unwrap()
            .execute_batch("DROP TABLE products")
            .unwrap();
        let answer = (503, "catalog unavailable".to_owned());
        assert_eq!(
            send(&shop, Method::GET, "/products", Some("acme")).await,
            answer
        );
        // Not "no such product": the product may well exist.
        assert_eq!(
            send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await,
            answer
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_provider_cancels_then_the_open_breaker_queues() {
        let shop = shop("payments");
        send(&shop, Method::POST, "/gateway/down", None).await;
        // The retry is outside the breaker: each of the first order's two attempts is a call
        // the breaker judges.
        let (status, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
        assert_eq!(
            (status, body.split_whitespace().next()),
            (502, Some("CANCELLED"))
        );
        let s = shop.app.breaker.snapshot();
        assert_eq!((s.calls, s.failures), (2, 2), "{s:?}");
        // The next order's first attempt opens it; its retry is refused by the open breaker
        // and not retried, and the fallback queues the payment.
        let (status, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
        assert_eq!(
            (status, body.split_whitespace().next()),
            (202, Some("QUEUED"))
        );
        assert_eq!(shop.app.provider_attempts.load(Ordering::SeqCst), 3);
        // While open, no charge reaches the provider.
        let (status, _) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
        assert_eq!(status, 202);
        assert_eq!(shop.app.provider_attempts.load(Ordering::SeqCst), 3);
        assert_eq!(shop.app.queue.lock().unwrap().len(), 2);
        let (_, health) = send(&shop, Method::GET, "/health", None).await;
        assert!(health.contains("open"), "{health}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_gateway_takes_only_its_documented_states() {
        let shop = shop("gateway");
        for state in ["sideways", "UP", "up%20", "down.", ""] {
            let (status, body) =
                send(&shop, Method::POST, &format!("/gateway/{state}"), None).await;
            assert_eq!(status, 404, "{state:?}");
            assert!(
                body.is_empty() || body == "no such gateway state",
                "{state:?}: {body}"
            );
        }
        // None of them switched the provider off.
        assert_eq!(
            code(&shop, Method::POST, "/orders/tea/1", Some("acme")).await,
            201
        );
        assert_eq!(
            send(&shop, Method::POST, "/gateway/down", None).await,
            (200, "payment provider down\n".to_owned())
        );
        assert_eq!(
            code(&shop, Method::POST, "/orders/tea/1", Some("acme")).await,
            502
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_routes_are_404_before_the_tenant_layer() {
        let shop = shop("routes");
        // Without a key: 404, not 401.
        assert_eq!(code(&shop, Method::GET, "/nope", None).await, 404);
        assert_eq!(code(&shop, Method::GET, "/orders/a/b/c", None).await, 404);
        // With one, many times: the free plan's burst (5) is not spent on them.
        for _ in 0..10 {
            assert_eq!(code(&shop, Method::GET, "/nope", Some("globex")).await, 404);
        }
        for _ in 0..5 {
            assert_eq!(
                code(&shop, Method::GET, "/products", Some("globex")).await,
                200
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_holds_at_most_its_own_pool() {
        let shop = shop("bulkhead");
        send(&shop, Method::POST, "/gateway/slow", None).await;
        // acme fills its pool with slow orders...
        let held: Vec<_> = (0..TENANT_CONCURRENCY)
            .map(|_| {
                let router = shop.router.clone();
                tokio::spawn(exchange(
                    router,
                    request(
                        Method::POST,
                        "/orders/tea/1",
                        &[(API_KEY_HEADER, "demo-key-acme")],
                    ),
                ))
            })
            .collect();
        // The orders' SQLite work runs on blocking threads, in real time: wait for it (a
        // guard against a hang, not a sleep; the paused clock does not move meanwhile).
        let guard = std::time::Instant::now();
        while shop.app.provider_attempts.load(Ordering::SeqCst) < u64::from(TENANT_CONCURRENCY) {
            assert!(
                guard.elapsed() < Duration::from_secs(60),
                "the held orders never reached the provider"
            );
            tokio::task::yield_now().await;
        }
        // ...so its next request is refused at once...
        let (status, body) = send(&shop, Method::GET, "/products", Some("acme")).await;
        assert_eq!((status, body.as_str()), (503, "bulkhead full"));
        // ...while globex, with a pool of its own, is served (after the slow provider).
        let (status, body) = send(&shop, Method::POST, "/orders/tea/1", Some("globex")).await;
        assert_eq!((status, body.as_str()), (404, "no such product"));
        let (status, body) = send(&shop, Method::POST, "/orders/widget/1", Some("globex")).await;
        assert_eq!(status, 201, "{body}");
        for order in held {
            assert_eq!(order.await.unwrap().0, 201);
        }
        // Once acme's orders are done, its pool is free again.
        assert_eq!(
            code(&shop, Method::GET, "/products", Some("acme")).await,
            200
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_free_plan_is_limited_per_tenant() {
        let shop = shop("limits");
        let mut statuses = Vec::new();
        for _ in 0..7 {
            statuses.push(code(&shop, Method::GET, "/products", Some("globex")).await);
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
        // acme (gold) is not held back by globex's limit.
        assert_eq!(
            code(&shop, Method::GET, "/products", Some("acme")).await,
            200
        );
        // After a refill interval globex may call again.
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(
            code(&shop, Method::GET, "/products", Some("globex")).await,
            200
        );
    }
}
