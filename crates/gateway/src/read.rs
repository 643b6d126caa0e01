//! Reading a request's body whole, within the size cap and the read timeout: a layer of each
//! route, after authentication and the limit, so a client without a credential (or over its
//! limit) never gets the gateway to hold its body.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_patterns_core::{BoxError, error::find_in_chain};
use tower_service::Service;

use crate::{
    GatewayBody,
    error::{GatewayError, Kind},
};

/// Reads bodies of at most `max` bytes, each within `timeout`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadBodyLayer {
    pub(crate) max: u64,
    pub(crate) timeout: Duration,
}

impl<S> Layer<S> for ReadBodyLayer {
    type Service = ReadBody<S>;

    fn layer(&self, inner: S) -> ReadBody<S> {
        ReadBody {
            inner,
            limits: *self,
        }
    }
}

/// The service of [`ReadBodyLayer`].
#[derive(Clone, Debug)]
pub(crate) struct ReadBody<S> {
    inner: S,
    limits: ReadBodyLayer,
}

/// Reads `body` whole: 413 past the cap (announced or streamed), 408 past the timeout, 400
/// when the client's stream breaks.
pub(crate) async fn read_whole<B>(
    body: B,
    max: u64,
    timeout: Duration,
) -> Result<Bytes, GatewayError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    if body.size_hint().lower() > max {
        return Err(GatewayError::new(
            Kind::BodyTooLarge,
            "content-length over the cap",
        ));
    }
    let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if find_in_chain::<LengthLimitError>(&*e).is_some() => {
            Err(GatewayError::new(Kind::BodyTooLarge, "body over the cap"))
        }
        Ok(Err(_)) => Err(GatewayError::new(Kind::BadBody, "body unreadable")),
        Err(_) => Err(GatewayError::new(
            Kind::BodyTimeout,
            "body not sent in time",
        )),
    }
}

impl<S> Service<Request<GatewayBody>> for ReadBody<S>
where
    S: Service<Request<Full<Bytes>>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Ready at once: the inner service is made ready once the body is in (it is called
        // from the future, on a clone).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<GatewayBody>) -> Self::Future {
        let inner = self.inner.clone();
        let limits = self.limits;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = read_whole(body, limits.max, limits.timeout).await?;
            inner
                .oneshot(Request::from_parts(parts, Full::new(bytes)))
                .await
        })
    }
}
