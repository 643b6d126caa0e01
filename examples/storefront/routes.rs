//! The routes: the handlers, the answers they give (fixed phrases only) and the path
//! extractor whose rejection is a fixed 400.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Extension, Json,
    body::Body,
    extract::{
        FromRequest, FromRequestParts, Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use tower::ServiceExt;
use tower_patterns::{
    BoxError,
    consistency::Mark,
    eventstore::GlobalPosition,
    http::{classify_error, error_response},
    observe::StateHandle,
    saga::{SagaId, SagaStatus},
    tenant::{Tenant, TenantId},
};

use crate::{
    App,
    auth::Customer,
    catalog::{CatalogQuery, Product, search_terms},
    checkout,
    shards::Shard,
};

/// The largest quantity of one order line.
pub(crate) const MAX_QTY: u32 = 100;

/// Why a handler could not do what was asked. Every variant answers with a fixed phrase: no
/// error text, type name or input ever reaches the body.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400: the request itself is wrong.
    BadRequest(&'static str),
    /// 404: nothing by that name, for this tenant.
    NotFound(&'static str),
    /// 403: the caller may not do this.
    Forbidden(&'static str),
    /// 409: the command conflicts with what is there.
    Conflict(&'static str),
    /// 413: the body is larger than the edge allows.
    TooLarge,
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
            Self::Conflict(phrase) => (StatusCode::CONFLICT, phrase),
            Self::Forbidden(phrase) => (StatusCode::FORBIDDEN, phrase),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            Self::Unavailable(what, err) => {
                if classify_error(&*err).status != StatusCode::INTERNAL_SERVER_ERROR {
                    return error_response::<String>(&*err).map(Body::from);
                }
                tracing::warn!(error = %err, "{what}");
                (StatusCode::SERVICE_UNAVAILABLE, what)
            }
        };
        (status, phrase).into_response()
    }
}

/// Path parameters whose rejection is a fixed 400 (axum's own names the types it expected).
pub(crate) struct Params<T>(pub(crate) T);

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

/// A JSON body whose rejection is a fixed phrase: 413 past the edge's body limit, 415 without
/// `content-type: application/json`, else 400 (axum's own rejections quote serde's message,
/// which names fields and types).
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(t)) => Ok(Self(t)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected content-type: application/json",
            )
                .into_response()),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge.into_response())
            }
            Err(_) => Err(ApiError::BadRequest("malformed JSON").into_response()),
        }
    }
}

/// A quantity from the path: digits only, 1 to [`MAX_QTY`].
pub(crate) fn quantity(text: &str) -> Result<u32, ApiError> {
    const PHRASE: &str = "the quantity must be a whole number from 1 to 100";
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(PHRASE));
    }
    match text.parse::<u32>() {
        Ok(qty) if (1..=MAX_QTY).contains(&qty) => Ok(qty),
        _ => Err(ApiError::BadRequest(PHRASE)),
    }
}

/// An order's stream id: the tenant's id, then the order's. A tenant can only name its own.
pub(crate) fn stream_id(tenant: &TenantId, order: &str) -> String {
    format!("{tenant}.{order}")
}

/// The tenant's catalog; a failure is a 503, whatever its cause.
pub(crate) async fn catalog_of(app: &App, tenant: &TenantId) -> Result<Arc<[Product]>, ApiError> {
    search(app, tenant, "").await
}

/// The tenant's products whose name matches `q` (every product when `q` is empty).
async fn search(app: &App, tenant: &TenantId, q: &str) -> Result<Arc<[Product]>, ApiError> {
    app.catalog
        .clone()
        .oneshot(CatalogQuery {
            tenant: tenant.clone(),
            q: search_terms(q),
        })
        .await
        .map_err(|e| ApiError::Unavailable("catalog unavailable", e))
}

/// The query of `GET /products`: `q`, a search by name.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ProductsQuery {
    #[serde(default)]
    q: String,
}

pub(crate) async fn products(
    State(app): State<App>,
    Tenant(t): Tenant,
    query: Result<Query<ProductsQuery>, QueryRejection>,
) -> Result<String, ApiError> {
    let Ok(Query(query)) = query else {
        return Err(ApiError::BadRequest("malformed query"));
    };
    if query.q.len() > 256 {
        return Err(ApiError::BadRequest("a search is at most 256 bytes"));
    }
    let list = search(&app, t.id(), &query.q).await?;
    Ok(list
        .iter()
        .map(|p| format!("{} {}\n", p.sku, p.price))
        .collect())
}

