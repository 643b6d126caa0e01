//! The consistency layer over a read side that publishes its progress: tokens issued by
//! writes, reads held until the read side reaches them, the three answers when it does not,
//! bad tokens refused, and sessions that only move forward.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tower::{Layer, ServiceExt, service_fn, util::BoxCloneService};
use tower_patterns_consistency::{
    BoxWait, Distance, Mark, MarkKind, Progress, ReadConcern, ReadSide, TokenKey, Tokens,
    layer::{Behind, ConsistencyBuilder, ConsistencyLayer, STALE_HEADER, TOKEN_HEADER},
};
use tower_patterns_core::{BoxError, http::classify_error};
use tower_patterns_eventstore::{Committed, GlobalPosition};

const KEY: TokenKey = TokenKey::new(*b"test key 16bytes");

fn at(i: u64) -> Mark {
    Mark::Position(GlobalPosition::new(0, i))
}

/// The app: a POST commits at the position in its `x-commit` header (as a `Committed`); a GET
/// answers 200 and records the `ReadConcern` it got; `x-mark` on any request makes the
/// response carry that mark.
#[derive(Clone, Default)]
struct App {
    calls: Arc<AtomicUsize>,
    concerns: Arc<Mutex<Vec<Option<ReadConcern>>>>,
}

impl App {
    fn service(&self) -> BoxCloneService<Request<()>, Response<()>, Infallible> {
        let app = self.clone();
        BoxCloneService::new(service_fn(move |req: Request<()>| {
            let app = app.clone();
            async move {
                app.calls.fetch_add(1, Ordering::SeqCst);
                app.concerns
                    .lock()
                    .unwrap()
                    .push(req.extensions().get::<ReadConcern>().copied());
                let mut res = Response::new(());
                let number = |name: &str| {
                    req.headers()
                        .get(name)
                        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
                };
                if let Some(i) = number("x-commit") {
                    res.extensions_mut().insert(Committed {
                        version: 1,
                        positions: vec![GlobalPosition::new(0, i - 1), GlobalPosition::new(0, i)],
                        retries: 0,
                    });
                }
                if let Some(i) = number("x-mark") {
                    res.extensions_mut().insert(at(i));
                }
                Ok::<_, Infallible>(res)
            }
        }))
    }
}

/// The layer under test, named `things`, signed with `KEY`, over `read_side`.
fn things<R: ReadSide>(read_side: R) -> ConsistencyBuilder<Tokens, R> {
    ConsistencyLayer::builder("things")
        .key(KEY)
        .read_side(read_side)
}

fn write(commit: u64) -> Request<()> {
    Request::post("/things")
        .header("x-commit", commit.to_string())
        .body(())
        .unwrap()
}

fn read_with(token: &HeaderValue) -> Request<()> {
    Request::get("/things/1")
        .header(TOKEN_HEADER, token.clone())
        .body(())
        .unwrap()
}

fn status_of(err: &BoxError) -> StatusCode {
    classify_error(&**err).status
}

