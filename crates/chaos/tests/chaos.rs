//! The chaos layer as a user drives it: each fault under paused time, seeded sequences,
//! selection by header, tenant and closure, switching through the handle, readiness, metrics,
//! the HTTP mapping of its error, and its configuration errors.

use std::{
    error::Error,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn, timeout::TimeoutLayer};
use tower_patterns_chaos::{
    Answer, AnswerAsError, ChaosError, ChaosLayer, Fault, FaultKind, Header, Tenants,
};
use tower_patterns_core::{
    BoxError,
    http::classify_error,
    observe::{Health, StateHandle},
    tenant::TenantId,
};
use tower_test::{assert_request_eq, mock};

/// An HTTP service that counts the calls it starts and the ones it finishes, each taking
/// `took`.
#[derive(Clone)]
struct Upstream {
    started: Arc<AtomicU32>,
    finished: Arc<AtomicU32>,
    took: Duration,
}

impl Upstream {
    fn new(took: Duration) -> Self {
        Self {
            started: Arc::default(),
            finished: Arc::default(),
            took,
        }
    }

    fn started(&self) -> u32 {
        self.started.load(Ordering::SeqCst)
    }

    fn finished(&self) -> u32 {
        self.finished.load(Ordering::SeqCst)
    }
}

impl Service<Request<()>> for Upstream {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<String>, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let (started, finished, took) = (self.started.clone(), self.finished.clone(), self.took);
        Box::pin(async move {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(took).await;
            finished.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new("upstream".to_owned()))
        })
    }
}

fn layer(fault: Fault) -> ChaosLayer {
    ChaosLayer::builder("test")
        .seed(1)
        .fault(fault)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn latency_waits_before_the_inner_call_runs() {
    let upstream = Upstream::new(Duration::from_millis(10));
    let svc = layer(Fault::latency(Duration::from_millis(300))).layer(upstream.clone());
    let start = Instant::now();
    let fut = tokio::spawn(svc.oneshot(Request::new(())));
    tokio::time::sleep(Duration::from_millis(299)).await;
    assert_eq!(
        upstream.started(),
        0,
        "the inner future waits for the delay"
    );
    let res = fut.await.unwrap().unwrap();
    assert_eq!(res.into_body(), "upstream");
    assert_eq!(start.elapsed(), Duration::from_millis(310));
}

#[tokio::test(start_paused = true)]
async fn a_status_answers_without_calling_the_inner_service() {
    let upstream = Upstream::new(Duration::ZERO);
    let chaos = layer(Fault::status(StatusCode::BAD_GATEWAY));
    let res = chaos
        .layer(upstream.clone())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(res.body(), "");
    assert_eq!(upstream.started(), 0);
    assert_eq!(chaos.handle().injected(FaultKind::Status), 1);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_status_is_a_trailers_only_response() {
    let res = layer(Fault::grpc(14))
        .layer(Upstream::new(Duration::ZERO))
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-message"], "fault%20injected");
}

#[derive(Debug)]
struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection refused")
    }
}

impl Error for Refused {}

