//! The migration table on a plain tower stack: sticky splits, overrides, tenant pins, the
//! read-only switch, readiness, and ramps with automatic rollback (paused time).

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_patterns_core::{
    key::{HeaderKey, key_fn},
    tenant::TenantId,
};
use tower_patterns_strangler::{
    Mode, Ramp, RampAction, RampStatus, Route, Share, Side, StranglerError, StranglerLayer,
};

type Body = Full<Bytes>;

/// A side that answers with its name, or 500 while `failing`.
fn side(
    name: &'static str,
    failing: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<Body>| {
        let failing = failing.load(Ordering::Relaxed);
        calls.fetch_add(1, Ordering::Relaxed);
        async move {
            let status = if failing {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(name.as_bytes())))
                    .unwrap(),
            )
        }
    })
}

fn user_key() -> HeaderKey {
    HeaderKey::new(HeaderName::from_static("x-user"))
}

fn get(path: &str, user: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(u) = user {
        b = b.header("x-user", u);
    }
    b.body(Body::default()).unwrap()
}

async fn served_by<S>(svc: &mut S, req: Request<Body>) -> String
where
    S: Service<Request<Body>, Error = tower_patterns_core::BoxError>,
    S::Response: Into<Response<tower_patterns_strangler::StranglerBody<Body, Body>>>,
{
    let res: Response<_> = svc.ready().await.unwrap().call(req).await.unwrap().into();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_split_is_sticky_per_user_and_near_its_share() {
    let off = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = StranglerLayer::builder("users")
        .key(user_key())
        .new_side(side("new", off.clone(), calls.clone()))
        .route(Route::prefix("/api/users").mode(Mode::Split(Share::HALF)))
        .build()
        .unwrap();
    let mut svc = layer.layer(side("legacy", off.clone(), calls.clone()));
    let mut first = HashMap::new();
    for round in 0..3 {
        for u in 0..1000 {
            let user = format!("user-{u}");
            let got = served_by(&mut svc, get(&format!("/api/users/{u}"), Some(&user))).await;
            let was = first.entry(user).or_insert_with(|| got.clone());
            assert_eq!(*was, got, "user-{u} moved sides in round {round}");
        }
    }
    let on_new = first.values().filter(|s| *s == "new").count();
    assert!(
        (470..=530).contains(&on_new),
        "{on_new} of 1000 on the new side"
    );
    // Other paths stay on legacy (the fallback), as do requests without a key.
    assert_eq!(
        served_by(&mut svc, get("/api/orders/1", Some("user-1"))).await,
        "legacy"
    );
    assert_eq!(
        served_by(&mut svc, get("/api/usersx", Some("user-1"))).await,
        "legacy"
    );
    let no_key = (0..50).map(|_| get("/api/users/1", None));
    for req in no_key {
        assert_eq!(served_by(&mut svc, req).await, "legacy");
    }
    let counts = layer.handle().counts("/api/users").unwrap();
    assert_eq!(counts.legacy + counts.new, 3050);
    assert_eq!(counts.new as usize, on_new * 3);

    // Raising the share moves users onto the new side only.
    layer
        .handle()
        .set_mode("/api/users", Mode::Split(Share::percent(75).unwrap()))
        .unwrap();
    let mut moved = 0;
    for (user, was) in &first {
        let got = served_by(&mut svc, get("/api/users/x", Some(user))).await;
        if was == "new" {
            assert_eq!(got, "new", "{user} left the new side");
        } else if got == "new" {
            moved += 1;
        }
    }
    assert!((200..=300).contains(&moved), "{moved} moved at 75%");
}

#[tokio::test]
async fn overrides_pins_and_the_read_only_switch() {
    let off = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = StranglerLayer::builder("overrides")
        .key(user_key())
        .new_side(side("new", off.clone(), calls.clone()))
        .route(Route::prefix("/api/users").mode(Mode::Legacy))
        .route(
            Route::prefix("/api/users/admin")
                .named("admin")
                .mode(Mode::New),
        )
        .override_header(HeaderName::from_static("x-migration-side"))
        .new_tenants(["beta"])
        .legacy_tenants(["slow-co"])
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(side("legacy", off, calls));
    let with = |path: &str, header: Option<&str>, tenant: Option<&str>| {
        let mut req = get(path, Some("u1"));
        if let Some(h) = header {
            req.headers_mut()
                .append("x-migration-side", h.parse().unwrap());
        }
        if let Some(t) = tenant {
            req.extensions_mut().insert(TenantId::new(t).unwrap());
        }
        req
    };
    // The longest prefix wins.
    assert_eq!(
        served_by(&mut svc, with("/api/users/admin/1", None, None)).await,
        "new"
    );
    assert_eq!(
        served_by(&mut svc, with("/api/users/1", None, None)).await,
        "legacy"
    );
    // The override header, in any case.
    assert_eq!(
        served_by(&mut svc, with("/api/users/1", Some("NEW"), None)).await,
        "new"
    );
    assert_eq!(
        served_by(&mut svc, with("/api/users/admin", Some("legacy"), None)).await,
        "legacy"
    );
    // A malformed override is ignored, never an error.
    for bad in ["both", "", "new,legacy", "néw"] {
        let mut req = get("/api/users/1", Some("u1"));
        if let Ok(v) = http::HeaderValue::from_bytes(bad.as_bytes()) {
            req.headers_mut().insert("x-migration-side", v);
        }
        assert_eq!(served_by(&mut svc, req).await, "legacy", "{bad:?}");
    }
    // Two values are malformed too.
    let twice = with("/api/users/1", Some("new"), None);
    let mut twice = twice;
    twice
        .headers_mut()
        .append("x-migration-side", "new".parse().unwrap());
    assert_eq!(served_by(&mut svc, twice).await, "legacy");
    // Tenant pins: beta to new, slow-co to legacy; the override still wins.
    assert_eq!(
        served_by(&mut svc, with("/api/users/1", None, Some("beta"))).await,
        "new"
    );
    assert_eq!(
        served_by(&mut svc, with("/api/users/admin", None, Some("slow-co"))).await,
        "legacy"
    );
    assert_eq!(
        served_by(&mut svc, with("/api/users/1", Some("legacy"), Some("beta"))).await,
        "legacy"
    );
    handle.set_tenants(Vec::<String>::new(), ["beta"]).unwrap();
    assert_eq!(
        served_by(&mut svc, with("/api/users/admin", None, Some("beta"))).await,
        "legacy"
    );
    assert!(
        handle
            .set_tenants(["not a tenant"], Vec::<String>::new())
            .is_err()
    );
    // Pins on the new side alone count as pins too.
    handle.set_tenants(["beta"], Vec::<String>::new()).unwrap();
    assert_eq!(
        served_by(&mut svc, with("/api/users/1", None, Some("beta"))).await,
        "new"
    );

    // Read-only legacy: writes refused with a typed error, reads served, the new side writable.
    handle.set_legacy_read_only(true);
    let post = Request::post("/api/users/1").body(Body::default()).unwrap();
    let err = svc.ready().await.unwrap().call(post).await.unwrap_err();
    let err = err.downcast_ref::<StranglerError>().expect("typed");
    assert!(err.is_read_only());
    let res = tower_patterns_core::http::error_response::<String>(err);
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.body(), "legacy service is read-only");
    assert_eq!(
        served_by(&mut svc, get("/api/users/1", None)).await,
        "legacy"
    );
    let post = Request::post("/api/users/admin")
        .body(Body::default())
        .unwrap();
    assert_eq!(served_by(&mut svc, post).await, "new");

    // Unknown routes are errors of the handle, not panics.
    assert!(handle.set_mode("nowhere", Mode::New).is_err());
    assert_eq!(handle.mode("admin"), Some(Mode::New));
    assert_eq!(handle.routes().last().unwrap().name.as_ref(), "fallback");
}

