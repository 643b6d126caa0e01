//! The storefront, the main job: one axum service on embedded defaults (SQLite files and
//! in-process caches, nothing to install) that composes the patterns.
//!
//! Every request names its tenant in `x-tenant-id`; the registry (TOML) knows `acme` (plan
//! gold), `globex` (free) and `initech` (suspended).
//!
//! | route | what it shows |
//! |---|---|
//! | `GET /products` | the tenant's catalog, read from a shared SQLite table through `Scoped` (the tenant filter cannot be left out), cache-aside per tenant |
//! | `POST /orders/{sku}/{qty}` | an order, event-sourced on SQLite: placed, then charged through the payment client (retry, circuit breaker, timeout, bulkhead; queued while the breaker is open), then paid, queued or cancelled |
//! | `GET /orders/{id}` | the order rebuilt from its events; another tenant's order is a 404 |
//! | `POST /gateway/{up,down}` | switches the simulated payment provider (not per tenant) |
//! | `GET /health` | breaker, cache and queue |
//!
//! In front of every route: the tenant layer (401 without a tenant, 400 malformed, 403 unknown
//! or suspended), a GCRA rate limit per tenant chosen by plan (gold 100/s, free 5/s; 429 with
//! `Retry-After` and `RateLimit-*`), and the HTTP error mapping.
//!
//! ```text
//! cargo run --example storefront --features full     # 127.0.0.1:3000 (TP_ADDR), data in TP_DATA
//! curl -s -H 'x-tenant-id: acme' 127.0.0.1:3000/products
//! curl -s -XPOST -H 'x-tenant-id: acme' 127.0.0.1:3000/orders/tea/2      # PAID order ...
//! curl -s -XPOST 127.0.0.1:3000/gateway/down
//! curl -s -XPOST -H 'x-tenant-id: acme' 127.0.0.1:3000/orders/tea/1      # CANCELLED twice, then QUEUED
//! curl -s -H 'x-tenant-id: globex' 127.0.0.1:3000/orders/<acme's id>     # 404
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
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    error_handling::HandleErrorLayer,
    extract::{Path, State},
    http::{Request, StatusCode},
    routing::{get, post},
};
use rusqlite::{Connection, types::Value};
use serde::{Deserialize, Serialize};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError, KeyError, ServiceBuilderExt,
    breaker::{CircuitBreakerHandle, CircuitBreakerLayer, FallbackLayer},
    bulkhead::BulkheadLayer,
    cache::{CacheLayer, store::MokaStore},
    eventstore::{
        Aggregate, Command, CommandService, DomainEvent, Repository, RepositoryError,
        sqlite::SqliteStore,
    },
    http::handle_error,
    key::{ExtensionKey, key_fn},
    observe::StateHandle,
    ratelimit::{GcraLimiter, Rate, RateLimitLayer},
    retry::RetryPolicy,
    tenant::TenantId,
    tenant_resolution::{StaticTenants, Tenant, TenantContext, TenantLayer, sqlite::Scoped},
};

const TENANTS: &str = r#"
[[tenants]]
id = "acme"
plan = "gold"
[[tenants]]
id = "globex"
plan = "free"
[[tenants]]
id = "initech"
plan = "gold"
status = "suspended"
"#;

/// The rate of a plan.
fn plan_rate(plan: &str) -> Rate {
    match plan {
        "gold" => Rate::per_second(100),
        _ => Rate::per_second(5),
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

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AlreadyPlaced => "the order is already placed",
            Self::NotPlaced => "no such order",
            Self::Settled => "the order is already settled",
            Self::NoQuantity => "the quantity must be at least 1",
        })
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

