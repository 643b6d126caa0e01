//! Aggregation: one route that calls several upstreams at once and merges their JSON answers
//! into one document, `{"<part>": <its JSON>, ..., "partial": false}`. A part that fails (an
//! error, a non-2xx status, a body that is not JSON, no answer in time) is `null`, the
//! document says `"partial": true` and names why under `"errors"`; only when every part fails
//! is the answer a 502.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Map, Value};
use tower::ServiceExt;
use tower_patterns_core::BoxError;
use tower_service::Service;

use crate::{
    GatewayBody,
    error::{GatewayError, Kind},
    route::RouteParams,
    transform::fill,
    upstream::GroupService,
};

/// The largest part body read (a larger one counts as failed).
const MAX_PART_BODY: usize = 4 << 20;

/// One part: its name in the document, its group and its path template.
#[derive(Clone)]
pub(crate) struct Part {
    pub(crate) name: String,
    pub(crate) service: GroupService,
    pub(crate) path: String,
}

/// The service of an aggregating route.
#[derive(Clone)]
pub(crate) struct Aggregate {
    parts: Arc<[Part]>,
    timeout: Duration,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.parts.iter().map(|p| p.name.as_str()).collect();
        f.debug_struct("Aggregate")
            .field("parts", &names)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Aggregate {
    pub(crate) fn new(parts: Vec<Part>, timeout: Duration) -> Self {
        Self {
            parts: parts.into(),
            timeout,
        }
    }
}

async fn call_part(
    part: Part,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Value, &'static str> {
    let res = match tokio::time::timeout(timeout, part.service.oneshot(req)).await {
        Err(_) => return Err("timeout"),
        Ok(Err(_)) => return Err("unavailable"),
        Ok(Ok(res)) => res,
    };
    if !res.status().is_success() {
        return Err(if res.status().is_server_error() {
            "upstream error"
        } else {
            "refused"
        });
    }
    let body = match tokio::time::timeout(
        timeout,
        Limited::new(res.into_body(), MAX_PART_BODY).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => return Err("unreadable"),
        Err(_) => return Err("timeout"),
    };
    serde_json::from_slice(&body).map_err(|_| "not json")
}

impl Service<Request<Full<Bytes>>> for Aggregate {
    type Response = Response<GatewayBody>;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let params = req
            .extensions()
            .get::<RouteParams>()
            .cloned()
            .unwrap_or_default();
        let mut headers = req.headers().clone();
        for h in [
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::TRANSFER_ENCODING,
        ] {
            headers.remove(h);
        }
        let calls: Vec<_> = self
            .parts
            .iter()
            .map(|part| {
                let mut sub = Request::new(Full::new(Bytes::new()));
                let path = fill(&part.path, &params);
                *sub.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
                *sub.headers_mut() = headers.clone();
                *sub.extensions_mut() = req.extensions().clone();
                call_part(part.clone(), sub, self.timeout)
            })
            .collect();
        let parts = self.parts.clone();
        Box::pin(async move {
            let results = join_all(calls).await;
            let mut doc = Map::new();
            let mut errors = Map::new();
            for (part, result) in parts.iter().zip(results) {
                match result {
                    Ok(v) => {
                        doc.insert(part.name.clone(), v);
                    }
                    Err(why) => {
                        doc.insert(part.name.clone(), Value::Null);
                        errors.insert(part.name.clone(), Value::from(why));
                    }
                }
            }
            if errors.len() == parts.len() {
                return Err(GatewayError::new(
                    Kind::AllPartsFailed,
                    "every part of the aggregate failed",
                )
                .into());
            }
            doc.insert("partial".to_owned(), Value::Bool(!errors.is_empty()));
            if !errors.is_empty() {
                doc.insert("errors".to_owned(), Value::Object(errors));
            }
            let body = serde_json::to_vec(&Value::Object(doc))?;
            let mut res = Response::new(GatewayBody::from(Bytes::from(body)));
            *res.status_mut() = StatusCode::OK;
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(res)
        })
    }
}