#[tokio::test]
async fn ready_when_legacy_is_and_a_new_side_not_ready_holds_up_only_its_own_requests() {
    let (legacy, mut legacy_handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (new, mut new_handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let layer = StranglerLayer::builder("ready")
        .key(user_key())
        .new_side(new)
        .route(Route::prefix("/moved").mode(Mode::New))
        .build()
        .unwrap();
    let mut svc = tower_test::mock::Spawn::new(layer.layer(legacy));
    legacy_handle.allow(0);
    new_handle.allow(1);
    assert!(svc.poll_ready().is_pending(), "legacy not ready");
    // The new side is not ready: the service is, and a legacy request goes through.
    legacy_handle.allow(1);
    new_handle.allow(0);
    assert!(
        svc.poll_ready().is_ready(),
        "the new side's readiness does not hold legacy up"
    );
    let mut moved = tokio_test::task::spawn(svc.call(get("/moved/1", Some("u"))));
    assert!(
        moved.poll().is_pending(),
        "waits for the new side within its call"
    );
    legacy_handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    let stayed = svc.call(get("/other", Some("u")));
    let (_, send) = legacy_handle.next_request().await.unwrap();
    send.send_response(Response::new(Body::from("legacy")));
    let res = stayed.await.unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "legacy"
    );
    // The new side becomes ready: the waiting request is sent and answered.
    new_handle.allow(1);
    assert!(moved.poll().is_pending(), "sent, not yet answered");
    let (_, send) = new_handle.next_request().await.unwrap();
    send.send_response(Response::new(Body::from("new")));
    let res = moved.await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "new");
}