/// What the order routes of one shard share: the storefront and the shard.
#[derive(Clone)]
pub(crate) struct ShardCtx {
    pub(crate) app: App,
    pub(crate) shard: Shard,
}

pub(crate) async fn place(
    State(ctx): State<ShardCtx>,
    Tenant(t): Tenant,
    Extension(Customer(customer)): Extension<Customer>,
    Params((sku, qty)): Params<(String, String)>,
) -> Result<Response, ApiError> {
    let qty = quantity(&qty)?;
    let price = catalog_of(&ctx.app, t.id())
        .await?
        .iter()
        .find(|p| p.sku == sku)
        .map(|p| p.price)
        .ok_or(ApiError::NotFound("no such product"))?;
    let amount = price
        .checked_mul(i64::from(qty))
        .ok_or(ApiError::BadRequest("the order is too large"))?;
    let order = uuid::Uuid::now_v7().simple().to_string();
    // The order saga: order, payment, inventory, shipping; undone newest first when a step
    // refuses. Its id is the order's, so a retried start changes nothing.
    let id = SagaId::new(format!("{}.{order}", t.id()))
        .ok_or(ApiError::BadRequest("malformed order"))?;
    let input = checkout::input(&checkout::Checkout1 {
        tenant: t.id(),
        customer: &customer,
        shard: ctx.shard.index,
        order: &order,
        sku: &sku,
        qty,
        amount,
    });
    let outcome = ctx
        .app
        .checkout
        .run("checkout", id, input)
        .await
        .map_err(|e| ApiError::Unavailable("checkout unavailable", e.into()))?;
    let queued = outcome
        .outputs
        .get("payment")
        .is_some_and(|p| p["queued"] == true);
    let (status, answer) = match (outcome.status, outcome.failed_step.as_deref()) {
        (SagaStatus::Completed, _) if queued => (StatusCode::ACCEPTED, "QUEUED"),
        (SagaStatus::Completed, _) => (StatusCode::CREATED, "PAID"),
        (_, Some("payment")) => (StatusCode::BAD_GATEWAY, "CANCELLED"),
        (_, Some("inventory")) => (StatusCode::CONFLICT, "CANCELLED"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "CANCELLED"),
    };
    let reason = outcome
        .reason
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let mut res = (
        status,
        format!("{answer} order {order} {sku} x{qty}{reason}\n"),
    )
        .into_response();
    // The position the order's last event reached: the consistency layer answers with a token
    // of it, so the client's next read of this order sees this answer.
    let reached = outcome
        .outputs
        .get("complete")
        .and_then(|c| serde_json::from_value::<GlobalPosition>(c["position"].clone()).ok());
    if let Some(position) = reached {
        res.extensions_mut().insert(Mark::Position(position));
    }
    Ok(res)
}

pub(crate) async fn show(
    State(ctx): State<ShardCtx>,
    Tenant(t): Tenant,
    Extension(Customer(customer)): Extension<Customer>,
    Params(order): Params<String>,
) -> Result<String, ApiError> {
    if !order.bytes().all(|b| b.is_ascii_alphanumeric()) || order.len() > 64 {
        return Err(ApiError::BadRequest("malformed order id"));
    }
    // From the read model: after a write, the consistency layer has already waited for it to
    // catch up with the client's token.
    match ctx
        .shard
        .read(t.id().as_str(), &customer, &order)
        .await
        .map_err(|e| ApiError::Unavailable("orders unavailable", e))?
    {
        Some(row) => Ok(format!(
            "{} {} x{} (version {})\n",
            row.status, row.sku, row.qty, row.version
        )),
        None => Err(ApiError::NotFound("no such order")),
    }
}

pub(crate) async fn health(State(app): State<App>) -> String {
    let r = app.breaker.report();
    let queued = app.queue.queued();
    let (refunds, cancelled_shipments) = app.ledger.undone().await.unwrap_or_default();
    format!(
        "breaker {}: {} ({}); catalog loads {}; payment attempts {}; queued payments {queued}; \
         drained {}; refunds {refunds}; cancelled shipments {cancelled_shipments}; order shards {}\n",
        r.name,
        r.state,
        r.health,
        app.catalog_loads.load(Ordering::Relaxed),
        app.provider_attempts.load(Ordering::Relaxed),
        app.queue.drained(),
        app.shards.all.len(),
    )
}
