//! Dual writes on PostgreSQL: two fresh databases, the secondary refusing connections for a
//! while (writes go on, missed ones are recorded, both end equal after it returns and a
//! reconciliation), and a migration from a SQLite monolith to a PostgreSQL service, whose
//! key orders must agree for the reconciler's merge.
#![cfg(all(feature = "postgres", feature = "sqlite"))]

use std::{collections::BTreeMap, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tower::ServiceExt;
use tower_patterns_core::{
    backoff::Backoff,
    observe::{Health, StateHandle},
};
use tower_patterns_strangler::dual::{
    DifferenceKind, DualStatus, DualWrite, OutboxStore, PostgresRows, Reconciler, Row, RowStore,
    SqliteRows, Write,
};
use tower_patterns_testkit::{Server, fresh_postgres, server_url};

const WAIT: Duration = Duration::from_secs(30);

type Rows = BTreeMap<String, (Option<Vec<u8>>, i64)>;

fn pool(url: &str) -> Pool {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(manager).max_size(4).build().unwrap()
}

/// Every row of table `users`, read with plain SQL.
async fn every_row(url: &str) -> Rows {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c.query(
        "SELECT key, value, version FROM users ORDER BY key COLLATE \"C\"",
        &[],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect()
}

async fn execute(url: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

/// Polls `f` every few milliseconds until it holds (a real server, real time).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Turns connections to database `db` away and ends the ones it has (or lets them in again).
async fn refuse_connections(db: &str, refuse: bool) {
    let admin = server_url(Server::Postgres).unwrap();
    let allow = if refuse { "false" } else { "true" };
    let mut sql = format!("ALTER DATABASE {db} ALLOW_CONNECTIONS {allow};");
    if refuse {
        sql.push_str(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';"
        ));
    }
    execute(&admin, &sql).await;
}

fn dual<P: OutboxStore, S: RowStore>(primary: P, secondary: S) -> DualWrite<P> {
    DualWrite::builder("users")
        .primary(primary)
        .secondary(secondary)
        .backoff(
            Backoff::Constant(Duration::from_millis(10)),
            Duration::from_millis(50),
        )
        .missed_after(2)
        .poll(Duration::from_millis(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_down_for_a_while_writes_go_on_and_both_end_equal() {
    let Some(primary_url) = fresh_postgres("dual_primary").await else {
        return;
    };
    let Some(secondary_url) = fresh_postgres("dual_secondary").await else {
        return;
    };
    let secondary_db = secondary_url.rsplit('/').next().unwrap().to_owned();
    let primary = PostgresRows::new(pool(&primary_url), "users")
        .await
        .unwrap();
    let secondary = PostgresRows::new(pool(&secondary_url), "users")
        .await
        .unwrap();
    let dual = dual(primary.clone(), secondary.clone());
    let handle = dual.handle();
    for i in 0..20 {
        let w = Write::put_json(format!("user:{i:03}"), &serde_json::json!({ "i": i })).unwrap();
        dual.clone().oneshot(w).await.unwrap();
    }
    assert!(handle.wait_idle(WAIT).await);

    refuse_connections(&secondary_db, true).await;
    for i in 10..40 {
        let w = Write::put_json(
            format!("user:{i:03}"),
            &serde_json::json!({ "i": i, "v": 2 }),
        );
        dual.clone().oneshot(w.unwrap()).await.unwrap();
    }
    dual.clone()
        .oneshot(Write::delete("user:005"))
        .await
        .unwrap();
    eventually(
        "every write during the outage recorded as missed",
        async || handle.missed_count() == 31,
    )
    .await;
    let missed = handle.missed(100).await.unwrap();
    assert_eq!(missed.len(), 31);
    assert!(missed.iter().all(|m| m.attempts >= 2), "{missed:?}");
    assert_eq!(handle.status(), DualStatus::SecondaryFailing);
    assert_eq!(handle.health(), Health::Degraded);

    refuse_connections(&secondary_db, false).await;
    assert!(handle.wait_idle(WAIT).await, "{handle:?}");
    assert!(handle.missed(100).await.unwrap().is_empty());
    // Drift the worker cannot see: a row only the secondary has, one changed by hand.
    execute(
        &secondary_url,
        "INSERT INTO users VALUES ('stray', 'x', 1); \
         UPDATE users SET value = 'tampered' WHERE key = 'user:001';",
    )
    .await;
    let reconciler = Reconciler::builder("users")
        .primary(primary)
        .secondary(secondary)
        .batch(8)
        .repair(true)
        .build()
        .unwrap();
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        (
            report.missing,
            report.extra,
            report.differing,
            report.repaired
        ),
        (0, 1, 1, 2),
        "{report:?}"
    );
    let rows = every_row(&primary_url).await;
    assert_eq!(rows.len(), 40);
    assert_eq!(rows["user:005"].0, None, "a delete is a tombstone");
    assert_eq!(
        every_row(&secondary_url).await,
        rows,
        "both databases equal"
    );
    assert!(reconciler.run_once().await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_sqlite_monolith_to_a_postgres_service_key_orders_agree() {
    let Some(url) = fresh_postgres("dual_cross").await else {
        return;
    };
    // The service's own table, made before the store with a locale's collation (ICU's root
    // locale, where the server has ICU): the store's reads must still go in byte order.
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let icu = c
        .query_opt(
            "SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'",
            &[],
        )
        .await
        .unwrap()
        .map_or("", |_| "COLLATE \"und-x-icu\"");
    c.batch_execute(&format!(
        "CREATE TABLE users (key TEXT {icu} PRIMARY KEY, value BYTEA, version BIGINT NOT NULL)"
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let monolith = SqliteRows::open(dir.path().join("monolith.db"), "users").unwrap();
    let service = PostgresRows::new(pool(&url), "users").await.unwrap();
    let dual = dual(monolith.clone(), service.clone());
    // Keys whose order differs between byte order and a locale's.
    let keys = [
        "a", "B", "b", "Z", "é", "e", "user 1", "user-1", "user_1", "ü", "10", "9",
    ];
    for k in keys {
        dual.clone()
            .oneshot(Write::put(k, format!("value of {k}")))
            .await
            .unwrap();
    }
    assert!(dual.handle().wait_idle(WAIT).await);
    let reconciler = Reconciler::builder("cross")
        .primary(monolith.clone())
        .secondary(service.clone())
        .batch(2)
        .build()
        .unwrap();
    let report = reconciler.run_once().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.secondary_rows, 12);

    // The version guard across the two: the service's newer row stays.
    let ahead = Row::new("a", &b"written on the service"[..], u64::MAX >> 2);
    service.apply(std::slice::from_ref(&ahead)).await.unwrap();
    dual.clone().oneshot(Write::put("a", "late")).await.unwrap();
    assert!(dual.handle().wait_idle(WAIT).await);
    assert_eq!(service.get("a").await.unwrap().unwrap(), ahead);
    assert_eq!(dual.handle().superseded(), 1);

    // A difference of each kind, found in key order across pages of two.
    service
        .replace(
            "B",
            Some(monolith.get("B").await.unwrap().unwrap().version),
            None,
        )
        .await
        .unwrap();
    service
        .apply(&[Row::new("zz", &b"extra"[..], 1)])
        .await
        .unwrap();
    let report = reconciler.run_once().await.unwrap();
    let found: Vec<(&str, DifferenceKind)> = report
        .differences
        .iter()
        .map(|d| (d.key.as_str(), d.kind))
        .collect();
    assert_eq!(
        found,
        [
            ("B", DifferenceKind::MissingInSecondary),
            ("a", DifferenceKind::Differs),
            ("zz", DifferenceKind::ExtraInSecondary),
        ]
    );
    let repair = Reconciler::builder("cross-repair")
        .primary(monolith.clone())
        .secondary(service.clone())
        .repair(true)
        .build()
        .unwrap();
    assert_eq!(repair.run_once().await.unwrap().repaired, 3);
    assert!(reconciler.run_once().await.unwrap().is_clean());
    assert_eq!(
        service.get("a").await.unwrap().unwrap().value.as_deref(),
        Some(&b"late"[..])
    );
}