#[tokio::test(start_paused = true)]
async fn a_write_issues_a_signed_token_in_the_header_and_the_cookie() {
    let app = App::default();
    let layer = things(Progress::new(at(0))).build().unwrap();
    let res = layer.layer(app.service()).oneshot(write(7)).await.unwrap();
    let token = res.headers()[TOKEN_HEADER].to_str().unwrap().to_owned();
    assert_eq!(
        res.extensions()
            .get::<tower_patterns_consistency::layer::IssuedToken>()
            .map(|t| t.0.to_str().unwrap().to_owned()),
        Some(token.clone())
    );
    // The last position of the commit, signed for the layer's name.
    assert_eq!(Tokens::new("things", KEY).verify(&token), Ok(at(7)));
    assert_eq!(
        res.headers()[header::SET_COOKIE],
        format!("tp_consistency_things={token}; Path=/; HttpOnly; SameSite=Lax")
    );
    assert_eq!(layer.handle().issued(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_read_waits_for_the_read_side_and_goes_through_when_it_arrives() {
    let app = App::default();
    let model = Progress::new(at(0));
    let layer = things(model.clone())
        .wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = layer.layer(app.service());
    let token = svc.clone().oneshot(write(3)).await.unwrap().headers()[TOKEN_HEADER].clone();
    let started = tokio::time::Instant::now();
    let pending = tokio::spawn(svc.clone().oneshot(read_with(&token)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "the read must wait for position 3");
    assert_eq!(
        app.calls.load(Ordering::SeqCst),
        1,
        "only the write reached the app"
    );
    model.advance(at(2));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!pending.is_finished(), "2 is not 3");
    model.advance(at(3));
    let res = pending.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(layer.handle().waits(), 1);
    // No new token for a read that moved nothing.
    assert!(res.headers().get(TOKEN_HEADER).is_none());
    // Reached already: no wait.
    svc.clone().oneshot(read_with(&token)).await.unwrap();
    assert_eq!(layer.handle().waits(), 1);
}

#[tokio::test(start_paused = true)]
async fn past_the_wait_the_default_is_503_with_retry_after() {
    let app = App::default();
    let layer = things(Progress::new(at(0)))
        .wait(Duration::from_millis(200))
        .retry_after(Duration::from_secs(2))
        .build()
        .unwrap();
    let svc = layer.layer(app.service());
    let token = svc.clone().oneshot(write(3)).await.unwrap().headers()[TOKEN_HEADER].clone();
    let started = tokio::time::Instant::now();
    let err = svc.clone().oneshot(read_with(&token)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    let mapping = classify_error(&*err);
    assert_eq!(mapping.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mapping.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(mapping.message, "read side has not caught up");
    assert_eq!(
        app.calls.load(Ordering::SeqCst),
        1,
        "the read never reached the app"
    );
    assert_eq!(layer.handle().unavailable(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_zero_wait_decides_at_once() {
    let app = App::default();
    let layer = things(Progress::new(at(0)))
        .wait(Duration::ZERO)
        .build()
        .unwrap();
    let svc = layer.layer(app.service());
    let token = Tokens::new("things", KEY).header_value(at(1));
    let started = tokio::time::Instant::now();
    let err = svc.oneshot(read_with(&token)).await.unwrap_err();
    assert_eq!(status_of(&err), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(layer.handle().waits(), 0);
}

#[tokio::test(start_paused = true)]
async fn stale_answers_say_how_far_behind_they_are() {
    let app = App::default();
    let layer = things(Progress::new(at(4)))
        .wait(Duration::from_millis(50))
        .when_behind(Behind::Stale)
        .build()
        .unwrap();
    let svc = layer.layer(app.service());
    let token = Tokens::new("things", KEY).header_value(at(10));
    let res = svc.clone().oneshot(read_with(&token)).await.unwrap();
    assert_eq!(res.headers()[STALE_HEADER], "events=6");
    assert!(
        res.headers().get(TOKEN_HEADER).is_none(),
        "the session keeps its token"
    );
    assert_eq!(layer.handle().stale(), 1);
    // A read that is not behind is not marked.
    let fresh = Tokens::new("things", KEY).header_value(at(4));
    let res = svc.oneshot(read_with(&fresh)).await.unwrap();
    assert!(res.headers().get(STALE_HEADER).is_none());
}

/// A read side that routes: a `Progress` whose service picks where to read.
#[derive(Clone)]
struct Routing(Progress);

impl ReadSide for Routing {
    type Wait = BoxWait;
    fn kind(&self) -> MarkKind {
        self.0.kind()
    }
    fn reached(&self, mark: Mark) -> bool {
        self.0.reached(mark)
    }
    fn wait(&self, mark: Mark, within: Duration) -> BoxWait {
        self.0.wait(mark, within)
    }
    fn distance(&self, mark: Mark) -> Option<Distance> {
        self.0.distance(mark)
    }
    fn routes(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn a_routing_read_side_gets_the_concern_and_the_primary_when_behind() {
    let app = App::default();
    let model = Routing(Progress::new(at(5)));
    let layer = things(model)
        .wait(Duration::from_millis(100))
        .when_behind(Behind::Primary)
        .build()
        .unwrap();
    let svc = layer.layer(app.service());
    let tokens = Tokens::new("things", KEY);
    svc.clone()
        .oneshot(read_with(&tokens.header_value(at(5))))
        .await
        .unwrap();
    svc.clone()
        .oneshot(read_with(&tokens.header_value(at(9))))
        .await
        .unwrap();
    svc.clone()
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap();
    svc.clone()
        .oneshot(read_with(&tokens.header_value(at(10))))
        .await
        .unwrap();
    assert_eq!(
        *app.concerns.lock().unwrap(),
        vec![
            Some(ReadConcern {
                at_least: Some(at(5)),
                from_primary: false
            }),
            Some(ReadConcern {
                at_least: Some(at(9)),
                from_primary: true
            }),
            None, // a read without a token: no concern, no allocation
            Some(ReadConcern {
                at_least: Some(at(10)),
                from_primary: true
            }),
        ]
    );
    assert_eq!(layer.handle().from_primary(), 2);
    // Over a read side that cannot route, reading from the primary is refused at build.
    let e = things(Progress::new(at(0)))
        .when_behind(Behind::Primary)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("when_behind"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_stale_read_through_a_router_is_measured_where_it_was_served() {
    let app = App::default();
    let layer = things(Routing(Progress::new(at(2))))
        .wait(Duration::from_millis(10))
        .when_behind(Behind::Stale)
        .build()
        .unwrap();
    let svc = layer.layer(app.service());
    let tokens = Tokens::new("things", KEY);
    let stale_read = |served_at: u64| {
        Request::get("/")
            .header(TOKEN_HEADER, tokens.header_value(at(10)))
            .header("x-mark", served_at.to_string())
            .body(())
            .unwrap()
    };
    // Served at 7 of the 10 asked for (the read side said 8 behind before the call).
    let res = svc.clone().oneshot(stale_read(7)).await.unwrap();
    assert_eq!(res.headers()[STALE_HEADER], "events=3");
    assert!(res.headers().get(TOKEN_HEADER).is_none());
    // Served at 12: not stale after all, and the session moves on.
    let res = svc.clone().oneshot(stale_read(12)).await.unwrap();
    assert!(res.headers().get(STALE_HEADER).is_none());
    assert_eq!(
        tokens.verify_bytes(res.headers()[TOKEN_HEADER].as_bytes()),
        Ok(at(12))
    );
    // The router is told nothing it cannot meet: no token to reach.
    assert!(
        app.concerns
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.is_none_or(|c| c.at_least.is_none() && !c.from_primary))
    );
}

#[tokio::test(start_paused = true)]
async fn a_non_routing_read_side_leaves_requests_alone() {
    let app = App::default();
    let layer = things(Progress::new(at(5))).build().unwrap();
    let token = Tokens::new("things", KEY).header_value(at(5));
    layer
        .layer(app.service())
        .oneshot(read_with(&token))
        .await
        .unwrap();
    assert_eq!(*app.concerns.lock().unwrap(), vec![None]);
}

#[tokio::test(start_paused = true)]
async fn bad_tokens_are_400_and_never_reach_the_app_nor_wait() {
    let app = App::default();
    let layer = things(Progress::new(at(0)))
        .wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let svc = layer.layer(app.service());
    let position = Tokens::new("things", KEY).issue(at(1_000_000));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage".to_vec(), "malformed consistency token"),
        (b"".to_vec(), "malformed consistency token"),
        (
            Tokens::new("things", TokenKey::new([7; 16]))
                .issue(at(1_000_000))
                .into_bytes(),
            "invalid consistency token",
        ),
        (
            Tokens::new("other", KEY).issue(at(1)).into_bytes(),
            "invalid consistency token",
        ),
        (
            Tokens::new("things", KEY)
                .issue(Mark::Lsn(tower_patterns_consistency::Lsn(1)))
                .into_bytes(),
            "invalid consistency token",
        ),
        (
            position.replace('f', "e").replace('0', "1").into_bytes(),
            "invalid consistency token",
        ),
        (b"\xff\xfe".to_vec(), "malformed consistency token"),
    ];
    let n = cases.len();
    for (token, phrase) in cases {
        for method in [Method::GET, Method::POST] {
            let started = tokio::time::Instant::now();
            let req = Request::builder()
                .method(method)
                .uri("/")
                .header(TOKEN_HEADER, HeaderValue::from_bytes(&token).unwrap())
                .body(())
                .unwrap();
            let err = svc.clone().oneshot(req).await.unwrap_err();
            let mapping = classify_error(&*err);
            assert_eq!(mapping.status, StatusCode::BAD_REQUEST);
            assert_eq!(
                mapping.message,
                phrase,
                "{}",
                String::from_utf8_lossy(&token)
            );
            assert_eq!(started.elapsed(), Duration::ZERO);
        }
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), 0);
    assert_eq!(layer.handle().bad_tokens(), 2 * n as u64);
}

#[tokio::test(start_paused = true)]
async fn a_bad_cookie_is_ignored_and_cleared_rather_than_refused() {
    let app = App::default();
    let layer = things(Progress::new(at(5))).build().unwrap();
    let svc = layer.layer(app.service());
    let other_key = Tokens::new("things", TokenKey::new([7; 16])).issue(at(1_000));
    for cookie in [
        "a=b; tp_consistency_things=nonsense".to_owned(),
        format!("tp_consistency_things={other_key}"),
        "tp_consistency_things=".to_owned(),
    ] {
        // A read goes through at once, as one without a token, and the cookie is cleared.
        let started = tokio::time::Instant::now();
        let req = Request::get("/")
            .header(header::COOKIE, &cookie)
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{cookie}");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(
            res.headers()[header::SET_COOKIE],
            "tp_consistency_things=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        );
        // A write replaces it with a good token.
        let mut req = write(6);
        req.headers_mut()
            .insert(header::COOKIE, cookie.parse().unwrap());
        let res = svc.clone().oneshot(req).await.unwrap();
        let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
        let token = res.headers()[TOKEN_HEADER].to_str().unwrap();
        assert_eq!(
            set,
            format!("tp_consistency_things={token}; Path=/; HttpOnly; SameSite=Lax")
        );
        assert_eq!(Tokens::new("things", KEY).verify(token), Ok(at(6)));
    }
    // Another app's cookie (another name) is not this layer's business.
    let req = Request::get("/")
        .header(header::COOKIE, "tp_consistency_other=nonsense")
        .body(())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert!(res.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(layer.handle().bad_tokens(), 6);
    assert_eq!(app.calls.load(Ordering::SeqCst), 7);
}

#[tokio::test(start_paused = true)]
async fn sessions_only_move_forward_and_the_cookie_counts_like_the_header() {
    let app = App::default();
    let model = Routing(Progress::new(at(50)));
    let layer = things(model).build().unwrap();
    let svc = layer.layer(app.service());
    let tokens = Tokens::new("things", KEY);
    let token_of = |res: &Response<()>| {
        res.headers()
            .get(TOKEN_HEADER)
            .map(|v| tokens.verify_bytes(v.as_bytes()).unwrap())
    };
    // A read answered at 20 by a session at 30 keeps 30: no token set.
    let req = Request::get("/")
        .header(TOKEN_HEADER, tokens.header_value(at(30)))
        .header("x-mark", "20")
        .body(())
        .unwrap();
    assert_eq!(token_of(&svc.clone().oneshot(req).await.unwrap()), None);
    // Answered at 40: the session moves to 40.
    let req = Request::get("/")
        .header(TOKEN_HEADER, tokens.header_value(at(30)))
        .header("x-mark", "40")
        .body(())
        .unwrap();
    assert_eq!(
        token_of(&svc.clone().oneshot(req).await.unwrap()),
        Some(at(40))
    );
    // A write at 10 by a session at 30 (header): 30 stays.
    let req = Request::post("/")
        .header(TOKEN_HEADER, tokens.header_value(at(30)))
        .header("x-commit", "10")
        .body(())
        .unwrap();
    assert_eq!(token_of(&svc.clone().oneshot(req).await.unwrap()), None);
    // With both, the header is the session and the cookie is not read (not even a bad one):
    // a write at 40 by header 30 and cookie 45 moves the session to 40.
    for cookie in [tokens.issue(at(45)), "nonsense".to_owned()] {
        let req = Request::post("/")
            .header(TOKEN_HEADER, tokens.header_value(at(30)))
            .header(
                header::COOKIE,
                format!("x=1; tp_consistency_things={cookie}"),
            )
            .header("x-commit", "40")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(token_of(&res), Some(at(40)));
    }
    // The cookie alone is the session when there is no header: 45 stays against a write at 40.
    let req = Request::post("/")
        .header(
            header::COOKIE,
            format!("tp_consistency_things={}", tokens.issue(at(45))),
        )
        .header("x-commit", "40")
        .body(())
        .unwrap();
    assert_eq!(token_of(&svc.clone().oneshot(req).await.unwrap()), None);
    // A first read without a token starts a session at what it saw.
    let req = Request::get("/").header("x-mark", "50").body(()).unwrap();
    assert_eq!(token_of(&svc.oneshot(req).await.unwrap()), Some(at(50)));
}

#[tokio::test]
async fn settings_are_validated() {
    let build = |b: tower_patterns_consistency::layer::ConsistencyBuilder| {
        b.key(KEY)
            .read_side(Progress::new(at(0)))
            .build()
            .map(|_| ())
    };
    assert!(build(ConsistencyLayer::builder("")).is_err());
    let e = ConsistencyLayer::builder("x")
        .key(KEY)
        .read_side(Progress::new(at(0)))
        .retry_after(Duration::from_millis(500))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("retry_after"), "{e}");
    let e = ConsistencyLayer::builder("x")
        .key(KEY)
        .read_side(Progress::new(at(0)))
        .cookie("bad name;")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("cookie"), "{e}");
    assert!(
        ConsistencyLayer::builder("x")
            .key(KEY)
            .read_side(Progress::new(at(0)))
            .no_cookie()
            .secure_cookie(true)
            .build()
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn a_secure_cookie_says_so_and_no_cookie_sets_none() {
    let app = App::default();
    let secure = things(Progress::new(at(0)))
        .secure_cookie(true)
        .build()
        .unwrap();
    let res = secure.layer(app.service()).oneshot(write(1)).await.unwrap();
    assert!(
        res.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );
    let header_only = things(Progress::new(at(0))).no_cookie().build().unwrap();
    let svc = header_only.layer(app.service());
    let res = svc.clone().oneshot(write(1)).await.unwrap();
    assert!(res.headers().get(header::SET_COOKIE).is_none());
    assert!(res.headers().get(TOKEN_HEADER).is_some());
    // And a cookie is then ignored, even a malformed one, and never cleared.
    let req = Request::get("/")
        .header(header::COOKIE, "tp_consistency_things=nonsense")
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get(header::SET_COOKIE).is_none());
}
