//! Middleware that buffers request bodies up to a size so that requests can be retried.
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
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_patterns_core::BoxError;
use tower_service::Service;

use crate::ReplayBody;

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

    fn streaming(prefix: VecDeque<Frame<Bytes>>, rest: B) -> Self {
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

impl<B> ReplayBody for ReplayableBody<B> {
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
    type Service = ReplayBodyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReplayBodyService {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// Middleware that buffers request bodies; see [`ReplayBodyLayer`]. Reading the body happens
/// before the inner service is called, so the inner service (polled ready) moves into the
/// response future and a clone stays behind: `S` must be `Clone`.
#[derive(Clone, Debug)]
pub struct ReplayBodyService<S> {
    inner: S,
    max_bytes: usize,
}

impl<S> ReplayBodyService<S> {
    tower_patterns_core::inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for ReplayBodyService<S>
where
    S: Service<Request<ReplayableBody<B>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ReplayFuture<S, B>;

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
        let reading = Reading {
            parts: Some(parts),
            body: Some(body),
            buffer: BytesMut::new(),
            frames: VecDeque::new(),
            trailers: None,
            max_bytes: self.max_bytes,
            give_up: too_large,
        };
        ReplayFuture {
            state: ReplayState::Reading {
                reading,
                service: Some(service),
            },
        }
    }
}

struct Reading<B> {
    parts: Option<http::request::Parts>,
    body: Option<B>,
    buffer: BytesMut,
    frames: VecDeque<Frame<Bytes>>,
    trailers: Option<HeaderMap>,
    max_bytes: usize,
    give_up: bool,
}

impl<B> Reading<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    /// Reads until the body ends (buffered) or passes the limit (streaming).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<ReplayableBody<B>, BoxError>> {
        while !self.give_up {
            let Some(body) = self.body.as_mut() else {
                break;
            };
            match std::task::ready!(Pin::new(body).poll_frame(cx)) {
                None => {
                    return Poll::Ready(Ok(ReplayableBody::buffered(
                        std::mem::take(&mut self.buffer).freeze(),
                        self.trailers.take(),
                    )));
                }
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let chunk = data.copy_to_bytes(data.remaining());
                        self.frames.push_back(Frame::data(chunk.clone()));
                        self.buffer.extend_from_slice(&chunk);
                        if self.buffer.len() > self.max_bytes {
                            self.give_up = true;
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.frames.push_back(Frame::trailers(t.clone()));
                            self.trailers = Some(t);
                        }
                    }
                },
            }
        }
        match self.body.take() {
            Some(rest) => Poll::Ready(Ok(ReplayableBody::streaming(
                std::mem::take(&mut self.frames),
                rest,
            ))),
            None => Poll::Ready(Err("replay body polled after completion".into())),
        }
    }
}

pin_project! {
    /// Response future of [`ReplayBodyService`].
    pub struct ReplayFuture<S, B>
    where
        S: Service<Request<ReplayableBody<B>>>,
    {
        #[pin]
        state: ReplayState<S, B, S::Future>,
    }
}

pin_project! {
    #[project = ReplayStateProj]
    enum ReplayState<S, B, F> {
        Reading {
            reading: Reading<B>,
            service: Option<S>,
        },
        Called {
            #[pin]
            fut: F,
        },
    }
}

impl<S, B> fmt::Debug for ReplayFuture<S, B>
where
    S: Service<Request<ReplayableBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayFuture").finish_non_exhaustive()
    }
}

impl<S, B> Future for ReplayFuture<S, B>
where
    S: Service<Request<ReplayableBody<B>>>,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let fut = match state.as_mut().project() {
                ReplayStateProj::Called { fut } => return fut.poll(cx).map_err(Into::into),
                ReplayStateProj::Reading { reading, service } => {
                    let body = std::task::ready!(reading.poll_body(cx))?;
                    match (service.take(), reading.parts.take()) {
                        (Some(mut service), Some(parts)) => {
                            service.call(Request::from_parts(parts, body))
                        }
                        _ => {
                            return Poll::Ready(
                                Err("replay future polled after completion".into()),
                            );
                        }
                    }
                }
            };
            state.set(ReplayState::Called { fut });
        }
    }
}
