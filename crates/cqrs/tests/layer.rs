//! The CQRS layer: each side's readiness is its own, commands answer with their position,
//! HTTP requests are classified by method and route and errors map to their statuses.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use http::{Method, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, limit::ConcurrencyLimit, service_fn};
use tower_patterns_core::{BoxError, http::ErrorResponseLayer, observe::StateHandle};
use tower_patterns_cqrs::layer::{
    BadCommand, CommandAdapter, CqrsLayer, HttpClassifier, HttpCommands, MapCommand,
    POSITION_HEADER, PositionToken, Side,
};
use tower_patterns_eventstore::{
    Aggregate, Command, CommandService, Committed, DomainEvent, GlobalPosition, InMemoryStore,
    Repository, RepositoryError,
};
use tower_test::mock;

#[derive(Debug)]
enum Req {
    Cmd(Command<u64>),
    Query(u32),
}

#[derive(Debug, PartialEq)]
enum Reply {
    Committed(Committed),
    Read(u32),
}

fn classify(req: &Req) -> Side {
    match req {
        Req::Cmd(_) => Side::Command,
        Req::Query(_) => Side::Query,
    }
}

fn to_command(req: Req) -> Result<Command<u64>, BoxError> {
    match req {
        Req::Cmd(c) => Ok(c),
        Req::Query(_) => Err("not a command".into()),
    }
}