#[tokio::test(start_paused = true)]
async fn a_custom_error_keeps_its_type() {
    let upstream = Upstream::new(Duration::ZERO);
    let err = layer(Fault::error(|| Box::new(Refused)))
        .layer(upstream.clone())
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<Refused>().is_some(), "{err}");
    assert_eq!(upstream.started(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hang_lasts_until_the_timeout_above_it() {
    let upstream = Upstream::new(Duration::ZERO);
    let svc = TimeoutLayer::new(Duration::from_secs(2))
        .layer(layer(Fault::hang()).layer(upstream.clone()));
    let start = Instant::now();
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(upstream.started(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_abort_lets_the_work_happen_and_loses_the_answer() {
    let upstream = Upstream::new(Duration::from_millis(50));
    let start = Instant::now();
    let err = layer(Fault::abort())
        .layer(upstream.clone())
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    let chaos = err.downcast_ref::<ChaosError>().expect("a ChaosError");
    assert!(chaos.is_aborted());
    assert_eq!(chaos.answer(), None);
    assert_eq!((upstream.started(), upstream.finished()), (1, 1));
    assert_eq!(start.elapsed(), Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn a_timed_abort_cuts_the_call_short() {
    let upstream = Upstream::new(Duration::from_secs(1));
    let start = Instant::now();
    let err = layer(Fault::abort_after(Duration::from_millis(100)))
        .layer(upstream.clone())
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<ChaosError>().unwrap().is_aborted());
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (upstream.started(), upstream.finished()),
        (1, 0),
        "dropped mid-call"
    );

    // An answer sooner than the cut is thrown away too.
    let quick = Upstream::new(Duration::from_millis(10));
    let err = layer(Fault::abort_after(Duration::from_millis(100)))
        .layer(quick.clone())
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<ChaosError>().unwrap().is_aborted());
    assert_eq!(quick.finished(), 1);
}

/// The faults the next `n` calls get, one letter each ('.' for none).
async fn sequence(layer: &ChaosLayer, n: usize) -> String {
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, BoxError>(Response::new(String::new()))
    }));
    let mut seen = String::new();
    for _ in 0..n {
        let res = svc.clone().oneshot(Request::new(())).await;
        seen.push(match res {
            Ok(r) if r.status() == StatusCode::OK => '.',
            Ok(_) => 's',
            Err(_) => 'e',
        });
    }
    seen
}

fn mixed(seed: u64) -> ChaosLayer {
    ChaosLayer::builder("mixed")
        .seed(seed)
        .fault(Fault::status(StatusCode::SERVICE_UNAVAILABLE).rate(0.3))
        .fault(Fault::error(|| "boom".into()).rate(0.3))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn one_seed_gives_one_sequence_and_reseed_replays_it() {
    let a = sequence(&mixed(42), 64).await;
    assert_eq!(a, sequence(&mixed(42), 64).await);
    assert_ne!(a, sequence(&mixed(43), 64).await);
    assert!(a.contains('s') && a.contains('e') && a.contains('.'), "{a}");

    let layer = mixed(42);
    let first = sequence(&layer, 64).await;
    assert_ne!(first, sequence(&layer, 64).await, "the sequence goes on");
    layer.handle().reseed(42);
    assert_eq!(first, sequence(&layer, 64).await);
    assert_eq!(layer.handle().draws(), 64);

    // Without a seed the name chooses one: the same name repeats, another name differs.
    let named = |name: &str| {
        ChaosLayer::builder(name)
            .fault(Fault::status(StatusCode::BAD_GATEWAY).rate(0.5))
            .build()
            .unwrap()
    };
    assert_eq!(
        sequence(&named("a"), 64).await,
        sequence(&named("a"), 64).await
    );
    assert_ne!(
        sequence(&named("a"), 64).await,
        sequence(&named("b"), 64).await
    );
}

#[tokio::test(start_paused = true)]
async fn rates_hold_over_ten_thousand_calls() {
    let layer = mixed(7);
    let seen = sequence(&layer, 10_000).await;
    let share = |c: char| seen.chars().filter(|&x| x == c).count() as f64 / 10_000.0;
    assert!((share('s') - 0.3).abs() < 0.02, "{}", share('s'));
    assert!((share('e') - 0.3).abs() < 0.02, "{}", share('e'));
    let handle = layer.handle();
    assert_eq!(
        handle.injected(FaultKind::Status) + handle.injected(FaultKind::Error),
        seen.chars().filter(|&c| c != '.').count() as u64
    );
}

#[tokio::test(start_paused = true)]
async fn only_selected_requests_draw() {
    let by_header = ChaosLayer::builder("header")
        .fault(Fault::status(StatusCode::IM_A_TEAPOT))
        .select(Header::equals(
            HeaderName::from_static("x-chaos"),
            HeaderValue::from_static("on"),
        ))
        .build()
        .unwrap();
    let svc = by_header.layer(Upstream::new(Duration::ZERO));
    let with = |v: &str| Request::builder().header("x-chaos", v).body(()).unwrap();
    assert_eq!(svc.clone().oneshot(with("on")).await.unwrap().status(), 418);
    assert_eq!(
        svc.clone().oneshot(with("off")).await.unwrap().status(),
        200
    );
    assert_eq!(
        svc.clone()
            .oneshot(Request::new(()))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        by_header.handle().draws(),
        1,
        "unselected calls do not draw"
    );

    let by_tenant = ChaosLayer::builder("tenant")
        .fault(Fault::status(StatusCode::IM_A_TEAPOT))
        .select(Tenants::new([TenantId::new("globex").unwrap()]))
        .build()
        .unwrap();
    let svc = by_tenant.layer(Upstream::new(Duration::ZERO));
    let of = |t: &str| {
        let mut req = Request::new(());
        req.extensions_mut().insert(TenantId::new(t).unwrap());
        req
    };
    assert_eq!(
        svc.clone().oneshot(of("globex")).await.unwrap().status(),
        418
    );
    assert_eq!(svc.clone().oneshot(of("acme")).await.unwrap().status(), 200);
    assert_eq!(
        svc.clone()
            .oneshot(Request::new(()))
            .await
            .unwrap()
            .status(),
        200
    );

    let by_fn = ChaosLayer::builder("closure")
        .fault(Fault::error(|| "odd".into()))
        .select(|n: &u32| n % 2 == 1)
        .answer_with(AnswerAsError)
        .build()
        .unwrap();
    let svc = by_fn.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), 2);
    assert_eq!(svc.clone().oneshot(3).await.unwrap_err().to_string(), "odd");
}

