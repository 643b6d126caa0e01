//! The values of the crate: marks, keys, tokens, the read sides that are not projections, and
//! what the layer's handle reports.

use std::{collections::HashMap, time::Duration};

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns_consistency::{
    AllOf, Distance, Lsn, Mark, MarkKind, Progress, ReadSide, TokenKey, Tokens,
    layer::{Behind, ConsistencyLayer, STALE_HEADER, TOKEN_HEADER},
};
use tower_patterns_core::{
    http::classify_error,
    observe::{Health, StateHandle},
};
use tower_patterns_eventstore::GlobalPosition;

fn at(i: u64) -> Mark {
    Mark::Position(GlobalPosition::new(0, i))
}

#[test]
fn marks_have_names_order_and_text() {
    assert_eq!(MarkKind::Position.as_str(), "position");
    assert_eq!(MarkKind::Lsn.as_str(), "lsn");
    assert!(Mark::Lsn(Lsn(1)) < Mark::Lsn(Lsn(2)));
    assert_eq!(
        Mark::Lsn(Lsn(3)).max_with(Mark::Lsn(Lsn(9))),
        Mark::Lsn(Lsn(9))
    );
    assert_eq!(
        Mark::Position(GlobalPosition::new(2, 5)).to_string(),
        "position 2.5"
    );
    assert_eq!(Mark::Lsn(Lsn(0x1_0000_0010)).to_string(), "lsn 1/10");
    // `from_str_radix` takes a sign; a WAL position never has one.
    assert_eq!(Lsn::parse("+1/0"), None);
    assert_eq!(Lsn::parse("1/+0"), None);
    assert_eq!(Lsn::parse("ab/CD"), Some(Lsn(0xab_0000_00cd)));
}

#[test]
fn http_responses_want_a_mark_unless_the_server_failed() {
    use tower_patterns_consistency::MarkResponse;
    let with = |status: u16| {
        Response::builder()
            .status(status)
            .body(())
            .unwrap()
            .wants_mark()
    };
    assert!(with(200) && with(201) && with(404) && with(409));
    assert!(!with(500) && !with(503));
    let mut res = Response::new(());
    res.set_mark(at(3));
    assert_eq!(res.extensions().get::<Mark>(), Some(&at(3)));
}

#[test]
fn requests_carry_their_concern_and_other_responses_want_marks() {
    use tower_patterns_consistency::{ConcernOf, MarkResponse, ReadConcern};
    let concern = ReadConcern {
        at_least: Some(at(4)),
        from_primary: true,
    };
    let mut req = Request::new(());
    assert_eq!(req.read_concern(), ReadConcern::default());
    req.extensions_mut().insert(concern);
    assert_eq!(req.read_concern(), concern);

    struct Reply(Option<Mark>);
    impl MarkResponse for Reply {
        fn set_mark(&mut self, mark: Mark) {
            self.0 = Some(mark);
        }
    }
    let mut reply = Reply(None);
    assert!(reply.wants_mark());
    reply.set_mark(at(1));
    assert_eq!(reply.0, Some(at(1)));
}

#[test]
fn keys_read_both_nibbles_in_either_case() {
    let lower = TokenKey::from_hex("f0e1d2c3b4a5968778695a4b3c2d1e0f").unwrap();
    let upper = TokenKey::from_hex("F0E1D2C3B4A5968778695A4B3C2D1E0F").unwrap();
    let bytes = [
        0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e,
        0x0f,
    ];
    assert_eq!(lower, TokenKey::new(bytes));
    assert_eq!(upper, lower);
    // Surrounding whitespace (a key read from a file) is fine.
    assert_eq!(
        TokenKey::from_hex(" f0e1d2c3b4a5968778695a4b3c2d1e0f\n").unwrap(),
        lower
    );
}

#[test]
fn tokens_say_their_scope_and_hide_their_keys() {
    let tokens = Tokens::new("orders", TokenKey::new([1; 16])).previous(TokenKey::new([2; 16]));
    assert_eq!(tokens.scope(), "orders");
    let debug = format!("{tokens:?}");
    assert!(
        debug.contains("orders") && debug.contains("previous_keys: 1"),
        "{debug}"
    );
}

