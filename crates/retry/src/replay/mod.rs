//! Middleware that buffers request bodies up to a size so that requests can be retried.
//!
//! [`ReplayBodyLayer`] makes [`ReplayBody`] services; their future is
//! [`future::ResponseFuture`].
//!
//! A body whose length is known to be within `max_bytes` (or that ends within it) is read
//! into memory and becomes a replayable [`ReplayableBody`], which [`HttpRetry`](crate::HttpRetry)
//! can send again. A larger or longer body is passed on as it streams (the part already read
//! first) and is sent once, never retried: holding an unbounded body in memory to retry it
//! would trade a failure for an outage.
//!
//! ```
//! use http::Request;
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_core::BoxError;
//! use tower_patterns_retry::{ReplayBodyLayer, ReplayableBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ReplayBodyLayer::new(64 * 1024))
//!     .service(service_fn(|req: Request<ReplayableBody<Full<bytes::Bytes>>>| async move {
//!         assert!(req.body().is_replayable());
//!         let body = req.into_body().collect().await?.to_bytes();
//!         Ok::<_, BoxError>(body.len())
//!     }));
//! let n = svc.oneshot(Request::new(Full::from("hello"))).await.unwrap();
//! assert_eq!(n, 5);
//! # }
//! ```

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_patterns_core::BoxError;
use tower_service::Service;

use crate::TryCloneBody;

pub mod future;

use future::{Reading, ResponseFuture};

pin_project! {
    /// A request body that is either held in memory (and can be sent again) or streams (the
    /// frames read before the size limit was passed, then the rest of the stream).
    pub struct ReplayableBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Buffered {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        Streaming {
            prefix: VecDeque<Frame<Bytes>>,
            #[pin]
            rest: B,
        },
    }
}

impl<B> ReplayableBody<B> {
    /// A body held in memory.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            inner: Inner::Buffered {
                data: Some(data),
                trailers,
            },
        }
    }

    pub(crate) fn streaming(prefix: VecDeque<Frame<Bytes>>, rest: B) -> Self {
        Self {
            inner: Inner::Streaming { prefix, rest },
        }
    }

    /// Whether this body can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self.inner, Inner::Buffered { .. })
    }
}

impl<B> fmt::Debug for ReplayableBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Buffered { data, .. } => f
                .debug_struct("Buffered")
                .field("bytes", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Inner::Streaming { .. } => f.write_str("Streaming"),
        }
    }
}

impl<B> TryCloneBody for ReplayableBody<B> {
    fn try_clone(&self) -> Option<Self> {
        match &self.inner {
            Inner::Buffered { data, trailers } => Some(Self {
                inner: Inner::Buffered {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
            }),
            Inner::Streaming { .. } => None,
        }
    }
}

impl<B> Body for ReplayableBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            InnerProj::Buffered { data, trailers } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            InnerProj::Streaming { prefix, rest } => {
                if let Some(frame) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                rest.poll_frame(cx).map(|frame| {
                    frame.map(|f| {
                        f.map(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                            .map_err(Into::into)
                    })
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Buffered { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Inner::Streaming { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Streaming { prefix, rest } => {
                let read: u64 = prefix
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let mut hint = rest.size_hint();
                hint.set_lower(hint.lower() + read);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + read);
                }
                hint
            }
        }
    }
}

/// Layer that buffers request bodies up to `max_bytes`; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct ReplayBodyLayer {
    max_bytes: usize,
}

impl ReplayBodyLayer {
    /// Buffers bodies of at most `max_bytes`.
    pub const fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl<S> Layer<S> for ReplayBodyLayer {
    type Service = ReplayBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReplayBody {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// Middleware that buffers request bodies; see [`ReplayBodyLayer`]. Reading the body happens
/// before the inner service is called, so the inner service (polled ready) moves into the
/// response future and a clone stays behind: `S` must be `Clone`.
#[derive(Clone, Debug)]
pub struct ReplayBody<S> {
    inner: S,
    max_bytes: usize,
}

impl<S> ReplayBody<S> {
    tower_patterns_core::inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for ReplayBody<S>
where
    S: Service<Request<ReplayableBody<B>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let too_large = body
            .size_hint()
            .lower()
            .try_into()
            .map_or(true, |len: usize| len > self.max_bytes);
        let reading = Reading::new(parts, body, self.max_bytes, too_large);
        ResponseFuture::new(reading, service)
    }
}