#[tokio::test(start_paused = true)]
async fn the_handle_switches_faults_at_runtime() {
    let layer = ChaosLayer::builder("switch").build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Upstream::new(Duration::ZERO));
    let status = |svc: &tower_patterns_chaos::Chaos<Upstream, _, _>| {
        let svc = svc.clone();
        async move { svc.oneshot(Request::new(())).await.unwrap().status() }
    };
    assert_eq!(status(&svc).await, 200);
    assert_eq!(
        (handle.health(), handle.report().state),
        (Health::Ready, "off")
    );
    assert_eq!((handle.pattern(), handle.name()), ("chaos", "switch"));
    assert_eq!(handle.report().name, "switch");

    handle
        .set([Fault::status(StatusCode::BAD_GATEWAY)])
        .unwrap();
    assert_eq!(status(&svc).await, 502);
    let report = handle.report();
    assert_eq!((report.health, report.state), (Health::Degraded, "on"));
    assert_eq!(report.value("rate"), Some(1.0));
    assert_eq!(report.value("injected_status"), Some(1.0));

    handle.disable();
    assert!(!handle.is_enabled() && !handle.is_active());
    assert_eq!(status(&svc).await, 200);
    assert_eq!(handle.report().value("rate"), Some(0.0));
    handle.enable();
    assert_eq!(status(&svc).await, 502);

    // A bad plan changes nothing.
    assert_eq!(
        handle
            .set([Fault::hang().rate(0.7), Fault::abort().rate(0.7)])
            .unwrap_err()
            .field(),
        "faults"
    );
    assert_eq!(status(&svc).await, 502);

    handle.clear();
    assert!(handle.is_enabled() && !handle.is_active());
    assert_eq!(status(&svc).await, 200);
    assert!(handle.faults().is_empty());
    assert_eq!(svc.handle().injected(FaultKind::Status), 3);

    // Built switched off: faults wait for `enable`.
    let off = ChaosLayer::builder("off")
        .fault(Fault::status(StatusCode::BAD_GATEWAY))
        .enabled(false)
        .build()
        .unwrap();
    let svc = off.layer(Upstream::new(Duration::ZERO));
    assert_eq!(status(&svc).await, 200);
    off.handle().enable();
    assert_eq!(status(&svc).await, 502);
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services() {
    let (inner, mut mock) = mock::pair::<&'static str, &'static str>();
    let layer = ChaosLayer::builder("ready")
        .fault(Fault::status(StatusCode::BAD_GATEWAY).rate(0.0))
        .answer_with(|_: Answer| "answered")
        .build()
        .unwrap();
    let mut svc = tower_test::mock::Spawn::new(layer.layer(inner));
    mock.allow(0);
    assert!(
        svc.poll_ready().is_pending(),
        "pending while the inner service is"
    );
    mock.allow(1);
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call("hello");
    assert_request_eq!(mock, "hello").send_response("world");
    assert_eq!(fut.await.unwrap(), "world");

    // A fault answers from `call`; it never touches readiness.
    layer
        .handle()
        .set([Fault::status(StatusCode::BAD_GATEWAY)])
        .unwrap();
    mock.allow(1);
    assert!(svc.poll_ready().is_ready());
    assert_eq!(svc.call("again").await.unwrap(), "answered");
}

#[tokio::test(start_paused = true)]
async fn its_errors_map_to_fixed_http_answers() {
    let err: BoxError = layer(Fault::abort())
        .layer(Upstream::new(Duration::ZERO))
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    let mapping = classify_error(&*err);
    assert_eq!(
        (mapping.status, mapping.message),
        (StatusCode::BAD_GATEWAY, "fault injected")
    );

    let as_error = |fault: Fault| {
        ChaosLayer::builder("as-error")
            .fault(fault)
            .answer_with(AnswerAsError)
            .build()
            .unwrap()
            .layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }))
    };
    let err = as_error(Fault::status(StatusCode::TOO_MANY_REQUESTS))
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<ChaosError>().unwrap().answer(),
        Some(Answer::Http(StatusCode::TOO_MANY_REQUESTS))
    );
    assert_eq!(classify_error(&*err).status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!err.downcast_ref::<ChaosError>().unwrap().is_aborted());
    assert_eq!(err.to_string(), "fault injected: status 429");
    let err = as_error(Fault::grpc(14)).oneshot(1).await.unwrap_err();
    assert_eq!(
        classify_error(&*err).status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(err.to_string(), "fault injected: gRPC status 14");
}

