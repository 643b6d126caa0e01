//! The RFC 9111 HTTP cache against a scripted origin.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::advance;
use tower::{Layer, Service, ServiceExt, service_fn, util::BoxCloneService};
use tower_patterns_cache::{
    LoadError,
    http::{HttpCacheBody, HttpCacheLayer, future::ResponseFuture},
};
use tower_patterns_core::{BoxError, tenant::TenantId};

/// An origin whose answers a test scripts: each call records the request headers and runs
/// `reply`.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

type Svc = BoxCloneService<Request<()>, Response<HttpCacheBody<Full<Bytes>>>, BoxError>;

type Reply = Arc<dyn Fn(&Request<()>, usize) -> Response<Full<Bytes>> + Send + Sync>;

fn origin(
    reply: impl Fn(&Request<()>, usize) -> Response<Full<Bytes>> + Send + Sync + 'static,
) -> (Origin, Svc) {
    let o = Origin {
        calls: Arc::new(AtomicUsize::new(0)),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let reply: Reply = Arc::new(reply);
    let o2 = o.clone();
    let svc = service_fn(move |req: Request<()>| {
        let n = o2.calls.fetch_add(1, Ordering::SeqCst) + 1;
        o2.seen.lock().unwrap().push(req.headers().clone());
        let res = reply(&req, n);
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Infallible>(res)
        }
    });
    let layer = HttpCacheLayer::builder("t").build().unwrap();
    (o, BoxCloneService::new(layer.layer(svc)))
}