fn committed(index: u64) -> Committed {
    Committed {
        version: 1,
        positions: vec![GlobalPosition::new(0, index)],
        retries: 0,
    }
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

type Mocks = (
    mock::Mock<Req, Reply>,
    mock::Handle<Req, Reply>,
    mock::Mock<Command<u64>, Committed>,
    mock::Handle<Command<u64>, Committed>,
);

fn mocks() -> Mocks {
    let (q, qh) = mock::pair::<Req, Reply>();
    let (c, ch) = mock::pair::<Command<u64>, Committed>();
    (q, qh, c, ch)
}

#[tokio::test]
async fn a_saturated_write_side_holds_back_no_query() {
    let (q, mut qh, c, mut ch) = mocks();
    ch.allow(0);
    let layer = CqrsLayer::builder("readiness")
        .commands(c)
        .classify(classify)
        .adapter(MapCommand::new(to_command, Reply::Committed))
        .build()
        .unwrap();
    let mut svc = layer.layer(q);
    assert!(poll_once(&mut svc.ready()).is_ready(), "always ready");

    let mut cmd = Box::pin(svc.call(Req::Cmd(Command::new("a", 1))));
    assert!(
        poll_once(&mut cmd).is_pending(),
        "the write side is not ready"
    );

    let query = tokio::spawn(svc.call(Req::Query(7)));
    let (req, send) = qh.next_request().await.unwrap();
    assert!(matches!(req, Req::Query(7)));
    send.send_response(Reply::Read(7));
    assert_eq!(query.await.unwrap().unwrap(), Reply::Read(7));
    assert!(
        poll_once(&mut cmd).is_pending(),
        "still waiting for its own side"
    );

    ch.allow(1);
    let cmd = tokio::spawn(cmd);
    let (req, send) = ch.next_request().await.unwrap();
    assert_eq!((req.id.as_str(), req.command), ("a", 1));
    send.send_response(committed(5));
    assert_eq!(cmd.await.unwrap().unwrap(), Reply::Committed(committed(5)));
    let handle = layer.handle();
    assert_eq!(
        (handle.commands(), handle.queries(), handle.command_errors()),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn a_saturated_read_side_holds_back_no_command() {
    let (q, mut qh, c, mut ch) = mocks();
    qh.allow(0);
    let layer = CqrsLayer::builder("readiness")
        .commands(c)
        .classify(classify)
        .adapter(MapCommand::new(to_command, Reply::Committed))
        .build()
        .unwrap();
    let mut svc = layer.layer(q);
    let mut query = Box::pin(svc.call(Req::Query(1)));
    assert!(poll_once(&mut query).is_pending());

    let cmd = tokio::spawn(svc.call(Req::Cmd(Command::new("b", 2))));
    let (_, send) = ch.next_request().await.unwrap();
    send.send_response(committed(9));
    assert_eq!(cmd.await.unwrap().unwrap(), Reply::Committed(committed(9)));

    qh.allow(1);
    let query = tokio::spawn(query);
    let (_, send) = qh.next_request().await.unwrap();
    send.send_response(Reply::Read(1));
    assert_eq!(query.await.unwrap().unwrap(), Reply::Read(1));
}

#[tokio::test]
async fn a_concurrency_limit_bounds_only_its_own_side() {
    let (q, mut qh, c, mut ch) = mocks();
    let layer = CqrsLayer::builder("limits")
        .commands(ConcurrencyLimit::new(c, 1))
        .classify(classify)
        .adapter(MapCommand::new(to_command, Reply::Committed))
        .build()
        .unwrap();
    let mut svc = layer.layer(q);
    let first = tokio::spawn(svc.call(Req::Cmd(Command::new("a", 1))));
    let (_, first_send) = ch.next_request().await.unwrap(); // holds the only permit
    let mut second = Box::pin(svc.call(Req::Cmd(Command::new("a", 2))));
    assert!(
        poll_once(&mut second).is_pending(),
        "the second command waits for the permit"
    );

    let query = tokio::spawn(svc.call(Req::Query(3)));
    let (_, send) = qh.next_request().await.unwrap();
    send.send_response(Reply::Read(3));
    assert_eq!(query.await.unwrap().unwrap(), Reply::Read(3));

    first_send.send_response(committed(1));
    first.await.unwrap().unwrap();
    let second = tokio::spawn(second);
    let (req, send) = ch.next_request().await.unwrap();
    assert_eq!(req.command, 2);
    send.send_response(committed(2));
    assert_eq!(
        second.await.unwrap().unwrap(),
        Reply::Committed(committed(2))
    );
}

#[tokio::test]
async fn errors_of_either_side_reach_the_caller_and_failed_commands_are_counted() {
    let (q, mut qh, c, mut ch) = mocks();
    let layer = CqrsLayer::builder("errors")
        .commands(c)
        .classify(classify)
        .adapter(MapCommand::new(to_command, Reply::Committed))
        .build()
        .unwrap();
    let svc = layer.layer(q);
    let cmd = tokio::spawn(svc.clone().oneshot(Req::Cmd(Command::new("a", 1))));
    let (_, send) = ch.next_request().await.unwrap();
    send.send_error("write side down");
    assert_eq!(
        cmd.await.unwrap().unwrap_err().to_string(),
        "write side down"
    );
    let query = tokio::spawn(svc.clone().oneshot(Req::Query(1)));
    let (_, send) = qh.next_request().await.unwrap();
    send.send_error("read side down");
    assert_eq!(
        query.await.unwrap().unwrap_err().to_string(),
        "read side down"
    );
    assert_eq!(layer.handle().command_errors(), 1);
    let report = layer.handle().report();
    assert_eq!(report.value("commands"), Some(1.0));
    assert_eq!(report.value("queries"), Some(1.0));
    assert_eq!(report.value("command_errors"), Some(1.0));
    assert_eq!(layer.handle().name(), "errors");
    assert_eq!(layer.handle().pattern(), "cqrs");
}

// --- HTTP -------------------------------------------------------------------------------

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Product {
    price: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum ProductEvent {
    PriceUpdated(u64),
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> &'static str {
        "PriceUpdated"
    }
}

#[derive(Debug)]
struct FreeNotAllowed;

impl std::fmt::Display for FreeNotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a price of zero")
    }
}

impl std::error::Error for FreeNotAllowed {}

impl Aggregate for Product {
    type Command = u64;
    type Event = ProductEvent;
    type Error = FreeNotAllowed;

    fn handle(&self, price: &u64) -> Result<Vec<ProductEvent>, FreeNotAllowed> {
        if *price == 0 {
            return Err(FreeNotAllowed);
        }
        Ok(vec![ProductEvent::PriceUpdated(*price)])
    }

    fn apply(&mut self, ProductEvent::PriceUpdated(p): &ProductEvent) {
        self.price = *p;
    }
}

#[allow(clippy::needless_pass_by_value)] // the adapter hands the body over
fn price_command(
    parts: &http::request::Parts,
    body: bytes::Bytes,
) -> Result<Command<u64>, BadCommand> {
    let id = parts
        .uri
        .path()
        .split('/')
        .nth(2)
        .ok_or(BadCommand::new("no product id"))?;
    let cents = std::str::from_utf8(&body)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or(BadCommand::new("price must be a whole number of cents"))?;
    Ok(Command::new(id, cents))
}

fn reads()
-> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future = impl Send>
+ Clone
+ Send {
    service_fn(|req: Request<String>| async move {
        Ok::<_, Infallible>(Response::new(format!("read {}", req.uri().path())))
    })
}

async fn send(
    svc: &(impl Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone),
    method: Method,
    path: &str,
    body: &str,
) -> Response<String> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(body.to_owned())
        .unwrap();
    svc.clone().oneshot(req).await.unwrap()
}

