//! The servers that `scripts/test` provisions answer on loopback, and speak the protocol they
//! should: PostgreSQL, Redis, and NATS with JetStream enabled.
//!
//! Under plain `cargo test` these skip (with a printed reason) when the URLs are not set;
//! under `scripts/test` a missing URL fails them.

use std::time::Duration;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    time::timeout,
};
use tower_patterns_testkit::{Server, server_url};

/// `scheme://[user[:pass]@]host:port[/db]` to `host:port`, refusing anything off loopback.
fn loopback_addr(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    assert!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "test servers must be on loopback, got {url}"
    );
    host_port.to_string()
}

async fn connect(url: &str) -> TcpStream {
    let addr = loopback_addr(url);
    timeout(Duration::from_secs(10), TcpStream::connect(&addr))
        .await
        .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

#[tokio::test]
async fn postgres_answers_an_ssl_request() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let mut stream = connect(&url).await;
    // SSLRequest: length 8, code 80877103. A PostgreSQL server answers 'S' or 'N'.
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    timeout(Duration::from_secs(10), stream.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(answer[0], b'S' | b'N'), "got {answer:?}");
}

#[tokio::test]
async fn redis_answers_ping() {
    let Some(url) = server_url(Server::Redis) else {
        return;
    };
    let mut stream = BufReader::new(connect(&url).await);
    stream.get_mut().write_all(b"PING\r\n").await.unwrap();
    let mut line = String::new();
    timeout(Duration::from_secs(10), stream.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "+PONG\r\n");
}

#[tokio::test]
async fn nats_runs_with_jetstream() {
    let Some(url) = server_url(Server::Nats) else {
        return;
    };
    let mut stream = BufReader::new(connect(&url).await);
    let mut info = String::new();
    timeout(Duration::from_secs(10), stream.read_line(&mut info))
        .await
        .unwrap()
        .unwrap();
    assert!(info.starts_with("INFO "), "got {info}");
    assert!(
        info.contains("\"jetstream\":true"),
        "JetStream is not enabled: {info}"
    );
}

#[test]
fn loopback_addresses_are_parsed_and_others_refused() {
    assert_eq!(
        loopback_addr("postgres://postgres@127.0.0.1:55432/postgres"),
        "127.0.0.1:55432"
    );
    assert_eq!(loopback_addr("redis://127.0.0.1:56379"), "127.0.0.1:56379");
    assert!(std::panic::catch_unwind(|| loopback_addr("nats://10.1.2.3:4222")).is_err());
}
