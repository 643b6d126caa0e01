//! The answer's body: either side's, or a fixed one.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_patterns_core::BoxError;

pin_project! {
    /// The body of a [`Strangler`](crate::Strangler)'s answer: the legacy side's or the new
    /// side's, as it streams.
    #[derive(Debug)]
    pub struct StranglerBody<LB, NB> {
        #[pin]
        inner: Inner<LB, NB>,
    }
}

impl<LB, NB> StranglerBody<LB, NB> {
    pub(crate) fn legacy(body: LB) -> Self {
        Self {
            inner: Inner::Legacy { body },
        }
    }

    pub(crate) fn new(body: NB) -> Self {
        Self {
            inner: Inner::New { body },
        }
    }

    pub(crate) fn teed(body: crate::shadow::Tee<LB>) -> Self {
        Self {
            inner: Inner::Teed {
                body: Box::pin(body),
            },
        }
    }
}

pin_project! {
    #[project = BodyProj]
    #[derive(Debug)]
    enum Inner<LB, NB> {
        Legacy {
            #[pin]
            body: LB,
        },
        New {
            #[pin]
            body: NB,
        },
        Teed {
            body: Pin<Box<crate::shadow::Tee<LB>>>,
        },
    }
}

impl<LB, NB> Body for StranglerBody<LB, NB>
where
    LB: Body<Data = Bytes>,
    LB::Error: Into<BoxError>,
    NB: Body<Data = Bytes>,
    NB::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            BodyProj::Legacy { body } => body.poll_frame(cx).map_err(Into::into),
            BodyProj::New { body } => body.poll_frame(cx).map_err(Into::into),
            BodyProj::Teed { body } => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Legacy { body } => body.is_end_stream(),
            Inner::New { body } => body.is_end_stream(),
            Inner::Teed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Legacy { body } => body.size_hint(),
            Inner::New { body } => body.size_hint(),
            Inner::Teed { body } => body.size_hint(),
        }
    }
}
