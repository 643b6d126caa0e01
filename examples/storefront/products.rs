//! The catalog's write side: a `Product` aggregate per tenant and sku, event-sourced in
//! `catalog-events.db`, changed by `POST /products/{sku}` (JSON), and the demo products put in
//! once (a restart adds nothing).

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_patterns::{
    BoxError,
    consistency::Mark,
    eventstore::{
        Aggregate, Command, CommandService, DomainEvent, EventStore, Repository, RepositoryError,
    },
    tenant::{Tenant, TenantId},
};

use crate::{
    App,
    backend::{self, Store},
    config::Auth,
    routes::{ApiError, JsonBody, Params},
};

/// The prefix of every product's stream; the tenant and the sku follow (`product-acme.tea`).
pub(crate) const PRODUCT_PREFIX: &str = "product-";

/// The demo products: (tenant, sku, name, price).
pub(crate) const DEMO: [(&str, &str, &str, i64); 3] = [
    ("acme", "tea", "Green tea", 4),
    ("acme", "coffee", "Dark coffee", 5),
    ("globex", "widget", "Blue widget", 120),
];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ProductEvent {
    Created { name: String, price: i64 },
    Repriced { price: i64 },
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Created { .. } => "Created",
            Self::Repriced { .. } => "Repriced",
        }
    }
}

/// What a product command asks.
#[derive(Clone, Debug)]
pub(crate) enum ProductCommand {
    Create { name: String, price: i64 },
    Reprice { price: i64 },
}

#[derive(Debug)]
pub(crate) enum ProductError {
    Exists,
    Missing,
}

impl std::fmt::Display for ProductError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Exists => "the product exists",
            Self::Missing => "no such product",
        })
    }
}

impl std::error::Error for ProductError {}

#[derive(Default, Serialize, Deserialize)]
pub(crate) struct Product {
    created: bool,
    price: i64,
}

impl Aggregate for Product {
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    fn handle(&self, command: &ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        match command {
            ProductCommand::Create { .. } if self.created => Err(ProductError::Exists),
            ProductCommand::Create { name, price } => Ok(vec![ProductEvent::Created {
                name: name.clone(),
                price: *price,
            }]),
            ProductCommand::Reprice { .. } if !self.created => Err(ProductError::Missing),
            ProductCommand::Reprice { price } if *price == self.price => Ok(vec![]),
            ProductCommand::Reprice { price } => Ok(vec![ProductEvent::Repriced { price: *price }]),
        }
    }

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::Created { price, .. } => {
                self.created = true;
                self.price = *price;
            }
            ProductEvent::Repriced { price } => self.price = *price,
        }
    }
}

/// The products' event store and repository.
pub(crate) type Products = Repository<Product, Store>;

/// Opens the products' events (`catalog-events` in `dir`, or in PostgreSQL), putting in the
/// demo products that are not there yet.
pub(crate) async fn open(
    dir: &std::path::Path,
    postgres: Option<&str>,
) -> Result<Products, BoxError> {
    let store = backend::store(dir, postgres, "catalog-events").await?;
    let products = Repository::new(Arc::new(store), PRODUCT_PREFIX);
    for (tenant, sku, name, price) in DEMO {
        let stream = format!("{tenant}.{sku}");
        if products
            .store()
            .stream_version(&format!("{PRODUCT_PREFIX}{stream}"))
            .await?
            == 0
        {
            let command = ProductCommand::Create {
                name: name.into(),
                price,
            };
            CommandService::new(products.clone())
                .oneshot(Command::new(stream, command))
                .await?;
        }
    }
    Ok(products)
}

/// `POST /products/{sku}`: `{"name": "...", "price": 4}` creates a product, `{"price": 5}`
/// reprices one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProductSpec {
    name: Option<String>,
    price: i64,
}

/// A sku or a name: 1 to 64 visible characters, no control characters.
fn valid(text: &str) -> bool {
    (1..=64).contains(&text.chars().count()) && !text.chars().any(char::is_control)
}

/// Runs a product command. It answers once the catalog's read model shows it and the tenant's
/// cached catalog is dropped, so the next read (with or without the consistency token the
/// answer carries) sees it.
pub(crate) async fn command(
    State(app): State<App>,
    Tenant(t): Tenant,
    headers: HeaderMap,
    Params(sku): Params<String>,
    JsonBody(spec): JsonBody<ProductSpec>,
) -> Result<Response, ApiError> {
    // The catalog is the tenant's to change, not its customers': a customer's bearer token
    // names the tenant too, but only the tenant's own API key (verified by the tenant layer)
    // may run a product command.
    if app.auth == Auth::ApiKey && !headers.contains_key(crate::API_KEY_HEADER) {
        return Err(ApiError::Forbidden(
            "product commands need the tenant's API key",
        ));
    }
    if !valid(&sku) || !sku.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ApiError::BadRequest(
            "a sku is 1 to 64 letters, digits or '-'",
        ));
    }
    if !(1..=100_000_000).contains(&spec.price) {
        return Err(ApiError::BadRequest("a price is from 1 to 100000000"));
    }
    let (command, created) = match spec.name {
        Some(name) if valid(&name) => (
            ProductCommand::Create {
                name,
                price: spec.price,
            },
            true,
        ),
        Some(_) => return Err(ApiError::BadRequest("a name is 1 to 64 characters")),
        None => (ProductCommand::Reprice { price: spec.price }, false),
    };
    let stream = format!("{}.{sku}", t.id());
    let committed = match CommandService::new(app.products.clone())
        .oneshot(Command::new(stream, command))
        .await
    {
        Ok(c) => c,
        Err(RepositoryError::Domain(ProductError::Exists)) => {
            return Err(ApiError::Conflict("the product exists"));
        }
        Err(RepositoryError::Domain(ProductError::Missing)) => {
            return Err(ApiError::NotFound("no such product"));
        }
        Err(e) => return Err(ApiError::Unavailable("catalog unavailable", e.into())),
    };
    if created {
        app.ledger
            .stock(t.id().as_str(), &sku)
            .await
            .map_err(|e| ApiError::Unavailable("catalog unavailable", e))?;
    }
    let mut res = (
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        format!(
            "{} {sku} at {}\n",
            if created { "created" } else { "repriced" },
            spec.price
        ),
    )
        .into_response();
    if let Some(&position) = committed.positions.last() {
        // Wait (briefly) for the read model, then drop the tenant's cached answers: a load in
        // flight does not store its older value.
        let shown =
            crate::catalog::reached(&app.catalog_view, position, Duration::from_secs(2)).await;
        invalidate(&app, t.id()).await?;
        if !shown {
            *res.status_mut() = StatusCode::ACCEPTED;
        }
        res.extensions_mut().insert(Mark::Position(position));
    }
    Ok(res)
}

async fn invalidate(app: &App, tenant: &TenantId) -> Result<(), ApiError> {
    (app.invalidate_tenant)(tenant.clone())
        .await
        .map_err(|e| ApiError::Unavailable("cache unavailable", e))
}