#[tokio::test]
async fn building_checks_the_table() {
    let off = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let base = || {
        StranglerLayer::builder("checks")
            .key(user_key())
            .new_side(side("new", off.clone(), calls.clone()))
    };
    assert!(base().route(Route::prefix("no-slash")).build().is_err());
    assert!(
        base()
            .route(Route::prefix("/a"))
            .route(Route::prefix("/a"))
            .build()
            .is_err()
    );
    assert!(
        base()
            .route(Route::prefix("/a").ramp(Ramp::new([])))
            .build()
            .is_err()
    );
    assert!(base().new_tenants(["bad tenant"]).build().is_err());
    // A key from a closure works as well as a header.
    let layer = StranglerLayer::builder("closure")
        .key(key_fn(|r: &Request<Body>| {
            Ok::<_, tower_patterns_core::KeyError>(r.uri().path().to_owned())
        }))
        .new_side(side("new", off.clone(), calls.clone()))
        .route(
            Route::prefix("/")
                .named("all")
                .mode(Mode::Split(Share::HALF)),
        )
        .build()
        .unwrap();
    let mut svc = layer.layer(side("legacy", off, calls));
    let a = served_by(&mut svc, get("/p/1", None)).await;
    assert_eq!(a, served_by(&mut svc, get("/p/1", None)).await);
}

/// Sleeps past the next window's end, so the ramp's driver judges the traffic sent so far
/// before any more is sent.
async fn next_window(window: Duration) {
    tokio::time::sleep(window + Duration::from_millis(1)).await;
}

/// Sends `n` requests from distinct users, returns how many the new side served.
async fn traffic<S>(svc: &mut S, n: usize, round: usize) -> usize
where
    S: Service<Request<Body>, Error = tower_patterns_core::BoxError>,
    S::Response: Into<Response<tower_patterns_strangler::StranglerBody<Body, Body>>>,
{
    let mut on_new = 0;
    for i in 0..n {
        let user = format!("u{round}-{i}");
        let res: Response<_> = svc
            .ready()
            .await
            .unwrap()
            .call(get("/api/users/1", Some(&user)))
            .await
            .unwrap()
            .into();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        on_new += usize::from(body == "new");
    }
    on_new
}

