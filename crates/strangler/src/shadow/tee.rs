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
        seen: u64,
        expected: Option<u64>,
    }
}

impl<B> std::fmt::Debug for Tee<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee")
            .field("copied", &self.copy.len())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Tee<B> {
    pub(crate) fn new(
        body: B,
        status: StatusCode,
        headers: HeaderMap,
        max: usize,
        done: oneshot::Sender<Captured>,
    ) -> Self {
        let expected = body.size_hint().exact();
        Self {
            expected,
            seen: 0,
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
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        let finished = match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    *this.seen += data.len() as u64;
                    if !*this.over {
                        if this.copy.len() + data.len() > *this.max {
                            *this.over = true;
                            *this.copy = BytesMut::new();
                        } else {
                            this.copy.extend_from_slice(data);
                        }
                    }
                }
                // A server may stop polling once the announced length is sent, so the end is
                // also the last byte of a body whose length is known.
                this.body.is_end_stream() || this.expected.is_some_and(|n| *this.seen >= n)
            }
            Some(Err(_)) => {
                // A broken legacy body: nothing to compare.
                this.done.take();
                false
            }
            None => true,
        };
        if finished
            && let (Some(done), Some((status, headers))) = (this.done.take(), this.head.take())
        {
            let body = (!*this.over).then(|| std::mem::take(this.copy).freeze());
            let _ = done.send(Captured {
                status,
                headers,
                body,
            });
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

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn tee<B: Body>(body: B, max: usize) -> (Tee<B>, oneshot::Receiver<Captured>) {
        let (tx, rx) = oneshot::channel();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/plain".parse().unwrap());
        (Tee::new(body, StatusCode::OK, headers, max, tx), rx)
    }

    #[tokio::test]
    async fn a_body_of_known_length_is_handed_over_at_its_last_byte() {
        // A server stops polling once the announced length is written: the copy must not wait
        // for the end of the stream.
        let (mut t, mut rx) = tee(Full::new(Bytes::from_static(b"hello")), 100);
        let frame = std::pin::pin!(&mut t).frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        let captured = rx.try_recv().expect("handed over without polling the end");
        assert_eq!(captured.body.unwrap(), "hello");
        assert_eq!(captured.status, StatusCode::OK);
        assert_eq!(captured.headers["content-type"], "text/plain");
        assert!(t.is_end_stream());
    }

    /// A body that announces its length but reports its end only once polled past it (as a
    /// body read from a connection may).
    struct Announced(Vec<&'static str>);

    impl Body for Announced {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(if self.0.is_empty() {
                None
            } else {
                Some(Ok(Frame::data(Bytes::from(self.0.remove(0)))))
            })
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0.iter().map(|c| c.len() as u64).sum())
        }
    }

    #[tokio::test]
    async fn a_body_is_handed_over_at_its_announced_length_and_at_its_limit() {
        let (t, mut rx) = tee(Announced(vec!["ab", "cd"]), 4);
        assert!(!t.is_end_stream());
        assert_eq!(t.size_hint().exact(), Some(4));
        let mut t = std::pin::pin!(t);
        t.as_mut().frame().await.unwrap().unwrap();
        assert!(rx.try_recv().is_err(), "not before the last announced byte");
        t.as_mut().frame().await.unwrap().unwrap();
        let captured = rx.try_recv().expect("at the last announced byte");
        assert_eq!(captured.body.unwrap(), "abcd", "exactly the limit is kept");

        // One byte, then three: four is over a limit of three.
        let (t, mut rx) = tee(Announced(vec!["a", "bcd"]), 3);
        assert_eq!(t.collect().await.unwrap().to_bytes(), "abcd");
        assert!(rx.try_recv().unwrap().body.is_none());

        // An empty body is not at its end until the copy is handed over, so it is polled.
        let (t, mut rx) = tee(Full::new(Bytes::new()), 3);
        assert!(!t.is_end_stream());
        assert_eq!(t.collect().await.unwrap().to_bytes(), "");
        assert_eq!(rx.try_recv().unwrap().body.unwrap(), "");
    }

    #[tokio::test]
    async fn a_stream_is_handed_over_at_its_end_and_a_long_one_without_its_body() {
        let chunks = |parts: Vec<&'static str>| {
            StreamBody::new(futures_util::stream::iter(parts.into_iter().map(|p| {
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(p)))
            })))
        };
        let (t, mut rx) = tee(chunks(vec!["ab", "cd"]), 100);
        assert_eq!(t.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(rx.try_recv().unwrap().body.unwrap(), "abcd");

        let (t, mut rx) = tee(chunks(vec!["ab", "cd", "ef"]), 3);
        assert_eq!(
            t.collect().await.unwrap().to_bytes(),
            "abcdef",
            "streams on whole"
        );
        assert!(rx.try_recv().unwrap().body.is_none(), "too long to compare");

        // Dropped before its end: nothing handed over.
        let (mut t, mut rx) = tee(chunks(vec!["ab", "cd"]), 100);
        let _ = std::pin::pin!(&mut t).frame().await;
        drop(t);
        assert!(rx.try_recv().is_err());
    }
}
