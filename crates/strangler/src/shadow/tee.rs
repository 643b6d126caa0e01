//! Copies the legacy answer's body for the comparison as it streams to the client.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tower_patterns_core::BoxError;

/// The legacy answer, once its body has streamed to the end.
#[derive(Debug)]
pub(crate) struct Captured {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    /// The body, or `None` when it was longer than the comparison's limit.
    pub(crate) body: Option<Bytes>,
}

pin_project! {
    /// A body that streams on while keeping a copy (up to a limit) for the shadow comparison,
    /// which it hands over when the body ends. Dropped before the end, it hands over nothing
    /// and the comparison is abandoned.
    pub struct Tee<B> {
        #[pin]
        body: B,
        copy: BytesMut,
        max: usize,
        over: bool,
        head: Option<(StatusCode, HeaderMap)>,
        done: Option<oneshot::Sender<Captured>>,
    }
}

impl<B> std::fmt::Debug for Tee<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee")
            .field("copied", &self.copy.len())
            .finish_non_exhaustive()
    }
}

impl<B> Tee<B> {
    pub(crate) fn new(
        body: B,
        status: StatusCode,
        headers: HeaderMap,
        max: usize,
        done: oneshot::Sender<Captured>,
    ) -> Self {
        Self {
            body,
            copy: BytesMut::new(),
            max,
            over: false,
            head: Some((status, headers)),
            done: Some(done),
        }
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref()
                    && !*this.over
                {
                    if this.copy.len() + data.len() > *this.max {
                        *this.over = true;
                        *this.copy = BytesMut::new();
                    } else {
                        this.copy.extend_from_slice(data);
                    }
                }
            }
            Some(Err(_)) => {
                // A broken legacy body: nothing to compare.
                this.done.take();
            }
            None => {
                if let (Some(done), Some((status, headers))) = (this.done.take(), this.head.take())
                {
                    let body = (!*this.over).then(|| std::mem::take(this.copy).freeze());
                    let _ = done.send(Captured {
                        status,
                        headers,
                        body,
                    });
                }
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        // Reported false until the end has been polled, so the copy is always handed over.
        self.done.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