#[tokio::test(start_paused = true)]
async fn all_of_needs_every_side_and_reports_the_furthest_behind() {
    let (a, b) = (Progress::new(at(10)), Progress::new(at(4)));
    let both = AllOf::new([a.clone(), b.clone()]);
    assert_eq!(both.kind(), MarkKind::Position);
    assert!(both.reached(at(4)));
    assert!(!both.reached(at(5)));
    assert_eq!(both.distance(at(12)), Some(Distance::Events(8)));
    assert_eq!(both.distance(at(4)), None);
    assert!(format!("{both:?}").contains("sides: 2"));

    // The wait needs both, within one deadline shared by the two.
    let wait = tokio::spawn(both.wait(at(11), Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_secs(4)).await;
    a.advance(at(11));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!wait.is_finished(), "b is still at 4");
    b.advance(at(11));
    assert!(wait.await.unwrap());
    // Past the deadline: false, after the whole wait and no longer.
    let started = tokio::time::Instant::now();
    let slow = Progress::new(at(0));
    assert!(
        !AllOf::new([slow.clone(), slow])
            .wait(at(1), Duration::from_secs(3))
            .await
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    // An empty set has reached everything.
    assert!(AllOf::<Progress>::new([]).reached(at(99)));
}

#[tokio::test(start_paused = true)]
async fn progress_never_goes_back_and_measures_wal_bytes() {
    let replica = Progress::new(Mark::Lsn(Lsn(100)));
    assert_eq!(replica.kind(), MarkKind::Lsn);
    replica.advance(Mark::Lsn(Lsn(90)));
    assert_eq!(replica.current(), Mark::Lsn(Lsn(100)));
    assert_eq!(
        replica.distance(Mark::Lsn(Lsn(164))),
        Some(Distance::WalBytes(64))
    );
    assert_eq!(replica.distance(Mark::Lsn(Lsn(100))), None);
    assert_eq!(replica.distance(Mark::Lsn(Lsn(50))), None);
    assert_eq!(replica.distance(at(1)), None, "another kind");
    let model = Progress::new(at(3));
    assert_eq!(model.distance(at(3)), None);
    assert_eq!(model.distance(at(1)), None);
    assert_eq!(model.distance(at(5)), Some(Distance::Events(2)));
    assert!(format!("{model:?}").contains("Position"));
    // A mark of the other kind is never reached, and waiting for one ends with false.
    assert!(!replica.reached(at(0)));
    assert!(!replica.wait(at(0), Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn the_handle_reports_each_outcome_under_its_name() {
    let model = Progress::new(at(0));
    let layer = ConsistencyLayer::builder("orders")
        .key(TokenKey::new([3; 16]))
        .read_side(model.clone())
        .wait(Duration::from_millis(10))
        .when_behind(Behind::Stale)
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.pattern(), "consistency");
    assert_eq!(handle.name(), "orders");
    assert_eq!(handle.health(), Health::Ready);
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        let mut res = Response::new(());
        if req.method() == http::Method::POST {
            res.extensions_mut().insert(at(7));
        }
        Ok::<_, std::convert::Infallible>(res)
    }));
    let tokens = layer.tokens().clone();
    for _ in 0..2 {
        svc.clone()
            .oneshot(Request::post("/").body(()).unwrap())
            .await
            .unwrap();
        let res = svc
            .clone()
            .oneshot(
                Request::get("/")
                    .header(TOKEN_HEADER, tokens.header_value(at(7)))
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.headers()[STALE_HEADER], "events=7");
    }
    let err = svc
        .clone()
        .oneshot(
            Request::get("/")
                .header(TOKEN_HEADER, "nonsense")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(classify_error(&*err).status, StatusCode::BAD_REQUEST);
    let values: HashMap<_, _> = handle.report().values.into_iter().collect();
    assert_eq!(values["waits"], 2.0);
    assert_eq!(values["behind_stale"], 2.0);
    assert_eq!(values["behind_unavailable"], 0.0);
    assert_eq!(values["behind_primary"], 0.0);
    assert_eq!(values["bad_tokens"], 1.0);
    assert_eq!(values["tokens_issued"], 2.0);
    assert_eq!(
        (
            handle.stale(),
            handle.issued(),
            handle.unavailable(),
            handle.from_primary()
        ),
        (2, 2, 0, 0)
    );
    assert_eq!(handle.report().state, "following read models");
    assert!(format!("{layer:?}").contains("orders"));
}

#[tokio::test(start_paused = true)]
async fn each_refusal_and_primary_read_counts_once() {
    for (behind, expect) in [(Behind::Unavailable, (2, 0))] {
        let layer = ConsistencyLayer::builder("orders")
            .key(TokenKey::new([3; 16]))
            .read_side(Progress::new(at(0)))
            .wait(Duration::ZERO)
            .when_behind(behind)
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
        for _ in 0..2 {
            let req = Request::get("/")
                .header(TOKEN_HEADER, layer.tokens().header_value(at(1)))
                .body(())
                .unwrap();
            let _ = svc.clone().oneshot(req).await;
        }
        let h = layer.handle();
        assert_eq!((h.unavailable(), h.from_primary()), expect);
    }
}

#[test]
fn not_caught_up_says_so() {
    // Reached through the layer in the tests above; its text is for logs.
    let text = "the read side has not caught up with this session's writes";
    let rendered = {
        // The only way to make one is a refusal; take it from a layer.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let layer = ConsistencyLayer::builder("x")
                .key(TokenKey::new([3; 16]))
                .read_side(Progress::new(at(0)))
                .wait(Duration::ZERO)
                .build()
                .unwrap();
            let svc = layer.layer(service_fn(|_: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::new(()))
            }));
            let req = Request::get("/")
                .header(TOKEN_HEADER, layer.tokens().header_value(at(1)))
                .body(())
                .unwrap();
            let err = svc.oneshot(req).await.unwrap_err();
            let e = err
                .downcast_ref::<tower_patterns_consistency::layer::NotCaughtUp>()
                .unwrap();
            assert_eq!(e.retry_after(), Duration::from_secs(1));
            err.to_string()
        })
    };
    assert_eq!(rendered, text);
}

#[tokio::test]
async fn the_default_cookie_is_named_after_the_layer_in_cookie_characters() {
    let layer = ConsistencyLayer::builder("my app/1")
        .key(TokenKey::new([3; 16]))
        .read_side(Progress::new(at(0)))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        let mut res = Response::new(());
        res.extensions_mut().insert(at(1));
        Ok::<_, std::convert::Infallible>(res)
    }));
    let res = svc
        .oneshot(Request::post("/").body(()).unwrap())
        .await
        .unwrap();
    let cookie = res.headers()[http::header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("tp_consistency_my_app_1="), "{cookie}");
}