#[tokio::test(start_paused = true)]
async fn a_ramp_advances_while_healthy_and_rolls_back_when_the_new_side_fails() {
    let legacy_failing = Arc::new(AtomicBool::new(false));
    let new_failing = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let window = Duration::from_secs(10);
    let ramp = Ramp::percentages([10, 25, 50, 100])
        .unwrap()
        .window(window)
        .hold(window * 2)
        .min_requests(20);
    let layer = StranglerLayer::builder("ramp")
        .key(user_key())
        .new_side(side("new", new_failing.clone(), calls.clone()))
        .route(Route::prefix("/api/users").named("users").ramp(ramp))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(side("legacy", legacy_failing, calls));
    assert_eq!(
        handle.mode("users"),
        Some(Mode::Split(Share::percent(10).unwrap()))
    );
    // Two healthy windows at each step advance it: 10% -> 25% -> 50%.
    let mut round = 0;
    for expected in [10u8, 10, 25, 25] {
        let on_new = traffic(&mut svc, 400, round).await;
        round += 1;
        let share = on_new as f64 / 400.0 * 100.0;
        assert!(
            (share - f64::from(expected)).abs() < 7.0,
            "{share}% at {expected}%"
        );
        next_window(window).await;
    }
    assert_eq!(
        handle.ramp("users").unwrap().share,
        Share::percent(50).unwrap()
    );
    assert_eq!(handle.ramp("users").unwrap().status, RampStatus::Running);
    // The new side starts failing: one window later the route is back at 25%, and stays.
    new_failing.store(true, Ordering::Relaxed);
    traffic(&mut svc, 400, round).await;
    next_window(window).await;
    let state = handle.ramp("users").unwrap();
    assert_eq!(state.status, RampStatus::RolledBack);
    assert_eq!(state.share, Share::percent(25).unwrap());
    assert_eq!(
        handle.mode("users"),
        Some(Mode::Split(Share::percent(25).unwrap()))
    );
    new_failing.store(false, Ordering::Relaxed);
    for r in 0..3 {
        traffic(&mut svc, 400, 100 + r).await;
        next_window(window).await;
    }
    assert_eq!(
        handle.ramp("users").unwrap().share,
        Share::percent(25).unwrap(),
        "stays rolled back"
    );
    let events = handle.ramp_events();
    let actions: Vec<_> = events.iter().map(|e| (e.action, e.to)).collect();
    assert_eq!(
        actions,
        vec![
            (RampAction::Advance, Share::percent(25).unwrap()),
            (RampAction::Advance, Share::percent(50).unwrap()),
            (RampAction::Rollback, Share::percent(25).unwrap()),
        ]
    );
    let rollback = &events[2];
    assert!(
        rollback.reason.contains("error rate"),
        "{}",
        rollback.reason
    );
    assert!(rollback.new.errors > 0 && rollback.legacy.errors == 0);
    use tower_patterns_core::observe::{Health, StateHandle};
    assert_eq!(handle.health(), Health::Degraded);

    // Resumed, it climbs to the end: the route is then wholly on the new side.
    handle.resume_ramp("users").unwrap();
    for r in 0..8 {
        traffic(&mut svc, 400, 200 + r).await;
        next_window(window).await;
    }
    assert_eq!(handle.ramp("users").unwrap().status, RampStatus::Complete);
    assert_eq!(handle.mode("users"), Some(Mode::New));
    assert_eq!(traffic(&mut svc, 100, 300).await, 100);
    assert_eq!(handle.health(), Health::Ready);
    let _ = Side::New;
    let _ = Method::GET;
}

