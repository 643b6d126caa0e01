//! The wiring: every layer and service of the storefront, built in the order a request meets
//! them, and the handles `/admin/patterns` lists.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    error_handling::HandleErrorLayer,
    http::Request,
    middleware,
    routing::{get, get_service, post, post_service},
};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::{
    Layer, ServiceBuilder,
    util::{BoxCloneSyncService, Either},
};
use tower_patterns::{
    BoxError, KeyError,
    bulkhead::KeyedBulkheadLayer,
    consistency::{TokenKey, layer::ConsistencyLayer},
    http::ErrorResponseLayer,
    key::{ExtensionKey, key_fn},
    observe::StateHandle,
    ratelimit::{GcraLimiter, KeyedRateLimitLayer, redis::RedisLimiter},
    shard::{Jump, ShardRouter},
    tenant::{StaticTenants, TenancyLayer, TenantContext, TenantId},
};

use crate::{
    API_KEY_HEADER, App, ShardService, TENANT_CONCURRENCY, TENANT_HEADER, admin, auth,
    auth::Customer,
    bus,
    catalog::catalog,
    checkout,
    config::{Auth, Config},
    edge, lag,
    ledger::Ledger,
    payments::payments,
    plan_rate, products, queue,
    routes::{self, ShardCtx, health, place, show},
    shards, status,
};

/// The tenant layer for `auth` over `tenants`.
fn tenant_layer(
    tenants: StaticTenants,
    auth: Auth,
    jwt_secret: &str,
) -> Result<TenancyLayer<StaticTenants>, BoxError> {
    let builder = TenancyLayer::builder("storefront")
        .store(tenants)
        .header(TENANT_HEADER);
    let builder = match auth {
        // The key or the token proves the tenant; `x-tenant-id`, when sent, may only agree
        // with it (403), and so must the other when both are sent.
        Auth::ApiKey => builder
            .api_key(API_KEY_HEADER)
            .jwt(auth::verifier(jwt_secret)?),
        Auth::HeaderOnly => builder.allow_unverified(),
    };
    Ok(builder.build()?)
}