#[tokio::test]
async fn http_commands_answer_with_their_position_and_errors_map_to_statuses() {
    let store = Arc::new(InMemoryStore::new());
    let commands = CommandService::new(Repository::<Product, _>::new(store, "product-"));
    let layer = CqrsLayer::builder("http")
        .commands(commands)
        .classify(HttpClassifier::new().query(Method::POST, "/products/search"))
        .adapter(HttpCommands::new(price_command).body_limit(16))
        .build()
        .unwrap();
    let svc = ErrorResponseLayer::new().layer(layer.layer(reads()));

    let res = send(&svc, Method::POST, "/products/7/price", "1999").await;
    assert_eq!(res.status(), StatusCode::OK);
    let token = PositionToken::from_header_value(&res.headers()[POSITION_HEADER]).unwrap();
    let c = res.extensions().get::<Committed>().unwrap().clone();
    assert_eq!(Some(&token.position()), c.positions.last());
    assert_eq!(
        res.body(),
        &format!(r#"{{"version":1,"position":"{token}"}}"#)
    );
    let res = send(&svc, Method::PUT, "/products/7/price", "2999").await;
    let later = PositionToken::from_header_value(&res.headers()[POSITION_HEADER]).unwrap();
    assert!(later > token, "a later command reached a later position");

    let res = send(&svc, Method::GET, "/products/7", "").await;
    assert_eq!(res.body(), "read /products/7");
    let res = send(&svc, Method::POST, "/products/search", "cheap").await;
    assert_eq!(
        res.body(),
        "read /products/search",
        "an explicit query route"
    );

    let res = send(&svc, Method::POST, "/products/7/price", "cheap").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.body(), "price must be a whole number of cents");
    let res = send(
        &svc,
        Method::POST,
        "/products/7/price",
        "12345678901234567890",
    )
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let res = send(&svc, Method::POST, "/products/7/price", "0").await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(res.body(), "command refused");

    let handle = layer.handle();
    assert_eq!(
        (handle.commands(), handle.queries(), handle.command_errors()),
        (5, 2, 3)
    );
}