/// The payment client: queued while the breaker is open; inside it, one outcome per payment
/// for the breaker, up to two attempts, a timeout per attempt and a bulkhead.
fn payments(
    provider_up: Arc<AtomicBool>,
    queue: Arc<Mutex<Vec<Payment>>>,
) -> Result<(Payments, CircuitBreakerHandle), BoxError> {
    let provider = service_fn(move |p: Payment| {
        let up = provider_up.load(Ordering::SeqCst);
        async move {
            if up {
                Ok(Charge::Charged(format!("ch_{}_{}", p.order, p.amount)))
            } else {
                Err(BoxError::from("payment provider unavailable"))
            }
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
    let breaker = CircuitBreakerLayer::builder("payments")
        .no_failure_rate()
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(30))
        .build()?;
    let handle = breaker.handle();
    let client = ServiceBuilder::new()
        .layer(FallbackLayer::service(enqueue).on_rejection_only())
        .circuit_breaker(breaker)
        .retry_with(
            RetryPolicy::errors("payments")
                .max_attempts(2)
                .build_static()?,
        )
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
    provider_up: Arc<AtomicBool>,
    queue: Arc<Mutex<Vec<Payment>>>,
}

/// An order's stream id: the tenant's id, then the order's. A tenant can only name its own.
fn stream_id(tenant: &TenantId, order: &str) -> String {
    format!("{tenant}.{order}")
}

async fn products(State(app): State<App>, Tenant(t): Tenant) -> (StatusCode, String) {
    let query = CatalogQuery {
        tenant: t.id().clone(),
    };
    match app.catalog.oneshot(query).await {
        Ok(list) => (
            StatusCode::OK,
            list.iter()
                .map(|p| format!("{} {}\n", p.sku, p.price))
                .collect(),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("catalog: {e}\n")),
    }
}

async fn place(
    State(app): State<App>,
    Tenant(t): Tenant,
    Path((sku, qty)): Path<(String, u32)>,
) -> (StatusCode, String) {
    let Some(price) = app
        .catalog
        .clone()
        .oneshot(CatalogQuery {
            tenant: t.id().clone(),
        })
        .await
        .ok()
        .and_then(|list| list.iter().find(|p| p.sku == sku).map(|p| p.price))
    else {
        return (StatusCode::NOT_FOUND, "no such product\n".into());
    };
    let order = uuid::Uuid::now_v7().simple().to_string();
    let stream = stream_id(t.id(), &order);
    let commands = CommandService::new(app.orders.clone());
    if let Err(e) = commands
        .clone()
        .oneshot(Command::new(
            stream.clone(),
            OrderCommand::Place {
                sku: sku.clone(),
                qty,
            },
        ))
        .await
    {
        return match e {
            RepositoryError::Domain(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
            e => (StatusCode::SERVICE_UNAVAILABLE, format!("orders: {e}\n")),
        };
    }
    // The order's saga: charge, then record the outcome; a failed charge cancels the order.
    let payment = Payment {
        order: order.clone(),
        amount: price * i64::from(qty),
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
    match commands
        .oneshot(Command::new(stream, OrderCommand::Settle(outcome)))
        .await
    {
        Ok(_) => (status, format!("{answer} order {order} {sku} x{qty}\n")),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("orders: {e}\n")),
    }
}

async fn show(
    State(app): State<App>,
    Tenant(t): Tenant,
    Path(order): Path<String>,
) -> (StatusCode, String) {
    if !order.bytes().all(|b| b.is_ascii_alphanumeric()) || order.len() > 64 {
        return (StatusCode::BAD_REQUEST, "malformed order id\n".into());
    }
    match app.orders.load(&stream_id(t.id(), &order)).await {
        Ok(o) => match (o.state.status, o.state.sku) {
            (Some(status), Some(sku)) => (
                StatusCode::OK,
                format!(
                    "{} {sku} x{} (version {})\n",
                    status.as_str(),
                    o.state.qty,
                    o.version
                ),
            ),
            _ => (StatusCode::NOT_FOUND, "no such order\n".into()),
        },
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("orders: {e}\n")),
    }
}

async fn health(State(app): State<App>) -> String {
    let r = app.breaker.report();
    let queued = app.queue.lock().map_or(0, |q| q.len());
    format!(
        "breaker {}: {} ({}); catalog loads {}; queued payments {queued}\n",
        r.name,
        r.state,
        r.health,
        app.catalog_loads.load(Ordering::Relaxed),
    )
}

/// The storefront over the data in `dir`.
fn storefront(dir: &FsPath) -> Result<(Router, App), BoxError> {
    let catalog_loads = Arc::new(AtomicU64::new(0));
    let db = Arc::new(Mutex::new(open_catalog(&dir.join("catalog.db"))?));
    let store = SqliteStore::open(dir.join("orders.db"))?;
    let provider_up = Arc::new(AtomicBool::new(true));
    let queue = Arc::new(Mutex::new(Vec::new()));
    let (payments, breaker) = payments(provider_up.clone(), queue.clone())?;
    let app = App {
        catalog: catalog(db, catalog_loads.clone())?,
        catalog_loads,
        orders: Repository::new(Arc::new(store), "order-"),
        payments,
        breaker,
        provider_up,
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
    let tenants = TenantLayer::builder(StaticTenants::from_toml(TENANTS)?)
        .header("x-tenant-id")
        .build()?;
    let tenant_routes = Router::new()
        .route("/products", get(products))
        .route("/orders/{sku}/{qty}", post(place))
        .route("/orders/{id}", get(show))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .layer(tenants)
                .layer(RateLimitLayer::new(limiter)),
        );
    let router = Router::new()
        .route("/health", get(health))
        .route(
            "/gateway/{state}",
            post(
                |State(app): State<App>, Path(state): Path<String>| async move {
                    app.provider_up.store(state == "up", Ordering::SeqCst);
                    format!("payment provider {state}\n")
                },
            ),
        )
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

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = data_dir()?;
    let (router, _) = storefront(&dir)?;
    let addr = std::env::var("TP_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "storefront on http://{} (data in {}); try: curl -H 'x-tenant-id: acme' http://{}/products",
        listener.local_addr()?,
        dir.display(),
        listener.local_addr()?
    );
    axum::serve(listener, router).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::{Method, Response};
    use http_body_util::BodyExt;

    use super::*;

    struct Shop {
        router: Router,
        app: App,
        _dir: TempDir,
    }

    /// A directory removed when dropped.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn shop(name: &str) -> Shop {
        let dir =
            std::env::temp_dir().join(format!("tp-storefront-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (router, app) = storefront(&dir).unwrap();
        Shop {
            router,
            app,
            _dir: TempDir(dir),
        }
    }

    async fn send(shop: &Shop, method: Method, uri: &str, tenant: Option<&str>) -> (u16, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = tenant {
            req = req.header("x-tenant-id", t);
        }
        let res: Response<Body> = shop
            .router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
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
        assert_eq!(code(&shop, Method::GET, "/products", None).await, 401);
        assert_eq!(
            code(&shop, Method::GET, "/products", Some("ac me")).await,
            400
        );
        assert_eq!(
            code(&shop, Method::GET, "/products", Some("umbrella")).await,
            403
        );
        assert_eq!(
            code(&shop, Method::GET, "/products", Some("initech")).await,
            403
        );
        assert_eq!(code(&shop, Method::GET, "/health", None).await, 200);
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
            code(&shop, Method::POST, "/orders/widget/1", Some("acme")).await,
            404
        );
        assert_eq!(
            code(&shop, Method::POST, "/orders/tea/0", Some("acme")).await,
            422
        );
        assert_eq!(
            code(&shop, Method::GET, "/orders/..%2F", Some("acme")).await,
            400
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_provider_cancels_then_the_open_breaker_queues() {
        let shop = shop("payments");
        send(&shop, Method::POST, "/gateway/down", None).await;
        // Each order makes two attempts, one outcome for the breaker, which opens on the
        // second failed order in a row; then orders are queued, not refused.
        let (status, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
        assert_eq!(
            (status, body.split_whitespace().next()),
            (502, Some("CANCELLED"))
        );
        let (status, _) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
        assert_eq!(status, 502);
        let (status, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
        assert_eq!(
            (status, body.split_whitespace().next()),
            (202, Some("QUEUED"))
        );
        assert_eq!(shop.app.queue.lock().unwrap().len(), 1);
        let (_, health) = send(&shop, Method::GET, "/health", None).await;
        assert!(health.contains("open"), "{health}");
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