/// The storefront's routes over the data in `cfg.data`, its tenants in `tenants`, without the
/// edge stack (`edge::serve` adds it). The metrics recorder, if any, must be installed first:
/// layers register their metrics when they are built.
pub(crate) async fn storefront(
    cfg: &Config,
    tenants: StaticTenants,
    admin_token: Arc<str>,
    prometheus: Option<PrometheusHandle>,
) -> Result<(Router, App), BoxError> {
    let dir = &cfg.data;
    shards::check_count(dir, cfg.shards)?;
    let catalog_loads = Arc::new(AtomicU64::new(0));
    // The events: SQLite files in `dir`, or PostgreSQL with `--postgres` (one line naming the
    // flag when it cannot be reached).
    let postgres = cfg.postgres.as_deref();
    let on_postgres = |e: BoxError| match postgres {
        Some(url) => BoxError::from(format!(
            "storefront: --postgres {:?}: {e} (also TP_STOREFRONT_POSTGRES)",
            crate::config::after_userinfo(url)
        )),
        None => e,
    };
    let products = products::open(dir, postgres).await.map_err(on_postgres)?;
    let token_key = match TokenKey::from_env("TP_TOKEN_KEY")? {
        Some(key) => key,
        None => TokenKey::random()?,
    };
    let (lag_layer, lag) = lag::chaos()?;
    let shards = shards::open(dir, postgres, cfg.shards, &token_key, &lag_layer)
        .await
        .map_err(on_postgres)?;
    let stocked = products::DEMO.map(|(tenant, sku, _, _)| (tenant, sku));
    let ledger = Ledger::open(&dir.join("ledger.db"), &stocked)?;
    let provider_attempts = Arc::new(AtomicU64::new(0));
    let pay = payments(cfg.payments, provider_attempts.clone(), ledger.clone())?;
    let definition = checkout::definition(shards.clone(), pay.client.clone(), ledger.clone())?;
    let checkout = checkout::orchestrator(dir, postgres, definition)
        .await
        .map_err(on_postgres)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let queue = queue::spawn_drain(
        ledger.clone(),
        pay.direct.clone(),
        pay.breaker.clone(),
        shards.clone(),
        stopped,
    );
    // The rate of the caller's plan.
    let plan = |req: &Request<Body>| {
        req.extensions()
            .get::<TenantContext>()
            .map(|t| plan_rate(t.plan()))
    };
    // In process by default; with `--redis`, counted in Redis, so that several storefronts
    // share each tenant's limit.
    let limit = match &cfg.redis {
        None => Either::Left(KeyedRateLimitLayer::new(
            GcraLimiter::builder("tenant")
                .key(ExtensionKey::<TenantId>::new())
                .rate(plan_rate("free"))
                .rate_for(plan, plan_rate("free").refill())
                .build()?,
        )),
        Some(url) => Either::Right(KeyedRateLimitLayer::new(
            RedisLimiter::builder("tenant")
                .key(ExtensionKey::<TenantId>::new())
                .url(url.as_str())
                .rate(plan_rate("free"))
                .rate_for(plan)
                .build()
                .map_err(|e| {
                    format!(
                        "storefront: --redis {:?}: {e} (also TP_STOREFRONT_REDIS)",
                        crate::config::after_userinfo(url)
                    )
                })?,
        )),
    };
    let limit_handle = match &limit {
        Either::Left(l) => l.handle(),
        Either::Right(l) => l.handle(),
    };
    let bulkheads = KeyedBulkheadLayer::builder("tenant")
        .key(ExtensionKey::<TenantId>::new())
        .default_size(TENANT_CONCURRENCY)
        .build()?;
    let jwt_secret: Arc<str> = match &cfg.jwt_secret {
        Some(secret) => secret.as_str().into(),
        None => format!("{}{}", admin::random_token(), admin::random_token()).into(),
    };
    let tenancy = tenant_layer(tenants, cfg.auth, &jwt_secret)?;
    let verifier = Arc::new(auth::verifier(&jwt_secret)?);
    let edge = edge::shed(cfg)?;
    // With the events shared (`--postgres`) and `--redis`, so is the catalog cache.
    let shared_cache = cfg.redis.as_deref().filter(|_| postgres.is_some());
    let catalog = catalog(
        dir,
        products.store().clone(),
        catalog_loads.clone(),
        shared_cache,
    )
    .await?;
    // Reads that send a product command's token wait for the catalog's read model.
    let catalog_consistency = ConsistencyLayer::builder("catalog")
        .key(token_key)
        .read_side(catalog.view.clone())
        .wait(Duration::from_secs(2))
        .build()?;
    let relays = match &cfg.nats {
        Some(url) => bus::relay(url, dir, &shards).await.map_err(|e| {
            format!(
                "storefront: --nats {:?}: {e} (also TP_STOREFRONT_NATS)",
                crate::config::after_userinfo(url)
            )
        })?,
        None => Vec::new(),
    };
    // `--postgres-replicas`: the database's streaming replicas, watched for lag while the
    // storefront runs (the app holds the set: its monitor ends when the last clone goes).
    let replicas = match postgres {
        Some(primary) if !cfg.postgres_replicas.is_empty() => {
            let set = crate::backend::replicas(primary, &cfg.postgres_replicas)?;
            set.spawn();
            Some(set)
        }
        _ => None,
    };
    let app = App {
        auth: cfg.auth,
        replicas: replicas.clone(),
        relays: relays.clone().into(),
        catalog: catalog.service,
        invalidate_catalog: catalog.invalidate,
        invalidate_tenant: catalog.invalidate_tenant,
        catalog_view: catalog.view.clone(),
        products,
        catalog_db: catalog.chaos.clone(),
        catalog_loads,
        shards: shards.clone(),
        checkout,
        ledger,
        breaker: pay.breaker.clone(),
        provider: pay.chaos.clone(),
        lag: lag.clone(),
        provider_attempts,
        payment_timeouts: pay.timeouts.clone(),
        queue,
        transitions: status::Transitions::follow(&pay.breaker, stop.subscribe()),
        stop: Arc::new(stop),
        edge_layer: edge.clone(),
        handles: Arc::default(),
        admin_token,
        jwt_secret,
        prometheus,
    };
    // Orders: a shard router by customer over one stack per shard (its consistency layer
    // over its command and query routes).
    let per_shard: Vec<ShardService> = shards
        .all
        .iter()
        .map(|shard| {
            // The outer routes match the path (and answer 405 to other methods): a
            // command is a POST, a query a GET.
            let routes = post(place).get(show).with_state(ShardCtx {
                app: app.clone(),
                shard: shard.clone(),
            });
            BoxCloneSyncService::new(shard.consistency.clone().layer(routes))
        })
        .collect();
    let orders = ShardRouter::builder("orders")
        .shards(per_shard)
        .strategy(Jump::new(cfg.shards))
        .key(key_fn(|req: &Request<Body>| {
            req.extensions()
                .get::<Customer>()
                .map(|c| c.0.to_string())
                .ok_or_else(|| KeyError::missing("customer"))
        }))
        .build()?;
    let mut handles: Vec<Box<dyn StateHandle>> = vec![
        Box::new(edge.handle()),
        Box::new(tenancy.handle()),
        Box::new(limit_handle),
        Box::new(bulkheads.handle()),
        catalog.cache,
        Box::new(catalog.view),
        Box::new(catalog_consistency.handle()),
        Box::new(catalog.chaos),
        Box::new(orders.handle()),
    ];
    for shard in shards.all.iter() {
        handles.push(Box::new(shard.view.clone()));
        handles.push(Box::new(shard.consistency.handle()));
    }
    for relay in relays {
        handles.push(Box::new(relay));
    }
    if let Some(set) = &replicas {
        handles.push(Box::new(set.handle()));
        for replica in set.handle().each_replica() {
            handles.push(Box::new(replica));
        }
    }
    handles.extend([
        Box::new(lag) as Box<dyn StateHandle>,
        Box::new(pay.retry),
        Box::new(pay.breaker),
        Box::new(pay.bulkhead),
        Box::new(pay.chaos),
        Box::new(app.queue.clone()),
        Box::new(app.checkout.handle()),
    ]);
    let app = App {
        handles: Arc::new(handles),
        ..app
    };
    let orders = ErrorResponseLayer::new().layer(orders);
    // `route_layer`, not `layer`: a path no route matches is a 404 before any of these run,
    // so it neither needs a tenant nor spends one's rate limit.
    let catalog_routes = Router::new()
        .route("/products", get(routes::products))
        .route("/products/{sku}", post(products::command))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(tower_patterns::http::handle_error))
                .layer(catalog_consistency),
        );
    let tenant_routes = Router::new()
        .merge(catalog_routes)
        .route("/orders/{sku}/{qty}", post_service(orders.clone()))
        .route("/orders/{id}", get_service(orders))
        // Innermost: who orders, once the tenant layer has verified the credential.
        .route_layer(middleware::from_fn_with_state(verifier, auth::customer))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(tower_patterns::http::handle_error))
                .layer(tenancy)
                .map_request(edge::record_tenant)
                .layer(limit)
                .layer(bulkheads),
        );
    let router = Router::new()
        .route("/health", get(health))
        .merge(admin::routes(app.clone()))
        .merge(tenant_routes)
        .with_state(app.clone());
    Ok((router, app))
}