#[tokio::test(start_paused = true)]
async fn a_mode_set_by_hand_pauses_the_ramp() {
    let off = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let window = Duration::from_secs(10);
    let layer = StranglerLayer::builder("pause")
        .key(user_key())
        .new_side(side("new", off.clone(), calls.clone()))
        .route(
            Route::prefix("/api/users").named("users").ramp(
                Ramp::percentages([10, 100])
                    .unwrap()
                    .window(window)
                    .hold(window)
                    .min_requests(10),
            ),
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(side("legacy", off, calls));
    handle.rollback("users").unwrap();
    assert_eq!(handle.ramp("users").unwrap().status, RampStatus::Paused);
    for r in 0..3 {
        assert_eq!(traffic(&mut svc, 200, r).await, 0);
        next_window(window).await;
    }
    assert_eq!(handle.mode("users"), Some(Mode::Legacy));
    handle.resume_ramp("users").unwrap();
    assert_eq!(
        handle.mode("users"),
        Some(Mode::Split(Share::percent(10).unwrap()))
    );
    let actions: Vec<_> = handle.ramp_events().iter().map(|e| e.action).collect();
    assert_eq!(actions, vec![RampAction::Pause, RampAction::Resume]);
}

#[tokio::test(start_paused = true)]
async fn a_new_side_that_hangs_rolls_the_ramp_back() {
    // The new side never answers; an outer timeout cuts its calls. Dropped calls count as
    // errors, so the ramp does not wait forever for answers that never come.
    let off = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let window = Duration::from_secs(10);
    let hang = service_fn(|_req: Request<Body>| async {
        std::future::pending::<Result<Response<Body>, Infallible>>().await
    });
    let layer = StranglerLayer::builder("hang")
        .key(user_key())
        .new_side(hang)
        .route(
            Route::prefix("/api/users").named("users").ramp(
                Ramp::percentages([50, 100])
                    .unwrap()
                    .window(window)
                    .min_requests(10),
            ),
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = tower::ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .layer(layer)
        .service(side("legacy", off, calls));
    for i in 0..100 {
        let _ = svc
            .clone()
            .oneshot(get("/api/users/1", Some(&format!("user-{i}"))))
            .await;
    }
    next_window(window).await;
    assert_eq!(handle.ramp("users").unwrap().status, RampStatus::RolledBack);
    assert_eq!(handle.mode("users"), Some(Mode::Legacy));
    let rollback = &handle.ramp_events()[0];
    assert!(
        rollback.new.errors >= 10 && rollback.legacy.errors == 0,
        "{rollback:?}"
    );
}

#[tokio::test]
async fn pins_and_overrides_leave_unmigrated_paths_and_markers_are_always_stripped() {
    let off = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let new = service_fn(move |req: Request<Body>| {
        recorded.lock().unwrap().push(req.headers().clone());
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"new")))) }
    });
    let layer = StranglerLayer::builder("edges")
        .key(user_key())
        .new_side(new)
        .route(Route::prefix("/api/users").mode(Mode::New))
        .route(
            Route::prefix("/api/search")
                .named("search")
                .mode(Mode::Shadow),
        )
        .override_header(HeaderName::from_static("x-migration-side"))
        .new_tenants(["beta"])
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(side("legacy", off, calls));
    // A beta tenant, or a tester's override, on a path no route names: legacy serves it.
    let mut beta = get("/api/catalog", Some("u"));
    beta.extensions_mut().insert(TenantId::new("beta").unwrap());
    assert_eq!(served_by(&mut svc, beta).await, "legacy");
    let mut over = get("/api/catalog", Some("u"));
    over.headers_mut()
        .insert("x-migration-side", "new".parse().unwrap());
    assert_eq!(served_by(&mut svc, over).await, "legacy");
    // A client's shadow marker never reaches the new side, shadow mode set up or not.
    let mut forged = get("/api/users/1", Some("u"));
    forged
        .headers_mut()
        .insert("x-shadow-request", "1".parse().unwrap());
    assert_eq!(served_by(&mut svc, forged).await, "new");
    assert!(!seen.lock().unwrap()[0].contains_key("x-shadow-request"));
    // Read-only legacy refuses writes on a shadowed route too.
    handle.set_legacy_read_only(true);
    let post = Request::post("/api/search").body(Body::default()).unwrap();
    let err = svc.ready().await.unwrap().call(post).await.unwrap_err();
    assert!(err.downcast_ref::<StranglerError>().unwrap().is_read_only());
}

#[test]
fn metrics_are_registered_when_built_and_published_by_the_report() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower_patterns_core::observe::StateHandle;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let off = Arc::new(AtomicBool::new(false));
            let calls = Arc::new(AtomicUsize::new(0));
            let layer = StranglerLayer::builder("metered")
                .key(user_key())
                .new_side(side("new", off.clone(), calls.clone()))
                .route(
                    Route::prefix("/api/users")
                        .named("users")
                        .ramp(Ramp::percentages([10, 100]).unwrap()),
                )
                .build()
                .unwrap();
            let counters = |snap: Vec<_>| {
                snap.into_iter()
                    .filter_map(|(key, _, _, value): (metrics_util::CompositeKey, _, _, DebugValue)| {
                        let k = key.key();
                        let labels: Vec<String> =
                            k.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
                        match value {
                            DebugValue::Counter(n) => {
                                Some((format!("{} {}", k.name(), labels.join(",")), n))
                            }
                            _ => None,
                        }
                    })
                    .collect::<HashMap<String, u64>>()
            };
            let at_build = counters(snapshotter.snapshot().into_vec());
            for name in [
                "tower_patterns_strangler_requests_total name=metered,route=users,side=new",
                "tower_patterns_strangler_requests_total name=metered,route=fallback,side=legacy",
                "tower_patterns_strangler_ramp_total name=metered,route=users,action=rollback",
                "tower_patterns_strangler_ramp_total name=metered,route=users,action=advance",
            ] {
                assert_eq!(at_build.get(name), Some(&0), "{name} in {at_build:?}");
            }
            let mut svc = layer.layer(side("legacy", off, calls));
            for _ in 0..3 {
                served_by(&mut svc, get("/elsewhere", Some("u"))).await;
            }
            layer_report(&svc);
            let after = counters(snapshotter.snapshot().into_vec());
            assert_eq!(
                after.get("tower_patterns_strangler_requests_total name=metered,route=fallback,side=legacy"),
                Some(&3)
            );
            fn layer_report<S>(svc: &tower_patterns_strangler::Strangler<S, impl Sized, HeaderKey>) {
                let _ = svc.handle().report();
            }
        })
    });
}

