//! Where server-backed tests find their PostgreSQL, Redis and NATS.
//!
//! `scripts/test` starts the servers on loopback and exports their URLs in
//! `TP_POSTGRES_URL`, `TP_REDIS_URL` and `TP_NATS_URL`, with `TP_REQUIRE_SERVICES=1`. When
//! it starts PostgreSQL itself it also starts two streaming replicas of it and exports their
//! URLs in `TP_POSTGRES_REPLICA_URLS` (see [`postgres_replicas`](crate::postgres_replicas)).
//!
//! - Under plain `cargo test` a missing URL **skips** the test: it returns early after writing
//!   the reason to stderr (unbuffered, so it shows even for passing tests).
//! - Under `scripts/test` (`TP_REQUIRE_SERVICES=1`) a missing URL **fails** the test, so a
//!   broken provisioning step can never pass as a row of skipped tests.
//!
//! ```
//! use tower_patterns_testkit::{server_url, Server};
//!
//! fn redis_round_trip() {
//!     let Some(url) = server_url(Server::Redis) else { return };
//!     // ... connect to `url` ...
//! #   let _ = url;
//! }
//! # // Only call it where the environment allows; docs must not depend on servers.
//! ```

use std::{fmt, io::Write};

/// The variable that turns a skip into a failure.
pub const REQUIRE_VAR: &str = "TP_REQUIRE_SERVICES";

/// A server that tests may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Server {
    /// PostgreSQL (`TP_POSTGRES_URL`, a `postgres://` URL).
    Postgres,
    /// Redis (`TP_REDIS_URL`, a `redis://` URL).
    Redis,
    /// NATS with JetStream (`TP_NATS_URL`, a `nats://` URL).
    Nats,
    /// Streaming replicas of the [`Postgres`](Self::Postgres) server
    /// (`TP_POSTGRES_REPLICA_URLS`, comma-separated `postgres://` URLs); tests take them from
    /// [`postgres_replicas`](crate::postgres_replicas), which also reads their PIDs.
    PostgresReplicas,
}

impl Server {
    /// The environment variable that holds the server's URL.
    pub const fn env_var(self) -> &'static str {
        match self {
            Self::Postgres => "TP_POSTGRES_URL",
            Self::Redis => "TP_REDIS_URL",
            Self::Nats => "TP_NATS_URL",
            Self::PostgresReplicas => "TP_POSTGRES_REPLICA_URLS",
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Postgres => "PostgreSQL",
            Self::Redis => "Redis",
            Self::Nats => "NATS",
            Self::PostgresReplicas => "PostgreSQL streaming replica",
        })
    }
}

/// What a test should do about a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run against this URL.
    Run(String),
    /// Skip, for this reason.
    Skip(String),
    /// Fail, for this reason.
    Fail(String),
}

/// Decides from an environment given as a lookup function (testable without touching the
/// process environment).
pub fn decide(server: Server, env: impl Fn(&str) -> Option<String>) -> Decision {
    let var = server.env_var();
    match env(var).filter(|url| !url.trim().is_empty()) {
        Some(url) => Decision::Run(url),
        None => {
            let reason = format!(
                "{var} is not set: this test needs a {server} server (scripts/test provides one)"
            );
            let required = env(REQUIRE_VAR).is_some_and(|v| v.trim() == "1");
            if required {
                Decision::Fail(format!("{reason}, and {REQUIRE_VAR}=1 forbids skipping"))
            } else {
                Decision::Skip(reason)
            }
        }
    }
}

/// The server's URL, or `None` after printing why the test is skipped.
///
/// # Panics
///
/// When the URL is missing and `TP_REQUIRE_SERVICES=1`: the test fails.
pub fn server_url(server: Server) -> Option<String> {
    act(decide(server, |var| std::env::var(var).ok()))
}

fn act(decision: Decision) -> Option<String> {
    match decision {
        Decision::Run(url) => Some(url),
        Decision::Skip(reason) => {
            // Straight to stderr: the test harness captures `eprintln!`, not this.
            let _ = writeln!(std::io::stderr(), "skipped: {reason}");
            None
        }
        Decision::Fail(reason) => panic!("{reason}"),
    }
}

/// A fresh, empty database on the test command's PostgreSQL (named `tp_{tag}_{pid}_{uuid}`,
/// so concurrent tests never share one), as a URL; `None` (skipped, see [`server_url`])
/// without a server.
///
/// # Panics
///
/// When the server does not answer or the database cannot be created (`tag` must be a
/// lowercase identifier of at most 18 characters), or outside a Tokio runtime.
#[cfg(feature = "postgres")]
pub async fn fresh_postgres(tag: &str) -> Option<String> {
    let url = server_url(Server::Postgres)?;
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL answers");
    let conn = tokio::spawn(conn);
    let db = format!(
        "tp_{tag}_{}_{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("create a test database");
    drop(admin);
    let _ = conn.await;
    Some(with_database(&url, &db))
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((host, _)) => format!("{scheme}://{host}"),
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn skips_with_a_reason_under_plain_cargo_test() {
        let d = decide(Server::Redis, env(&[]));
        let Decision::Skip(reason) = &d else {
            panic!("expected a skip, got {d:?}")
        };
        assert!(reason.contains("TP_REDIS_URL"), "{reason}");
        assert_eq!(act(d), None);
        // An empty value is as good as missing.
        assert!(matches!(
            decide(Server::Nats, env(&[("TP_NATS_URL", " ")])),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn fails_when_servers_are_required() {
        let d = decide(Server::Postgres, env(&[(REQUIRE_VAR, "1")]));
        assert!(matches!(&d, Decision::Fail(r) if r.contains("TP_POSTGRES_URL")));
        let panicked = std::panic::catch_unwind(|| act(d));
        assert!(
            panicked.is_err(),
            "a required server that is missing fails the test"
        );
    }

    #[test]
    fn a_database_replaces_the_urls() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://u@h/a?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }

    #[test]
    fn runs_when_the_url_is_set() {
        let d = decide(
            Server::Nats,
            env(&[
                ("TP_NATS_URL", "nats://127.0.0.1:54222"),
                (REQUIRE_VAR, "1"),
            ]),
        );
        assert_eq!(d, Decision::Run("nats://127.0.0.1:54222".into()));
    }

    #[test]
    fn replicas_follow_the_same_rule() {
        let d = decide(Server::PostgresReplicas, env(&[]));
        assert!(matches!(&d, Decision::Skip(r) if r.contains("TP_POSTGRES_REPLICA_URLS")));
        let d = decide(Server::PostgresReplicas, env(&[(REQUIRE_VAR, "1")]));
        assert!(matches!(&d, Decision::Fail(r) if r.contains("TP_POSTGRES_REPLICA_URLS")));
        let urls = "postgres://postgres@127.0.0.1:55433/postgres,postgres://postgres@127.0.0.1:55434/postgres";
        let d = decide(
            Server::PostgresReplicas,
            env(&[("TP_POSTGRES_REPLICA_URLS", urls), (REQUIRE_VAR, "1")]),
        );
        assert_eq!(d, Decision::Run(urls.into()));
    }
}
