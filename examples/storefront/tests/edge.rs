//! The edge over real TCP on 127.0.0.1: HTTP/2 beside HTTP/1, a client slow to send its headers
//! cut off, oversized headers and bodies, the load shed, the request timeout, bad input as
//! clear 4xx answers, and a graceful shutdown that finishes the request in flight. Real time,
//! with short settings: a server's timers cannot be driven from outside its sockets.

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};

use super::{Out, TOKEN};
use crate::{config, run};

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<Result<(), String>>,
    _dir: super::TempDir,
    /// This test's turn among the real-time tests, for as long as its server runs.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Starts the storefront on a free port with `args` added.
async fn start(name: &str, args: &[&str]) -> Server {
    let turn = super::REAL_TIME.lock().await;
    let dir =
        std::env::temp_dir().join(format!("tp-storefront-edge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut all: Vec<String> = ["--addr", "127.0.0.1:0", "--admin-token", TOKEN, "--data"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    all.push(dir.display().to_string());
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let cfg = config::parse(all, |_| None).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let out = Out::default();
    let mut writer = out.clone();
    let done = tokio::spawn(async move {
        run(
            cfg,
            &mut writer,
            async {
                let _ = stopped.await;
            },
            None,
        )
        .await
    });
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
            if let Some(rest) = text.split("storefront on http://").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the server says where it listens");
    Server {
        addr,
        stop: Some(stop),
        done,
        _dir: super::TempDir(dir),
        _turn: turn,
    }
}

/// Sends raw bytes on a new connection and reads until the server closes it (`Connection:
/// close`); the status and the body.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// One HTTP/1 request with `headers` and `body`.
async fn http1(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(addr, req.as_bytes()).await
}

const JSON: (&str, &str) = ("content-type", "application/json");
const ACME: (&str, &str) = ("x-api-key", "demo-key-acme");

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

async fn slow_provider(addr: SocketAddr, ms: u64) {
    let plan = format!(r#"{{"faults":[{{"kind":"latency","ms":{ms}}}]}}"#);
    let auth = bearer();
    let (status, body) = http1(
        addr,
        "POST",
        "/admin/chaos/payment-provider",
        &[JSON, ("authorization", &auth)],
        &plan,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_to_send_its_headers_is_cut_off() {
    let server = start("slow-header", &["--header-timeout", "1"]).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection is still open after 10 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // A whole request on a new connection is served.
    assert_eq!(http1(server.addr, "GET", "/health", &[], "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_served() {
    let server = start("h2", &[]).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{}/products", server.addr))
        .header("x-api-key", "demo-key-acme")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().contains_key("x-request-id"),
        "{:?}",
        res.headers()
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("tea"), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_4xx_answers() {
    let server = start("bad-input", &[]).await;
    let addr = server.addr;
    let auth = bearer();
    let admin = [JSON, ("authorization", auth.as_str())];
    // A tenant id that is no id: 400, with the phrase and no echo of the input.
    let (status, body) = http1(
        addr,
        "GET",
        "/products",
        &[ACME, ("x-tenant-id", "acme corp!")],
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains("acme corp"), "{body}");
    // No key at all: 401.
    assert_eq!(http1(addr, "GET", "/products", &[], "").await.0, 401);
    // A header larger than the server reads: 431.
    let huge = "x".repeat(crate::edge::HEADER_LIMIT + 1024);
    assert_eq!(
        http1(addr, "GET", "/products", &[ACME, ("x-filler", &huge)], "")
            .await
            .0,
        431
    );
    // A body past the limit: 413, whatever it holds.
    let big = format!(
        r#"{{"faults":[],"pad":"{}"}}"#,
        "x".repeat(crate::edge::BODY_LIMIT)
    );
    assert_eq!(
        http1(addr, "POST", "/admin/chaos/payment-provider", &admin, &big).await,
        (413, "request body too large".to_owned())
    );
    // Malformed JSON: 400 with a fixed phrase, not serde's message.
    assert_eq!(
        http1(
            addr,
            "POST",
            "/admin/chaos/payment-provider",
            &admin,
            r#"{"faults": [}"#
        )
        .await,
        (400, "malformed JSON".to_owned())
    );
    // An unknown route: 404, before any tenant is needed; a known one with the wrong method: 405.
    assert_eq!(http1(addr, "GET", "/no/such/route", &[], "").await.0, 404);
    assert_eq!(http1(addr, "DELETE", "/products", &[ACME], "").await.0, 405);
    // Admin without the token: 401.
    assert_eq!(
        http1(addr, "GET", "/admin/patterns", &[], "").await,
        (401, "admin token required".to_owned())
    );
    // Not HTTP at all: 400, and the connection closes.
    assert_eq!(raw(addr, b"HELLO\r\n\r\n").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_time_is_a_504() {
    let server = start("timeout", &["--request-timeout", "1"]).await;
    slow_provider(server.addr, 1_500).await;
    let (status, body) = http1(server.addr, "POST", "/orders/tea/1", &[ACME], "").await;
    assert_eq!(status, 504, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sheds_nothing_in_flight_and_takes_no_new_connection() {
    let mut server = start("drain", &["--max-inflight", "1"]).await;
    let addr = server.addr;
    // Under the payment client's 2 s attempt timeout, and long enough to be seen from a loaded
    // machine.
    slow_provider(addr, 1_900).await;
    // The order holds the one permit: everything else is shed with 503 until it ends. (On a
    // loaded machine a probe may hold the permit when the order arrives, and the order is the
    // one shed: then it is sent again.)
    let (order, shed) = tokio::time::timeout(Duration::from_secs(20), async {
        let mut order = tokio::spawn(http1(addr, "POST", "/orders/tea/1", &[ACME], ""));
        loop {
            let (status, body) = http1(addr, "GET", "/health", &[], "").await;
            if status == 503 && !order.is_finished() {
                return (order, body);
            }
            if order.is_finished() {
                let (status, body) = (&mut order).await.unwrap();
                assert_eq!(status, 503, "only a shed order ends this soon: {body}");
                order = tokio::spawn(http1(addr, "POST", "/orders/tea/1", &[ACME], ""));
            }
        }
    })
    .await
    .expect("a request shed while the order holds the edge's permit");
    assert!(!shed.is_empty());
    server.stop.take().unwrap().send(()).unwrap();
    let (status, body) = order.await.unwrap();
    assert_eq!(status, 201, "the order in flight finishes: {body}");
    let done = tokio::time::timeout(Duration::from_secs(15), &mut server.done).await;
    assert_eq!(done.expect("the server stops").unwrap(), Ok(()));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connection after shutdown"
    );
}

#[tokio::test]
async fn startup_errors_are_one_line_naming_the_flag() {
    let parse = |args: &[&str], env: &[(&str, &str)]| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        config::parse(args.iter().map(|s| (*s).to_owned()).collect(), move |k| {
            env.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
    };
    let error = |args: &[&str], env: &[(&str, &str)]| parse(args, env).unwrap_err();
    assert_eq!(
        error(&["--addr", "nowhere"], &[]),
        r#"storefront: --addr "nowhere": not a socket address such as 127.0.0.1:3000 (also TP_ADDR)"#
    );
    assert_eq!(
        error(&[], &[("TP_ADDR", "x:y")]),
        r#"storefront: --addr "x:y": not a socket address such as 127.0.0.1:3000 (also TP_ADDR)"#
    );
    assert_eq!(
        error(&["--data", ""], &[]),
        r#"storefront: --data "": an empty path (also TP_DATA)"#
    );
    assert_eq!(
        error(&["--bogus"], &[]),
        r#"storefront: unknown argument "--bogus" (try --help)"#
    );
    assert_eq!(
        error(&["--addr"], &[]),
        "storefront: --addr needs a value (try --help)"
    );
    assert!(
        error(&["--header-timeout", "0"], &[]).starts_with("storefront: --header-timeout \"0\"")
    );
    assert!(
        error(&[], &[("TP_TENANT_HEADER_ONLY", "yes")])
            .starts_with("storefront: TP_TENANT_HEADER_ONLY \"yes\"")
    );
    assert!(error(&["--admin-token", "short"], &[]).contains("at least 16"));
    assert!(
        !error(&["--admin-token", "short"], &[]).contains("short"),
        "the token is not echoed"
    );
    assert!(error(&["--jwt-secret", "short"], &[]).contains("at least 32 bytes"));
    assert!(
        !error(&[], &[("TP_JWT_SECRET", "short")]).contains("short"),
        "not echoed"
    );
    assert!(error(&["--help"], &[]).starts_with("usage: storefront"));
    // Replicas follow a primary; their URLs (which may hold a password) are not echoed then.
    let secret = "postgres://app:s3cret@127.0.0.1:5433/shop";
    let alone = error(&["--postgres-replicas", secret], &[]);
    assert!(
        alone.starts_with("storefront: --postgres-replicas needs --postgres")
            && !alone.contains("s3cret"),
        "{alone}"
    );
    let listed = format!("postgres://h:5433/db,redis://app:{}@h", "s3cret");
    let wrong = error(
        &["--postgres", "postgres://h/db"],
        &[("TP_STOREFRONT_POSTGRES_REPLICAS", &listed)],
    );
    assert_eq!(
        wrong,
        "storefront: --postgres-replicas: URL 2 of 2 is not a postgres:// URL \
         (also TP_STOREFRONT_POSTGRES_REPLICAS)"
    );
    // Nor is the primary's password echoed when its URL is wrong.
    let primary = error(&["--postgres", "postgress://app:s3cret@h/db"], &[]);
    assert_eq!(
        primary,
        r#"storefront: --postgres "h/db": not a postgres:// URL (also TP_STOREFRONT_POSTGRES)"#
    );
    // Nor a Redis or NATS password.
    assert_eq!(
        error(&["--redis", "http://:s3cret@h:6379"], &[]),
        r#"storefront: --redis "h:6379": not a redis:// URL (also TP_STOREFRONT_REDIS)"#
    );
    assert_eq!(
        error(&[], &[("TP_STOREFRONT_NATS", "nast://app:s3cret@h:4222")]),
        r#"storefront: --nats "h:4222": not a nats:// URL (also TP_STOREFRONT_NATS)"#
    );
    let cfg = parse(
        &[
            "--postgres",
            "postgres://h/db",
            "--postgres-replicas",
            "postgres://a/db, postgresql://b/db",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        cfg.postgres_replicas,
        ["postgres://a/db", "postgresql://b/db"]
    );
    assert!(parse(&[], &[]).unwrap().postgres_replicas.is_empty());
    for e in [
        error(&["--addr", "nowhere"], &[]),
        error(&["--drain", "x"], &[]),
    ] {
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    // The command line wins over the environment; `--flag=value` works too.
    let cfg = parse(&["--addr=127.0.0.1:9"], &[("TP_ADDR", "bad")]).unwrap();
    assert_eq!(cfg.addr.port(), 9);

    // The data directory is stable: XDG first, then HOME, then the working directory.
    let data = |env: &[(&str, &str)]| parse(&[], env).unwrap().data;
    assert_eq!(
        data(&[("XDG_DATA_HOME", "/x")]),
        std::path::Path::new("/x/tower-patterns/storefront")
    );
    assert_eq!(
        data(&[("HOME", "/home/u")]),
        std::path::Path::new("/home/u/.local/share/tower-patterns/storefront")
    );
    assert_eq!(data(&[]), std::path::Path::new("storefront-data"));
    assert_eq!(
        data(&[("TP_DATA", "/d"), ("HOME", "/h")]),
        std::path::Path::new("/d")
    );

    // An address in use, and a data directory that cannot be made: one line each.
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let file = std::env::temp_dir().join(format!("tp-storefront-not-a-dir-{}", std::process::id()));
    std::fs::write(&file, b"").unwrap();
    let under_file = file.join("data").display().to_string();
    let nats_dir = std::env::temp_dir()
        .join(format!("tp-sf-nats-down-{}", std::process::id()))
        .display()
        .to_string();
    for (args, flag) in [
        (
            vec![
                "--addr",
                port.as_str(),
                "--data",
                &*std::env::temp_dir()
                    .join(format!("tp-sf-inuse-{}", std::process::id()))
                    .display()
                    .to_string(),
            ],
            "--addr",
        ),
        (
            vec!["--addr", "127.0.0.1:0", "--data", under_file.as_str()],
            "--data",
        ),
        // Nothing listens on port 1: the PostgreSQL server is not there.
        (
            vec![
                "--addr",
                "127.0.0.1:0",
                "--data",
                nats_dir.as_str(),
                "--postgres",
                "postgres://postgres:s3cret@127.0.0.1:1/shop",
            ],
            "--postgres",
        ),
        // A port that is not a number: the Redis URL does not parse.
        (
            vec![
                "--addr",
                "127.0.0.1:0",
                "--data",
                nats_dir.as_str(),
                "--redis",
                "redis://:s3cret@127.0.0.1:notaport",
            ],
            "--redis",
        ),
        // Nothing listens on port 1: the NATS server is not there.
        (
            vec![
                "--addr",
                "127.0.0.1:0",
                "--data",
                nats_dir.as_str(),
                "--nats",
                "nats://app:s3cret@127.0.0.1:1",
            ],
            "--nats",
        ),
    ] {
        let cfg = parse(&args, &[]).unwrap();
        let e = run(cfg, &mut Out::default(), async {}, None)
            .await
            .unwrap_err();
        assert!(e.starts_with(&format!("storefront: {flag} ")), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(!e.contains("s3cret"), "no password shown: {e}");
    }
    let _ = std::fs::remove_dir_all(&nats_dir);
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn replica_urls_are_read_as_the_primary_is_and_errors_hide_passwords() {
    use crate::backend::replicas;
    // No database name, no port: what `--postgres` takes, the replicas take too (the pools
    // connect on first use, so nothing needs to listen).
    let set = replicas(
        "postgres://app@127.0.0.1",
        &["postgres://app@127.0.0.1:5433".to_owned()],
    )
    .unwrap();
    assert_eq!(set.handle().replicas().len(), 1);
    let e = replicas(
        "postgres://app@127.0.0.1/shop",
        &[
            "postgres://app@127.0.0.1:5433/shop".to_owned(),
            "postgres://app:s3cret@127.0.0.1:notaport/shop".to_owned(),
        ],
    )
    .unwrap_err();
    assert!(
        e.starts_with(
            "storefront: --postgres-replicas, replica-2 (also TP_STOREFRONT_POSTGRES_REPLICAS): "
        ),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
    let e = replicas("postgres://app:s3cret@127.0.0.1:notaport/shop", &[]).unwrap_err();
    assert!(
        e.starts_with("storefront: --postgres (also TP_STOREFRONT_POSTGRES): "),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
}
