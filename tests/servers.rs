//! The servers that `scripts/test` provisions answer on loopback, and speak the protocol they
//! should: PostgreSQL, Redis, and NATS with JetStream enabled; the PostgreSQL streaming
//! replicas follow the primary, and a paused replica's replay holds still while it answers.
//!
//! Under plain `cargo test` these skip (with a printed reason) when the URLs are not set;
//! under `scripts/test` a missing URL fails them.

use std::time::Duration;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    time::{Instant, sleep, timeout},
};
use tokio_postgres::{Client, NoTls, error::SqlState};
use tower_patterns_testkit::{Server, fresh_postgres, postgres_replicas, server_url};

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

/// A client of `url`, retried until it connects: a database made on the primary exists on a
/// replica only once the replica has replayed its creation.
async fn pg_connect(url: &str, within: Duration) -> Client {
    let deadline = Instant::now() + within;
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return client;
            }
            Err(e) if Instant::now() >= deadline => panic!("connecting to {url}: {e}"),
            Err(_) => sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Whether the replica shows row `id` (not while it has yet to replay the table's creation).
async fn has_row(client: &Client, id: i32) -> bool {
    match client
        .query_one("SELECT count(*) FROM items WHERE id = $1", &[&id])
        .await
    {
        Ok(row) => row.get::<_, i64>(0) == 1,
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => false,
        Err(e) => panic!("counting the rows on the replica: {e}"),
    }
}

/// Polls until the replica shows row `id`, for at most `within`; whether it did.
async fn shows_within(client: &Client, id: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if has_row(client, id).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

async fn lsn_reached(client: &Client, query: &str, lsn: &str) -> bool {
    let row = client
        .query_one(&format!("SELECT ({query}) >= $1::text::pg_lsn"), &[&lsn])
        .await
        .expect("compare LSNs on the replica");
    row.get::<_, Option<bool>>(0).unwrap_or(false)
}

#[tokio::test]
async fn postgres_replicas_follow_the_primary_and_pause_on_demand() {
    let Some(replicas) = postgres_replicas() else {
        return;
    };
    assert!(
        !replicas.is_empty(),
        "TP_POSTGRES_REPLICA_URLS names no replica"
    );
    let url = fresh_postgres("replicas")
        .await
        .expect("the replicas' primary is set too");
    let db = url.rsplit('/').next().unwrap().to_owned();
    let primary = pg_connect(&url, Duration::from_secs(10)).await;
    // Each commit flushes its WAL, so the write position read after it covers it (with the
    // server's default of off, the write position can trail a commit).
    primary
        .batch_execute("SET synchronous_commit = on")
        .await
        .unwrap();
    primary
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (0)")
        .await
        .unwrap();

    for (n, replica) in replicas.iter().enumerate() {
        loopback_addr(&replica.url);
        let client = pg_connect(&replica.database(&db), Duration::from_secs(10)).await;
        assert!(
            shows_within(&client, 0, Duration::from_secs(10)).await,
            "replica {} does not show a row written on the primary",
            replica.url
        );

        // Paused: a new row stays out of sight, while the replica answers and receives WAL.
        let id = i32::try_from(n).unwrap() + 1;
        let paused = replica.pause_replay();
        primary
            .execute("INSERT INTO items VALUES ($1)", &[&id])
            .await
            .unwrap();
        let written: String = primary
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            !shows_within(&client, id, Duration::from_secs(1)).await,
            "replica {} shows a row written while its replay was paused",
            replica.url
        );
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1, "a paused replica still answers");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lsn_reached(&client, "pg_last_wal_receive_lsn()", &written).await {
            assert!(
                Instant::now() < deadline,
                "replica {} stopped receiving WAL while its replay was paused",
                replica.url
            );
            sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !lsn_reached(&client, "pg_last_wal_replay_lsn()", &written).await,
            "replica {} replayed WAL while paused",
            replica.url
        );
        assert!(!has_row(&client, id).await);

        // Resumed: the row appears.
        drop(paused);
        assert!(
            shows_within(&client, id, Duration::from_secs(10)).await,
            "replica {} does not catch up once its replay resumes",
            replica.url
        );
    }
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
