//! The tenant layer's handle (a core `StateHandle`), its metrics, and the HTTP mapping of the
//! store's error.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http::{Request, Response, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use tower_patterns_core::{
    BoxError,
    http::{ErrorResponseLayer, classify_error},
    observe::{Health, StateHandle},
    tenant::{TenantErrorKind, TenantId},
};
use tower_patterns_tenant::{
    ApiKeyHash, StoreError, TenancyHandle, TenancyLayer, TenantRecord, TenantStatus, TenantStore,
};

/// `acme` (active) and `initech` (suspended); fails while `down`.
#[derive(Clone, Default)]
struct Flaky {
    down: Arc<AtomicBool>,
}

impl TenantStore for Flaky {
    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError("connection refused".into()));
        }
        let status = match id.as_str() {
            "acme" => TenantStatus::Active,
            "initech" => TenantStatus::Suspended,
            _ => return Ok(None),
        };
        Ok(Some(TenantRecord {
            id: id.clone(),
            plan: "gold".into(),
            status,
        }))
    }

    async fn tenant_by_api_key(&self, _: &ApiKeyHash) -> Result<Option<TenantId>, StoreError> {
        Ok(None)
    }
}

type Svc = BoxCloneService<Request<()>, Response<String>, Infallible>;

fn serve(layer: &TenancyLayer<Flaky>) -> Svc {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(ErrorResponseLayer::new())
            .layer(layer.clone())
            .service(service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            })),
    )
}

async fn status(svc: &Svc, tenant: Option<&str>) -> StatusCode {
    let mut req = Request::builder();
    if let Some(t) = tenant {
        req = req.header("x-tenant-id", t);
    }
    svc.clone()
        .oneshot(req.body(()).unwrap())
        .await
        .unwrap()
        .status()
}

/// The counters of a snapshot named `metric`, as `(labels, value)`, sorted. (A snapshot
/// takes the counts since the previous one.)
fn counters(snapshot: &[(String, String, u64)], metric: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = snapshot
        .iter()
        .filter(|(name, ..)| name == metric)
        .map(|(_, labels, n)| (labels.clone(), *n))
        .collect();
    out.sort();
    out
}

/// The refusal counters of a snapshot that counted something.
fn refused(snapshot: &[(String, String, u64)]) -> Vec<(String, u64)> {
    counters(snapshot, "tower_patterns_tenant_refusals_total")
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Every counter: `(name, labels, value)`.
fn snapshot(snapshotter: &Snapshotter) -> Vec<(String, String, u64)> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let DebugValue::Counter(n) = value else {
                return None;
            };
            let labels = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect::<Vec<_>>()
                .join(",");
            Some((key.key().name().to_owned(), labels, n))
        })
        .collect()
}

fn built(store: Flaky) -> (TenancyLayer<Flaky>, TenancyHandle<Flaky>) {
    let layer = TenancyLayer::builder("shop")
        .store(store)
        .header("x-tenant-id")
        .subdomain("shop.example")
        .api_key("x-api-key")
        .allow_unverified()
        .build()
        .unwrap();
    let handle = layer.handle();
    (layer, handle)
}