/// The default body limit is 64 KiB: a body under it is read whole (a command whose body the
/// closure refuses by its own phrase, not 413), one over it is 413; a body that fails for
/// another reason is that error, not a 413.
#[tokio::test]
async fn the_default_body_limit_is_64_kib_and_only_an_overflow_is_413() {
    let store = Arc::new(InMemoryStore::new());
    let commands = CommandService::new(Repository::<Product, _>::new(store, "product-"));
    let layer = CqrsLayer::builder("limits")
        .commands(commands)
        .classify(HttpClassifier::new())
        .adapter(HttpCommands::new(price_command))
        .build()
        .unwrap();
    let svc = ErrorResponseLayer::new().layer(layer.layer(reads()));
    let res = send(&svc, Method::POST, "/products/7/price", &"1".repeat(2_000)).await;
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "read whole, then refused"
    );
    assert_eq!(res.body(), "price must be a whole number of cents");
    let res = send(
        &svc,
        Method::POST,
        "/products/7/price",
        &"1".repeat(64 * 1024 + 1),
    )
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // A body whose stream fails is not "too large".
    let adapter = HttpCommands::new(price_command);
    let failing = http_body_util::StreamBody::new(futures_util::stream::iter([Err::<
        http_body::Frame<bytes::Bytes>,
        std::io::Error,
    >(
        std::io::Error::other("connection reset"),
    )]));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/products/7/price")
        .body(failing)
        .unwrap();
    let err = CommandAdapter::<_, Response<String>>::command(&adapter, req)
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<BadCommand>().is_none(), "{err}");
    assert_eq!(err.to_string(), "connection reset");
}

#[test]
fn a_bad_command_keeps_its_phrase_and_status() {
    let e = BadCommand::new("no product id");
    assert_eq!(
        (e.status(), e.phrase()),
        (StatusCode::BAD_REQUEST, "no product id")
    );
    assert_eq!(e.to_string(), "bad command: no product id");
    let e = BadCommand::with_status(StatusCode::CONFLICT, "taken");
    assert_eq!((e.status(), e.phrase()), (StatusCode::CONFLICT, "taken"));
}

#[tokio::test]
async fn a_conflict_of_the_write_side_is_409() {
    // The repository registers its error type; a write side that lost every attempt answers
    // 409 through core's mapping.
    let _ = Repository::<Product, _>::new(Arc::new(InMemoryStore::new()), "p-");
    let conflicts = service_fn(|_: Command<u64>| async {
        Err::<Committed, _>(RepositoryError::<FreeNotAllowed>::Conflict {
            stream: "p-1".into(),
            attempts: 3,
        })
    });
    let layer = CqrsLayer::builder("conflict")
        .commands(conflicts)
        .classify(HttpClassifier::new())
        .adapter(HttpCommands::new(price_command))
        .build()
        .unwrap();
    let svc = ErrorResponseLayer::new().layer(layer.layer(reads()));
    let res = send(&svc, Method::POST, "/products/1/price", "5").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(res.body(), "concurrent update");
    let res = send(&svc, Method::DELETE, "/products", "").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "no product id");
    assert_eq!(res.body(), "no product id");
}

#[test]
fn counters_are_registered_at_build_and_published_by_reports() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let layer = CqrsLayer::builder("metered")
            .commands(service_fn(|_: Req| async {
                Ok::<_, Infallible>(committed(1))
            }))
            .classify(classify)
            .build()
            .unwrap();
        let find = |what: &str| {
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .find(|(k, ..)| {
                    k.key().name() == what && k.key().labels().any(|l| l.value() == "metered")
                })
                .map(|(.., v)| v)
        };
        for name in [
            "tower_patterns_cqrs_commands_total",
            "tower_patterns_cqrs_queries_total",
            "tower_patterns_cqrs_command_errors_total",
        ] {
            assert_eq!(find(name), Some(DebugValue::Counter(0)), "{name}");
        }
        let _ = layer.handle().report();
    });
}

#[tokio::test]
async fn the_direct_adapter_passes_requests_and_answers_the_commit() {
    let layer = CqrsLayer::builder("direct")
        .commands(service_fn(|_: u32| async {
            Ok::<_, Infallible>(committed(4))
        }))
        .classify(|n: &u32| {
            if n.is_multiple_of(2) {
                Side::Command
            } else {
                Side::Query
            }
        })
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: u32| async {
        Ok::<_, Infallible>(committed(0))
    }));
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), committed(4));
    assert_eq!(svc.oneshot(3).await.unwrap(), committed(0));
    assert!(
        CqrsLayer::builder("")
            .commands(())
            .classify(classify)
            .build()
            .is_err()
    );
}