#[tokio::test(start_paused = true)]
async fn metrics_show_at_zero_and_count_each_kind() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        ChaosLayer::builder("metered")
            .fault(Fault::status(StatusCode::BAD_GATEWAY))
            .build()
            .unwrap()
    });
    let read = || {
        let mut seen: Vec<(String, String, f64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let k = key.key();
                let label = |name: &str| {
                    k.labels()
                        .find(|l| l.key() == name)
                        .map_or_else(String::new, |l| l.value().to_owned())
                };
                assert_eq!(label("name"), "metered");
                let value = match value {
                    DebugValue::Counter(n) => n as f64,
                    DebugValue::Gauge(g) => g.into_inner(),
                    DebugValue::Histogram(h) => h.len() as f64,
                };
                (k.name().to_owned(), label("kind"), value)
            })
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        seen
    };
    let injected = |kind: &str, value: f64| {
        (
            "tower_patterns_chaos_injected_total".to_owned(),
            kind.to_owned(),
            value,
        )
    };
    let active = |value: f64| {
        (
            "tower_patterns_chaos_active".to_owned(),
            String::new(),
            value,
        )
    };
    assert_eq!(
        read(),
        vec![
            active(1.0),
            injected("abort", 0.0),
            injected("error", 0.0),
            injected("hang", 0.0),
            injected("latency", 0.0),
            injected("status", 0.0),
        ]
    );
    let svc = layer.layer(Upstream::new(Duration::ZERO));
    for _ in 0..3 {
        svc.clone().oneshot(Request::new(())).await.unwrap();
    }
    layer.handle().clear();
    svc.clone().oneshot(Request::new(())).await.unwrap();
    let seen = read();
    assert!(seen.contains(&injected("status", 3.0)), "{seen:?}");
    assert!(seen.contains(&active(0.0)), "{seen:?}");
}

#[test]
fn configuration_errors_name_the_setting() {
    let field = |b: tower_patterns_chaos::ChaosBuilder| b.build().unwrap_err().field();
    assert_eq!(field(ChaosLayer::builder("has space")), "name");
    assert_eq!(
        field(ChaosLayer::builder("r").fault(Fault::hang().rate(1.01))),
        "fault.rate"
    );
    assert_eq!(
        field(ChaosLayer::builder("g").fault(Fault::grpc(0))),
        "fault.grpc"
    );
    assert_eq!(
        field(
            ChaosLayer::builder("sum")
                .fault(Fault::hang().rate(0.5))
                .fault(Fault::abort().rate(0.51))
        ),
        "faults"
    );
}

/// Each kind of response future says which it is.
fn debug_names_each_future<S>(
    chaos: &mut tower_patterns_chaos::Chaos<S, tower_patterns_chaos::Always, AnswerAsError>,
) where
    S: Service<(), Response = (), Error = BoxError>,
{
    let handle = chaos.handle();
    let cases = [
        (None, "pass"),
        (Some(Fault::latency(Duration::from_secs(1))), "delayed"),
        (Some(Fault::error(|| "x".into())), "ready"),
        (Some(Fault::hang()), "hang"),
        (Some(Fault::abort()), "abort"),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    for (fault, shown) in cases {
        handle.set(fault).unwrap();
        let fut = chaos.call(());
        assert_eq!(format!("{fut:?}"), format!("ResponseFuture({shown:?})"));
    }
}

#[test]
fn debug_output_names_the_layer_and_its_faults() {
    let layer = ChaosLayer::builder("shown")
        .fault(Fault::latency(Duration::from_millis(5)).rate(0.5))
        .fault(Fault::error(|| "x".into()).rate(0.1))
        .answer_with(AnswerAsError)
        .build()
        .unwrap();
    let shown = format!("{layer:?}");
    assert!(
        shown.contains("\"shown\"") && shown.contains("active: true"),
        "{shown}"
    );
    let handle = format!("{:?}", layer.handle());
    assert!(
        handle.contains("kind: Latency, delay: 5ms, rate: 0.5")
            && handle.contains("kind: Error, rate: 0.1"),
        "{handle}"
    );
    assert_eq!(
        format!("{:?}", Fault::abort_after(Duration::from_secs(1))),
        "Fault { kind: Abort, after: Some(1s), rate: 1.0 }"
    );
    assert_eq!(
        format!("{:?}", Fault::grpc(14)),
        "Fault { kind: Status, answer: Grpc(14), rate: 1.0 }"
    );
    let mut chaos = layer.layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
    debug_names_each_future(&mut chaos);
    let svc = format!("{:?}", layer.layer(7u8));
    assert!(svc.contains("Chaos") && svc.contains("inner: 7"), "{svc}");
    assert_eq!(FaultKind::Hang.to_string(), "hang");
}
