//! The response future of [`ReplayBody`](super::ReplayBody): reads the body, then calls.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower_patterns_core::BoxError;
use tower_service::Service;

use super::ReplayableBody;

pub(crate) struct Reading<B> {
    parts: Option<http::request::Parts>,
    body: Option<B>,
    buffer: BytesMut,
    frames: VecDeque<Frame<Bytes>>,
    trailers: Option<HeaderMap>,
    max_bytes: usize,
    give_up: bool,
}

impl<B> Reading<B> {
    pub(crate) fn new(
        parts: http::request::Parts,
        body: B,
        max_bytes: usize,
        give_up: bool,
    ) -> Self {
        Self {
            parts: Some(parts),
            body: Some(body),
            buffer: BytesMut::new(),
            frames: VecDeque::new(),
            trailers: None,
            max_bytes,
            give_up,
        }
    }
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
    /// Response future of [`ReplayBody`](super::ReplayBody).
    pub struct ResponseFuture<S, B>
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

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayableBody<B>>>,
{
    pub(crate) fn new(reading: Reading<B>, service: S) -> Self {
        Self {
            state: ReplayState::Reading {
                reading,
                service: Some(service),
            },
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayableBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> Future for ResponseFuture<S, B>
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