fn res(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

fn get(path: &str) -> http::request::Builder {
    Request::get(format!("http://shop.test{path}"))
}

async fn send(svc: &Svc, req: Request<()>) -> (StatusCode, HeaderMap, String) {
    let res = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn x(h: &HeaderMap) -> &str {
    h.get("x-cache").map_or("", |v| v.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn max_age_hits_count_age_and_expire() {
    let (o, svc) = origin(|_, n| {
        res(
            200,
            &[("cache-control", "max-age=10"), ("age", "2")],
            &format!("v{n}"),
        )
    });
    let (_, h, body) = send(&svc, get("/a").body(()).unwrap()).await;
    assert_eq!((x(&h), body.as_str()), ("MISS", "v1"));
    advance(Duration::from_secs(3)).await;
    let (_, h, body) = send(&svc, get("/a").body(()).unwrap()).await;
    assert_eq!((x(&h), body.as_str()), ("HIT", "v1"));
    assert_eq!(h["age"], "5", "the origin's 2 s plus 3 s here");
    advance(Duration::from_secs(6)).await; // age 11 > 10
    let (_, h, body) = send(&svc, get("/a").body(()).unwrap()).await;
    assert_eq!((x(&h), body.as_str()), ("MISS", "v2"));
    assert_eq!(o.calls.load(Ordering::SeqCst), 2);
    // HEAD is answered from the stored GET, without a body.
    let (s, h, body) = send(&svc, Request::head("http://shop.test/a").body(()).unwrap()).await;
    assert_eq!((s, x(&h), body.as_str()), (StatusCode::OK, "HIT", ""));
    // A HEAD once the entry is stale goes to the origin and does not replace the entry.
    advance(Duration::from_secs(11)).await;
    let (_, h, _) = send(&svc, Request::head("http://shop.test/a").body(()).unwrap()).await;
    assert_eq!(x(&h), "MISS");
    let (_, _, body) = send(&svc, get("/a").body(()).unwrap()).await;
    assert!(body.starts_with('v'), "the GET still has a body: {body:?}");
}

#[tokio::test(start_paused = true)]
async fn vary_is_enforced() {
    let (o, svc) = origin(|req, _| {
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("en", |v| v.to_str().unwrap())
            .to_owned();
        res(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            &lang,
        )
    });
    let ask = |lang: &str| get("/p").header("accept-language", lang).body(()).unwrap();
    assert_eq!(send(&svc, ask("en")).await.2, "en");
    assert_eq!(send(&svc, ask("fr")).await.2, "fr");
    let (_, h, body) = send(&svc, ask("en")).await;
    assert_eq!((x(&h), body.as_str()), ("HIT", "en"));
    let (_, h, body) = send(&svc, ask("fr")).await;
    assert_eq!((x(&h), body.as_str()), ("HIT", "fr"));
    let (_, h, _) = send(&svc, get("/p").body(()).unwrap()).await;
    assert_eq!(x(&h), "MISS", "no Accept-Language is a variant of its own");
    assert_eq!(o.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn what_must_not_be_stored_is_not() {
    for headers in [
        &[("cache-control", "no-store, max-age=60")][..],
        &[("cache-control", "private, max-age=60")],
        &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
        &[("cache-control", "max-age=60"), ("vary", "*")],
        &[],
    ] {
        let h: Vec<(String, String)> = headers
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let (o, svc) = origin(move |_, _| {
            let pairs: Vec<(&str, &str)> =
                h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            res(200, &pairs, "x")
        });
        send(&svc, get("/n").body(()).unwrap()).await;
        let (_, h, _) = send(&svc, get("/n").body(()).unwrap()).await;
        assert_eq!(x(&h), "MISS", "{headers:?}");
        assert_eq!(o.calls.load(Ordering::SeqCst), 2, "{headers:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn authorized_requests_share_only_public_responses() {
    let (o, svc) = origin(|_, n| {
        res(
            200,
            &[("cache-control", "max-age=60")],
            &format!("secret {n}"),
        )
    });
    let authed = || {
        get("/me")
            .header("authorization", "Bearer a")
            .body(())
            .unwrap()
    };
    send(&svc, authed()).await;
    let (_, h, body) = send(&svc, authed()).await;
    assert_eq!((x(&h), body.as_str()), ("MISS", "secret 2"));
    // Stored from an anonymous request, not served to an authorized one either.
    send(&svc, get("/me").body(()).unwrap()).await;
    let (_, h, _) = send(&svc, authed()).await;
    assert_eq!(x(&h), "MISS");
    assert_eq!(o.calls.load(Ordering::SeqCst), 4);

    let (o, svc) = origin(|_, n| {
        res(
            200,
            &[("cache-control", "public, max-age=60")],
            &format!("public {n}"),
        )
    });
    send(
        &svc,
        get("/doc")
            .header("authorization", "Bearer a")
            .body(())
            .unwrap(),
    )
    .await;
    let (_, h, body) = send(
        &svc,
        get("/doc")
            .header("authorization", "Bearer b")
            .body(())
            .unwrap(),
    )
    .await;
    assert_eq!((x(&h), body.as_str()), ("HIT", "public 1"));
    assert_eq!(o.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn etag_revalidation_and_conditional_requests() {
    let (o, svc) = origin(|req, _| {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            return res(
                304,
                &[("cache-control", "max-age=5"), ("etag", "\"v1\"")],
                "",
            );
        }
        res(
            200,
            &[("cache-control", "max-age=5"), ("etag", "\"v1\"")],
            "body v1",
        )
    });
    send(&svc, get("/e").body(()).unwrap()).await;
    // The client's own validator matches a fresh entry: 304 from the cache.
    let (s, h, body) = send(
        &svc,
        get("/e")
            .header("if-none-match", "W/\"v1\"")
            .body(())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, x(&h), body.as_str()),
        (StatusCode::NOT_MODIFIED, "HIT", "")
    );
    assert_eq!(o.calls.load(Ordering::SeqCst), 1);
    // Stale: the cache revalidates with If-None-Match; the 304 refreshes the entry.
    advance(Duration::from_secs(6)).await;
    let (s, h, body) = send(&svc, get("/e").body(()).unwrap()).await;
    assert_eq!(
        (s, x(&h), body.as_str()),
        (StatusCode::OK, "HIT", "body v1")
    );
    assert_eq!(o.calls.load(Ordering::SeqCst), 2);
    assert_eq!(o.seen.lock().unwrap()[1]["if-none-match"], "\"v1\"");
    let (_, h, _) = send(&svc, get("/e").body(()).unwrap()).await;
    assert_eq!(x(&h), "HIT");
    assert_eq!(
        o.calls.load(Ordering::SeqCst),
        2,
        "fresh again after the 304"
    );
    // Request no-cache: revalidate even though fresh.
    send(
        &svc,
        get("/e")
            .header("cache-control", "no-cache")
            .body(())
            .unwrap(),
    )
    .await;
    assert_eq!(o.calls.load(Ordering::SeqCst), 3);
    // A HEAD on the stale entry goes to the origin and leaves the stored GET (and its body) be.
    advance(Duration::from_secs(6)).await;
    let (_, h, _) = send(&svc, Request::head("http://shop.test/e").body(()).unwrap()).await;
    assert_eq!(x(&h), "MISS");
    let (s, _, body) = send(&svc, get("/e").body(()).unwrap()).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "body v1"));
}

#[tokio::test(start_paused = true)]
async fn unsafe_methods_invalidate_and_tenants_are_apart() {
    let (o, svc) = origin(|req, n| {
        if req.method() == Method::POST {
            return res(201, &[], "");
        }
        res(200, &[("cache-control", "max-age=60")], &format!("v{n}"))
    });
    let tenant = |t: &str| {
        let mut r = get("/cart").body(()).unwrap();
        r.extensions_mut().insert(TenantId::new(t).unwrap());
        r
    };
    assert_eq!(send(&svc, tenant("a")).await.2, "v1");
    assert_eq!(send(&svc, tenant("b")).await.2, "v2");
    assert_eq!(send(&svc, tenant("a")).await.2, "v1");
    let mut post = Request::post("http://shop.test/cart").body(()).unwrap();
    post.extensions_mut().insert(TenantId::new("a").unwrap());
    send(&svc, post).await;
    assert_eq!(
        send(&svc, tenant("a")).await.2,
        "v4",
        "a's entry was dropped"
    );
    assert_eq!(send(&svc, tenant("b")).await.2, "v2", "b's was not");
    assert_eq!(o.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_and_stale_if_error() {
    let (o, svc) = origin(|_, n| {
        if n >= 3 {
            return res(503, &[], "down");
        }
        res(
            200,
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=5, stale-if-error=60",
            )],
            &format!("v{n}"),
        )
    });
    send(&svc, get("/s").body(()).unwrap()).await;
    advance(Duration::from_secs(2)).await;
    let (_, h, body) = send(&svc, get("/s").body(()).unwrap()).await;
    assert_eq!((x(&h), body.as_str()), ("STALE", "v1"));
    tokio::time::sleep(Duration::from_millis(50)).await; // the background refresh lands
    let (_, h, body) = send(&svc, get("/s").body(()).unwrap()).await;
    assert_eq!((x(&h), body.as_str()), ("HIT", "v2"));
    // Past stale-while-revalidate, the origin fails: stale-if-error serves v2.
    advance(Duration::from_secs(10)).await;
    let (s, h, body) = send(&svc, get("/s").body(()).unwrap()).await;
    assert_eq!((s, x(&h), body.as_str()), (StatusCode::OK, "STALE", "v2"));
    // Past stale-if-error: the origin's answer.
    advance(Duration::from_secs(60)).await;
    let (s, _, _) = send(&svc, get("/s").body(()).unwrap()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(o.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_share_one_origin_request() {
    let (o, svc) = origin(|_, n| res(200, &[("cache-control", "max-age=60")], &format!("v{n}")));
    let all: Vec<_> = (0..100)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/c").body(()).unwrap())))
        .collect();
    for t in all {
        let res = t.await.unwrap().unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "v1");
    }
    assert_eq!(o.calls.load(Ordering::SeqCst), 1);
}

/// The cache's answer in these tests.
type Answer = Response<HttpCacheBody<Full<Bytes>>>;

/// An origin that counts its calls and answers after 10 ms with a response stored for 60 s,
/// and the layer in front of it (not boxed: the tests look at its futures and its stats).
fn counted_origin(
    calls: Arc<AtomicUsize>,
) -> (
    HttpCacheLayer,
    impl Service<Request<()>, Response = Answer, Error = BoxError, Future = ResponseFuture<Full<Bytes>>>
    + Clone,
) {
    let svc = service_fn(move |_: Request<()>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Infallible>(res(
                200,
                &[("cache-control", "max-age=60")],
                &format!("v{n}"),
            ))
        }
    });
    let layer = HttpCacheLayer::builder("t").build().unwrap();
    (layer.clone(), layer.layer(svc))
}

#[tokio::test(start_paused = true)]
async fn a_dropped_leader_hands_its_origin_request_to_the_waiters() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (layer, svc) = counted_origin(calls.clone());
    let leader = tokio::spawn(svc.clone().oneshot(get("/l").body(()).unwrap()));
    tokio::task::yield_now().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the leader's origin request"
    );
    let waiters: Vec<_> = (0..1_000)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/l").body(()).unwrap())))
        .collect();
    // The scheduler runs some 60 tasks between two turns of this one.
    for _ in 0..1_000 {
        if layer.stats().coalesced == 1_000 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        layer.stats().coalesced,
        1_000,
        "every waiter joined the flight"
    );
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    for w in waiters {
        let res = w.await.unwrap().unwrap();
        assert_eq!(x(res.headers()), "HIT");
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "v1");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no further origin request: the leader's went on without it"
    );
    let stats = layer.stats();
    assert_eq!((stats.misses, stats.coalesced), (1, 1_000));
    assert_eq!(
        layer.loads_in_flight(),
        0,
        "a completed flight leaves the map"
    );
    // Stored: the next request is a hit.
    let res = svc.oneshot(get("/l").body(()).unwrap()).await.unwrap();
    assert_eq!(x(res.headers()), "HIT");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn hits_are_answered_by_a_ready_future_not_a_boxed_one() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (_, mut svc) = counted_origin(calls.clone());
    let miss = svc.call(get("/r").body(()).unwrap());
    assert_eq!(format!("{miss:?}"), "ResponseFuture::Origin");
    assert_eq!(x(miss.await.unwrap().headers()), "MISS");
    let mut hit = svc.call(get("/r").body(()).unwrap());
    assert_eq!(format!("{hit:?}"), "ResponseFuture::Stored");
    // Ready at the first poll, with no waker to be woken.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let std::task::Poll::Ready(res) = std::pin::Pin::new(&mut hit).poll(&mut cx) else {
        panic!("a hit is ready at once");
    };
    let res = res.unwrap();
    assert_eq!(x(res.headers()), "HIT");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "v1");
    let again = std::pin::Pin::new(&mut hit).poll(&mut cx);
    assert!(
        matches!(again, std::task::Poll::Ready(Err(_))),
        "polled after completion: an error, not a panic"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Spawns `reqs` together, the first alone first so that it starts the origin request.
async fn together(svc: &Svc, reqs: Vec<Request<()>>) -> Vec<Result<Answer, BoxError>> {
    let mut reqs = reqs.into_iter();
    let mut tasks = vec![tokio::spawn(svc.clone().oneshot(reqs.next().unwrap()))];
    tokio::task::yield_now().await;
    tasks.extend(reqs.map(|r| tokio::spawn(svc.clone().oneshot(r))));
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn body_of(res: Answer) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn waiters_fetch_for_themselves_what_the_leader_could_not_share() {
    // Not stored: each waiter makes its own request.
    let (o, svc) = origin(|_, n| res(200, &[("cache-control", "no-store")], &format!("v{n}")));
    let reqs = (0..3).map(|_| get("/n").body(()).unwrap()).collect();
    let mut bodies = Vec::new();
    for r in together(&svc, reqs).await {
        let r = r.unwrap();
        assert_eq!(x(r.headers()), "MISS");
        bodies.push(body_of(r).await);
    }
    bodies.sort();
    assert_eq!(bodies, ["v1", "v2", "v3"]);
    assert_eq!(o.calls.load(Ordering::SeqCst), 3);

    // Stored for other Vary values: the waiter that matches shares it, the other fetches.
    let (o, svc) = origin(|req, n| {
        let lang = req.headers()["accept-language"].to_str().unwrap();
        res(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
            &format!("{lang} v{n}"),
        )
    });
    let lang = |l: &str| get("/v").header("accept-language", l).body(()).unwrap();
    let got = together(&svc, vec![lang("en"), lang("en"), lang("fr")]).await;
    let mut answers = Vec::new();
    for r in got {
        let r = r.unwrap();
        let verdict = x(r.headers()).to_owned();
        answers.push((verdict, body_of(r).await));
    }
    let answers: Vec<(&str, &str)> = answers
        .iter()
        .map(|(v, b)| (v.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        answers,
        [("MISS", "en v1"), ("HIT", "en v1"), ("MISS", "fr v2")]
    );
    assert_eq!(o.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_origin_error_reaches_every_waiter_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let down = service_fn(move |_: Request<()>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<Response<Full<Bytes>>, BoxError>("origin down".into())
        }
    });
    let layer = HttpCacheLayer::builder("t").build().unwrap();
    let svc: Svc = BoxCloneService::new(layer.layer(down));
    let reqs = (0..5).map(|_| get("/e").body(()).unwrap()).collect();
    for r in together(&svc, reqs).await {
        let err = r.unwrap_err();
        let load = err
            .downcast_ref::<LoadError>()
            .expect("a shared load error");
        assert_eq!(load.inner().to_string(), "origin down");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((layer.stats().misses, layer.stats().coalesced), (1, 4));
}

#[tokio::test(start_paused = true)]
async fn waiters_serve_their_stale_copy_when_the_origin_fails() {
    let (o, svc) = origin(|req, n| {
        if n >= 2 {
            return res(503, &[], "down");
        }
        let lang = req.headers()["accept-language"].to_str().unwrap();
        res(
            200,
            &[
                ("cache-control", "max-age=1, stale-if-error=60"),
                ("vary", "accept-language"),
            ],
            &format!("{lang} v{n}"),
        )
    });
    let lang = |l: &str| get("/s").header("accept-language", l).body(()).unwrap();
    send(&svc, lang("en")).await;
    advance(Duration::from_secs(5)).await;
    // Stale, no validator: a refetch, which fails with a 503; the English requests have a
    // stale copy, the French one has none and asks the origin itself.
    let got = together(&svc, vec![lang("en"), lang("en"), lang("en"), lang("fr")]).await;
    let mut answers = Vec::new();
    for r in got {
        let r = r.unwrap();
        let head = (r.status().as_u16(), x(r.headers()).to_owned());
        answers.push((head, body_of(r).await));
    }
    let stale = ((200, "STALE".to_owned()), "en v1".to_owned());
    assert_eq!(
        answers,
        [
            stale.clone(),
            stale.clone(),
            stale,
            ((503, "MISS".to_owned()), "down".to_owned())
        ]
    );
    assert_eq!(
        o.calls.load(Ordering::SeqCst),
        3,
        "one shared refetch, one of its own"
    );
    // Nothing replaced the stale copy.
    let (_, h, body) = send(&svc, lang("en")).await;
    assert_eq!((x(&h), body.as_str()), ("STALE", "en v1"));
}

#[tokio::test(start_paused = true)]
async fn a_response_is_fresh_while_its_age_is_below_its_lifetime() {
    // RFC 9111 §4.2: fresh while the freshness lifetime is greater than the age. The origin
    // takes 10 ms, which count in the age.
    let (o, svc) = origin(|_, n| res(200, &[("cache-control", "max-age=60")], &format!("v{n}")));
    send(&svc, get("/f").body(()).unwrap()).await;
    advance(Duration::from_millis(59_989)).await;
    let (_, h, _) = send(&svc, get("/f").body(()).unwrap()).await;
    assert_eq!(x(&h), "HIT", "1 ms of freshness left");
    advance(Duration::from_millis(1)).await;
    let (_, h, body) = send(&svc, get("/f").body(()).unwrap()).await;
    assert_eq!(
        (x(&h), body.as_str()),
        ("MISS", "v2"),
        "age = lifetime: stale"
    );
    assert_eq!(o.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn only_unsafe_methods_that_succeed_invalidate() {
    let (o, svc) = origin(|req, n| match *req.method() {
        Method::GET => res(200, &[("cache-control", "max-age=60")], &format!("v{n}")),
        Method::DELETE => res(500, &[], "failed"),
        _ => res(200, &[], "done"),
    });
    send(&svc, get("/i").body(()).unwrap()).await;
    for method in [Method::OPTIONS, Method::DELETE] {
        let req = get("/i").method(method.clone()).body(()).unwrap();
        send(&svc, req).await;
        let (_, h, body) = send(&svc, get("/i").body(()).unwrap()).await;
        assert_eq!((x(&h), body.as_str()), ("HIT", "v1"), "{method} kept it");
    }
    send(&svc, get("/i").method(Method::PUT).body(()).unwrap()).await;
    let (_, h, body) = send(&svc, get("/i").body(()).unwrap()).await;
    assert_eq!(
        (x(&h), body.as_str()),
        ("MISS", "v5"),
        "a successful PUT dropped it"
    );
    assert_eq!(o.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn stale_windows_end_where_their_directives_say() {
    // Each path is stored once; then the origin fails in the way its path names, and each
    // stale window is checked inside and at its end (RFC 5861: served while the staleness
    // is below the window).
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = failing.clone();
    let svc = service_fn(move |req: Request<()>| {
        let path = req.uri().path().to_owned();
        let failing = flag.load(Ordering::SeqCst);
        std::future::ready(match (failing, path.as_str()) {
            (false, "/t") => Ok(res(
                200,
                &[("cache-control", "max-age=1, stale-while-revalidate=5")],
                "t1",
            )),
            (false, "/u") => Ok(res(
                200,
                &[(
                    "cache-control",
                    "max-age=1, stale-while-revalidate=20, stale-if-error=10",
                )],
                "u1",
            )),
            (false, p) => Ok(res(
                200,
                &[
                    ("cache-control", "max-age=1, stale-if-error=10"),
                    ("etag", "\"x\""),
                ],
                &format!("{p} v1"),
            )),
            (true, "/b" | "/e") => Err::<_, BoxError>("origin down".into()),
            (true, "/c") => Ok(res(404, &[], "gone")),
            (true, "/t") => Ok(res(200, &[], "t2")),
            (true, _) => Ok(res(503, &[], "down")),
        })
    });
    let svc: Svc = BoxCloneService::new(HttpCacheLayer::builder("t").build().unwrap().layer(svc));
    let paths = ["/a", "/b", "/c", "/d", "/e", "/t", "/u"];
    for p in paths {
        send(&svc, get(p).body(()).unwrap()).await;
    }
    failing.store(true, Ordering::SeqCst);
    let ask = |p: &str| svc.clone().oneshot(get(p).body(()).unwrap());
    let head = |r: &Answer| (r.status().as_u16(), x(r.headers()).to_owned());
    let stale = (200, "STALE".to_owned());

    advance(Duration::from_secs(5)).await; // 4 s stale
    let r = ask("/a").await.unwrap();
    assert_eq!(
        head(&r),
        stale,
        "a revalidation's 503 within stale-if-error"
    );
    let r = ask("/b").await.unwrap();
    assert_eq!(
        head(&r),
        stale,
        "a revalidation's error within stale-if-error"
    );
    let r = ask("/c").await.unwrap();
    assert_eq!(
        head(&r),
        (404, "MISS".to_owned()),
        "not a server error: passed on"
    );

    advance(Duration::from_secs(1)).await; // 5 s stale
    let r = ask("/t").await.unwrap();
    assert_eq!(
        (head(&r), body_of(r).await),
        ((200, "MISS".to_owned()), "t2".to_owned()),
        "stale-while-revalidate=5 is over"
    );

    advance(Duration::from_secs(5)).await; // 10 s stale
    let r = ask("/d").await.unwrap();
    assert_eq!(
        head(&r),
        (503, "MISS".to_owned()),
        "stale-if-error=10 is over"
    );
    let err = ask("/e").await.unwrap_err();
    assert_eq!(err.to_string(), "origin down", "stale-if-error=10 is over");
    let no_cache = get("/u")
        .header("cache-control", "no-cache")
        .body(())
        .unwrap();
    let r = svc.clone().oneshot(no_cache).await.unwrap();
    assert_eq!(
        head(&r),
        (503, "MISS".to_owned()),
        "no validator: stale-if-error=10 is over too"
    );
}

#[tokio::test(start_paused = true)]
async fn origin_requests_abandoned_by_every_caller_leave_no_flight_behind() {
    // An origin that never answers: only the callers' going away ends its requests.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let origin = service_fn(move |_: Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
    });
    let layer = HttpCacheLayer::builder("t").build().unwrap();
    let svc = layer.layer(origin);
    // 100 URLs (clients choose them), each with a leader and two waiters.
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            tokio::spawn(
                svc.clone()
                    .oneshot(get(&format!("/u{}", i % 100)).body(()).unwrap()),
            )
        })
        .collect();
    for _ in 0..1_000 {
        let s = layer.stats();
        if s.misses + s.coalesced == 300 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let s = layer.stats();
    assert_eq!((s.misses, s.coalesced), (100, 200), "one flight per URL");
    assert_eq!(layer.loads_in_flight(), 100);
    // Every caller gives up, as a client that disconnects or a timeout above the cache does.
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        assert!(t.await.unwrap_err().is_cancelled());
    }
    assert_eq!(
        layer.loads_in_flight(),
        0,
        "no entry outlives the requests that could use it"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 100);
    // The next request for a URL starts a new origin request rather than joining a dead one.
    let next = tokio::spawn(svc.clone().oneshot(get("/u0").body(()).unwrap()));
    tokio::task::yield_now().await;
    assert_eq!(calls.load(Ordering::SeqCst), 101);
    assert_eq!(layer.loads_in_flight(), 1);
    next.abort();
    assert!(next.await.unwrap_err().is_cancelled());
    assert_eq!(layer.loads_in_flight(), 0);
}