#[tokio::test]
async fn refusals_are_counted_by_kind_and_lookups_only_when_the_store_is_asked() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (layer, handle) = metrics::with_local_recorder(&recorder, || built(Flaky::default()));
    let svc = serve(&layer);

    // Registered when built, all at zero.
    let registered = snapshot(&snapshotter);
    let refusals = counters(&registered, "tower_patterns_tenant_refusals_total");
    assert_eq!(refusals.len(), 8);
    assert!(refusals.iter().all(|(_, n)| *n == 0));
    assert!(refusals.contains(&("name=shop,kind=unknown".to_owned(), 0)));
    assert_eq!(
        counters(&registered, "tower_patterns_tenant_lookups_total"),
        [("name=shop".to_owned(), 0)]
    );

    // acme from the store once, then from the cache: one lookup, no refusal.
    for _ in 0..3 {
        assert_eq!(status(&svc, Some("acme")).await, StatusCode::OK);
    }
    assert_eq!(handle.lookups(), 1);
    assert_eq!(handle.refusals(), 0);

    // Unknown (looked up, then cached as unknown), suspended, missing, malformed.
    assert_eq!(status(&svc, Some("umbrella")).await, StatusCode::FORBIDDEN);
    assert_eq!(status(&svc, Some("umbrella")).await, StatusCode::FORBIDDEN);
    assert_eq!(status(&svc, Some("initech")).await, StatusCode::FORBIDDEN);
    assert_eq!(status(&svc, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&svc, Some("a b")).await, StatusCode::BAD_REQUEST);
    assert_eq!(handle.lookups(), 3, "umbrella once, initech once");
    assert_eq!(handle.refusals(), 5);
    assert_eq!(handle.refusals_of(TenantErrorKind::Unknown), 2);
    assert_eq!(handle.refusals_of(TenantErrorKind::Suspended), 1);
    assert_eq!(handle.refusals_of(TenantErrorKind::MissingCredentials), 1);
    assert_eq!(handle.refusals_of(TenantErrorKind::Malformed), 1);
    let counts = snapshot(&snapshotter);
    let counted = refused(&counts);
    assert_eq!(
        counted,
        [
            ("name=shop,kind=malformed".to_owned(), 1),
            ("name=shop,kind=missing_credentials".to_owned(), 1),
            ("name=shop,kind=suspended".to_owned(), 1),
            ("name=shop,kind=unknown".to_owned(), 2),
        ]
    );
    assert_eq!(
        counters(&counts, "tower_patterns_tenant_lookups_total"),
        [("name=shop".to_owned(), 3)]
    );

    let report = handle.report();
    assert_eq!((report.pattern, &*report.name), ("tenant", "shop"));
    assert_eq!((report.health, report.state), (Health::Ready, "serving"));
    for (what, value) in [
        ("cached_tenants", 2.0),
        ("cached_unknown", 1.0),
        ("cached_keys", 0.0),
        ("lookups", 3.0),
        ("store_failures", 0.0),
        ("refusals", 5.0),
        ("refused_unknown", 2.0),
        ("refused_suspended", 1.0),
        ("refused_conflict", 0.0),
    ] {
        assert_eq!(report.value(what), Some(value), "{what}");
    }
    assert_eq!(report.value("refused_other"), None);
    assert!(
        report
            .to_json()
            .starts_with(r#"{"pattern":"tenant","name":"shop","health":"ready","state":"serving","values":{"cached_tenants":2.0,"#),
        "{}",
        report.to_json()
    );
    // Sources that disagree, and an API key no tenant owns (looked up once, then cached).
    let conflict = Request::builder()
        .header("host", "globex.shop.example")
        .header("x-tenant-id", "acme")
        .body(())
        .unwrap();
    let res = svc.clone().oneshot(conflict).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    for _ in 0..2 {
        let req = Request::builder()
            .header("x-api-key", "sk_nobody")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(handle.lookups(), 4);
    assert_eq!(handle.refusals_of(TenantErrorKind::Conflict), 1);
    assert_eq!(handle.refusals_of(TenantErrorKind::InvalidCredentials), 2);
    assert_eq!(handle.refusals(), 8);
    let counts = snapshot(&snapshotter);
    let counted = refused(&counts);
    assert_eq!(
        counted,
        [
            ("name=shop,kind=conflict".to_owned(), 1),
            ("name=shop,kind=invalid_credentials".to_owned(), 2),
        ]
    );
    let report = handle.report();
    assert_eq!(report.value("refused_conflict"), Some(1.0));
    assert_eq!(report.value("refused_invalid_credentials"), Some(2.0));
    assert_eq!(report.value("cached_unknown_keys"), Some(1.0));
    assert_eq!(report.value("refused_other"), None);

    // The service reaches the same handle.
    let inner = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    assert_eq!(inner.handle().refusals(), 8);
    assert!(format!("{handle:?}").contains("refusals: 8"));
}

#[tokio::test]
async fn a_failing_store_degrades_the_handle_until_it_answers_again() {
    let store = Flaky::default();
    let (layer, handle) = built(store.clone());
    let svc = serve(&layer);
    let dyn_handle: Box<dyn StateHandle> = Box::new(handle.clone());
    assert_eq!(dyn_handle.health(), Health::Ready);

    store.down.store(true, Ordering::SeqCst);
    assert_eq!(
        status(&svc, Some("acme")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(dyn_handle.health(), Health::Degraded);
    let report = dyn_handle.report();
    assert_eq!(report.state, "store_failing");
    assert_eq!(report.value("store_failures"), Some(1.0));
    assert_eq!(report.value("refused_unavailable"), Some(1.0));
    assert_eq!(handle.registry().store_failures(), 1);
    assert!(handle.registry().store_failing());

    store.down.store(false, Ordering::SeqCst);
    assert_eq!(status(&svc, Some("acme")).await, StatusCode::OK);
    assert_eq!(dyn_handle.health(), Health::Ready);
    assert_eq!(dyn_handle.report().state, "serving");
    assert_eq!(handle.registry().store_failures(), 1);
}

#[test]
fn a_store_error_maps_to_503_with_a_fixed_phrase_once_a_layer_is_built() {
    let _ = built(Flaky::default());
    let err: BoxError = StoreError("password authentication failed for db-7".into()).into();
    let mapping = classify_error(&*err);
    assert_eq!(mapping.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mapping.message, "tenant registry unavailable");
}