#[tokio::test]
async fn legacy_reservations_are_released_and_a_failed_new_side_fails_only_its_requests() {
    // Legacy behind a limit of one: a clone made ready whose request goes to the new side (or
    // is refused) must not keep legacy's only permit.
    let off = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let legacy = tower::limit::ConcurrencyLimit::new(side("legacy", off.clone(), calls.clone()), 1);
    let layer = StranglerLayer::builder("permits")
        .key(user_key())
        .new_side(side("new", off.clone(), calls.clone()))
        .route(Route::prefix("/moved").mode(Mode::New))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut a = tower_test::mock::Spawn::new(layer.layer(legacy));
    let mut b = a.clone();
    assert!(a.poll_ready().is_ready());
    let moved = a.call(get("/moved/1", Some("u")));
    assert_eq!(
        moved
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes(),
        "new"
    );
    assert!(b.poll_ready().is_ready(), "the permit went back");
    handle.set_legacy_read_only(true);
    let refused = b.call(Request::post("/x").body(Body::default()).unwrap());
    assert!(refused.await.is_err());
    assert!(
        a.poll_ready().is_ready(),
        "the permit went back after a refusal too"
    );

    // A new side whose readiness fails: its requests get the error, legacy's are served.
    let (new, mut new_handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    new_handle.send_error("the new side is down");
    let layer = StranglerLayer::builder("failed")
        .key(user_key())
        .new_side(new)
        .route(Route::prefix("/moved").mode(Mode::New))
        .build()
        .unwrap();
    let mut svc = layer.layer(side("legacy", off, calls));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(get("/moved/1", Some("u")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("down"), "{err}");
    assert_eq!(
        served_by(&mut svc, get("/other", Some("u"))).await,
        "legacy"
    );
}

#[tokio::test]
async fn a_fallback_on_the_new_side_keeps_pins_and_overrides() {
    let off = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = StranglerLayer::builder("new-fallback")
        .key(user_key())
        .new_side(side("new", off.clone(), calls.clone()))
        .route(Route::prefix("/legacy-only").mode(Mode::Legacy))
        .fallback(Mode::New)
        .override_header(HeaderName::from_static("x-migration-side"))
        .legacy_tenants(["slow-co"])
        .build()
        .unwrap();
    let mut svc = layer.layer(side("legacy", off, calls));
    assert_eq!(
        served_by(&mut svc, get("/anything", Some("u"))).await,
        "new"
    );
    let mut slow = get("/anything", Some("u"));
    slow.extensions_mut()
        .insert(TenantId::new("slow-co").unwrap());
    assert_eq!(
        served_by(&mut svc, slow).await,
        "legacy",
        "a legacy tenant stays"
    );
    let mut over = get("/anything", Some("u"));
    over.headers_mut()
        .insert("x-migration-side", "legacy".parse().unwrap());
    assert_eq!(served_by(&mut svc, over).await, "legacy");
}

/// The log lines written while `f` runs (a `tracing` subscriber on this thread only).
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let out = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || out.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn a_malformed_override_is_ignored_with_a_log_line() {
    let off = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = StranglerLayer::builder("logged")
        .key(user_key())
        .new_side(side("new", off.clone(), calls.clone()))
        .route(Route::prefix("/api/users").mode(Mode::Legacy))
        .override_header(HeaderName::from_static("x-migration-side"))
        .build()
        .unwrap();
    let mut svc = layer.layer(side("legacy", off, calls));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let text = logged(|| {
        rt.block_on(async {
            for _ in 0..3 {
                let mut req = get("/api/users/1", Some("u"));
                req.headers_mut()
                    .insert("x-migration-side", "sideways".parse().unwrap());
                assert_eq!(served_by(&mut svc, req).await, "legacy");
            }
        })
    });
    assert!(text.contains("malformed override header ignored"), "{text}");
    assert!(text.contains("sideways"), "{text}");
    assert_eq!(
        text.matches("malformed override").count(),
        1,
        "once a second: {text}"
    );
}
