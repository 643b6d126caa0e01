//! Tests of the outcome classifiers.
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};

use std::convert::Infallible;

use super::*;

type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;

fn stream(frames: Frames) -> StreamBody<futures_iter::Iter<Frames>> {
    StreamBody::new(futures_iter::Iter::new(frames))
}

/// A minimal stream over a vector, to avoid a dependency on `futures` in core.
mod futures_iter {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    pub(super) struct Iter<V: IntoIterator>(V::IntoIter);
    impl<V: IntoIterator> Iter<V> {
        pub(super) fn new(v: V) -> Self {
            Self(v.into_iter())
        }
    }
    impl<V: IntoIterator> Unpin for Iter<V> {}
    impl<V: IntoIterator> futures_core::Stream for Iter<V> {
        type Item = V::Item;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<V::Item>> {
            Poll::Ready(self.0.next())
        }
    }
}

fn recorder() -> (Arc<Mutex<Vec<Outcome>>>, impl FnOnce(Outcome) + use<>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |o| sink.lock().unwrap().push(o))
}

fn grpc_eos() -> TowerHttpEos<tower_http::classify::GrpcEosErrorsAsFailures> {
    let res: Result<Response<()>, Infallible> = Ok(Response::new(()));
    match TowerHttp::grpc().classify(&res) {
        Classified::RequiresEos(eos) => eos,
        Classified::Ready(o) => panic!("expected RequiresEos, got {o:?}"),
    }
}

fn trailers(status: &'static str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from_static(status));
    t
}

#[tokio::test]
async fn grpc_status_in_trailers_is_reported_once_at_the_end() {
    for (status, expected) in [("0", Outcome::Success), ("14", Outcome::Failure)] {
        let (seen, cb) = recorder();
        let body = EosBody::new(
            stream(vec![
                Ok(Frame::data(Bytes::from_static(b"msg"))),
                Ok(Frame::trailers(trailers(status))),
            ]),
            grpc_eos(),
            cb,
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], status);
        assert_eq!(*seen.lock().unwrap(), vec![expected]);
    }
}

#[tokio::test]
async fn body_error_is_a_failure_and_early_drop_is_ignored() {
    let (seen, cb) = recorder();
    let body = EosBody::new(
        stream(vec![Err(std::io::Error::other("reset"))]),
        grpc_eos(),
        cb,
    );
    assert!(body.collect().await.is_err());
    assert_eq!(*seen.lock().unwrap(), vec![Outcome::Failure]);

    let (seen, cb) = recorder();
    let mut body = EosBody::new(
        stream(vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ]),
        grpc_eos(),
        cb,
    );
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "a");
    assert!(seen.lock().unwrap().is_empty(), "not reported mid-stream");
    drop(body);
    assert_eq!(*seen.lock().unwrap(), vec![Outcome::Ignored]);
}

#[tokio::test]
async fn end_without_trailers_and_bodies_known_to_be_complete() {
    let (seen, cb) = recorder();
    let body = EosBody::new(stream(vec![]), grpc_eos(), cb);
    body.collect().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Outcome::Success]);

    // hyper never polls a body that says it is at its end: dropping it is a normal end.
    let (seen, cb) = recorder();
    drop(EosBody::new(
        http_body_util::Empty::<Bytes>::new(),
        grpc_eos(),
        cb,
    ));
    assert_eq!(*seen.lock().unwrap(), vec![Outcome::Success]);

    let done = EosBody::<_, NoEos, fn(Outcome)>::done(http_body_util::Empty::<Bytes>::new());
    assert!(!done.is_pending());
}

#[tokio::test]
async fn finish_defers_grpc_to_the_end_of_the_body() {
    let (seen, cb) = recorder();
    let res: Result<Response<_>, Infallible> = Ok(Response::new(stream(vec![Ok(
        Frame::trailers(trailers("13")),
    )])));
    let res = TowerHttp::grpc().finish(res, cb).unwrap();
    assert!(
        seen.lock().unwrap().is_empty(),
        "not judged before the body ends"
    );
    res.into_body().collect().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Outcome::Failure]);

    let (seen, cb) = recorder();
    let ready: Result<Response<http_body_util::Empty<Bytes>>, Infallible> = Ok(Response::builder()
        .status(503)
        .body(Default::default())
        .unwrap());
    let res = TowerHttp::server_errors().finish(ready, cb).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Outcome::Failure]);
    assert!(!res.body().is_pending());
}

#[test]
fn tower_http_server_errors() {
    let c = TowerHttp::server_errors().ignore_status(|s| s.is_client_error());
    let status = |code: u16| -> Result<Response<()>, Infallible> {
        Ok(Response::builder().status(code).body(()).unwrap())
    };
    assert_eq!(c.classify(&status(200)).ready(), Some(Outcome::Success));
    assert_eq!(c.classify(&status(503)).ready(), Some(Outcome::Failure));
    assert_eq!(c.classify(&status(429)).ready(), Some(Outcome::Ignored));
    let err: Result<Response<()>, &str> = Err("connect refused");
    assert_eq!(c.classify(&err).ready(), Some(Outcome::Failure));
}

#[test]
fn grpc_status_in_headers_is_ready() {
    let res: Result<Response<()>, Infallible> = Ok(Response::builder()
        .header("grpc-status", "5")
        .body(())
        .unwrap());
    assert_eq!(
        TowerHttp::grpc().classify(&res).ready(),
        Some(Outcome::Failure)
    );
}

#[test]
fn errors_as_failures() {
    let ok: Result<(), ()> = Ok(());
    assert_eq!(
        ErrorsAsFailures.classify(&ok).ready(),
        Some(Outcome::Success)
    );
    assert_eq!(
        ErrorsAsFailures.classify(&Err::<(), ()>(())).ready(),
        Some(Outcome::Failure)
    );
}
