//! The gateway example (`examples/gateway`) run as a user runs it: the sample configuration
//! with the demo upstreams, the curl lines it prints, `/metrics`, a refused bad file, and a
//! graceful stop.
#![cfg(feature = "gateway")]

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;

#[allow(dead_code, reason = "the example's `main`: the test calls `run`")]
#[path = "../examples/gateway/main.rs"]
mod gateway_example;

#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gateway");

/// The sample configuration in a directory of its own, on free ports.
fn sample_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["jwks.json", "demo-hs256.secret", "demo-rsa-private.pem"] {
        std::fs::copy(format!("{SAMPLE}/{f}"), dir.path().join(f)).unwrap();
    }
    let text = std::fs::read_to_string(format!("{SAMPLE}/gateway.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{}", free_port()));
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Runs a curl line the example printed (`curl -s[i] URL -H 'name: value'`).
async fn curl(line: &str) -> (u16, String) {
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let mut req = http::Request::get(url);
    for header in line.split(" -H '").skip(1) {
        let header = header.split('\'').next().unwrap();
        let (name, value) = header.split_once(": ").unwrap();
        req = req.header(name, value);
    }
    let client =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let res = client
        .request(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_answers_the_lines_it_prints() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let (_dir, path) = sample_copy();
    let args = gateway_example::parse_args(vec![
        "--config".into(),
        path.display().to_string(),
        "--demo-upstreams".into(),
    ])
    .unwrap();
    let out = Out::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let mut out = out.clone();
        async move {
            gateway_example::run(
                args,
                &mut out,
                async move { drop(stopped.await) },
                prometheus,
            )
            .await
            .map_err(|e| e.to_string())
        }
    });
    let mut lines = Vec::new();
    for _ in 0..500 {
        lines = out.text().lines().map(str::to_owned).collect();
        if lines.iter().any(|l| l.contains("x-consumer-id: admin")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = out.text();
    let curls: Vec<&String> = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("curl"))
        .collect();
    assert_eq!(curls.len(), 6, "{text}");
    let (status, body) = curl(curls[0]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""x-consumer-id":"mobile-app""#)
            && body.contains(r#""x-tenant-id":"acme""#),
        "{body}"
    );
    let (status, body) = curl(curls[1]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"shipped""#), "{body}");
    let (status, body) = curl(curls[2]).await;
    assert!(
        status == 200 && body.contains(r#""x-version-routed":"2""#),
        "{body}"
    );
    let (status, body) = curl(curls[3]).await;
    assert!(
        status == 200 && body.contains(r#""partial":false"#),
        "the HS256 token and the aggregate: {body}"
    );
    let (status, body) = curl(curls[4]).await;
    assert!(
        status == 200 && body.contains(r#""x-consumer-id":"web-checkout""#),
        "the RS256 token: {body}"
    );
    let (status, body) = curl(curls[5]).await;
    assert_eq!(
        status, 401,
        "a spoofed consumer header is no credential: {body}"
    );

    // The README's lines, on this run's ports.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let gateway_addr = lines
        .iter()
        .find_map(|l| l.split("\" on http://").nth(1))
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .to_owned();
    let admin_addr = lines
        .iter()
        .find_map(|l| l.strip_prefix("admin on http://"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let readme_curls: Vec<String> = readme
        .lines()
        .filter(|l| {
            l.starts_with("curl ") && (l.contains("127.0.0.1:8080") || l.contains("127.0.0.1:9901"))
        })
        .map(|l| {
            l.split("  #")
                .next()
                .unwrap()
                .replace("127.0.0.1:8080", &format!("http://{gateway_addr}"))
                .replace("127.0.0.1:9901", &format!("http://{admin_addr}"))
        })
        .collect();
    assert_eq!(readme_curls.len(), 5, "{readme}");
    let mut statuses = Vec::new();
    for line in &readme_curls {
        statuses.push(curl(line).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 401, 200], "{readme_curls:?}");

    let admin = lines.iter().find(|l| l.starts_with("admin on ")).unwrap();
    let metrics = admin.split_whitespace().nth(2).unwrap();
    let (status, body) = curl(&format!("curl {metrics}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(
            r#"tower_patterns_gateway_requests_total{name="edge",route="users",class="2xx"} 3"#
        ),
        "{body}"
    );

    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended, Ok(()));
}

#[tokio::test]
async fn a_bad_file_or_command_line_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[routes]]\nname = \"x\"\nprefix = \"/\"\nupstrem = \"users\"\n",
    )
    .unwrap();
    let args =
        gateway_example::parse_args(vec!["--config".into(), path.display().to_string()]).unwrap();
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    // A bad file ends the run at once; a run that went on serving would fail here, not hang.
    let mut out = Vec::new();
    let run = gateway_example::run(args, &mut out, std::future::pending(), prometheus);
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run ends")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.toml:4:1: routes[0].upstrem: unknown field `upstrem`"),
        "{err}"
    );
    let err = gateway_example::parse_args(vec!["--threads".into(), "many".into()]).unwrap_err();
    assert_eq!(err, "--threads \"many\": not a number");
    assert!(gateway_example::parse_args(vec!["--bogus".into()]).is_err());
}
