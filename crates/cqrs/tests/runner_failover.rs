//! One runner per projection across processes: two runner processes of one PostgreSQL
//! projection, the lease holder killed with SIGKILL while events arrive; the other takes over
//! from the checkpoint and no event is applied twice. In process: a standby takes over when
//! the holder's session ends, and without the lease two racing runners are kept apart by the
//! compare-and-set checkpoint alone.
#![cfg(all(feature = "postgres", unix))]

mod pg_support;

use std::{io::Write, sync::Arc, time::Duration};

use pg_support::{Ledger, append, checkpoint, client, ledger, store};
use tower_patterns_cqrs::{Projection, ProjectionHandle, Status};
use tower_patterns_eventstore::{GlobalPosition, postgres::PostgresStore};
use tower_patterns_testkit::{fresh_postgres, process::ChildTest};

const CHILD: &str = "TP_CQRS_FAILOVER_URL";
const POLL: Duration = Duration::from_millis(200);
const EVENTS: u64 = 2_000;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn runner(store: &Arc<PostgresStore>, name: &str, model: Ledger, lease: bool) -> Projection {
    Projection::builder(name.to_owned())
        .source(store.clone())
        .postgres(store.pool().clone(), model)
        .lease_poll(POLL)
        .lease(lease)
        .batch(25)
        .build()
        .unwrap()
}

fn holding(s: &Status) -> bool {
    matches!(s, Status::CatchingUp | Status::Live)
}

/// The child: runs the projection until killed; prints `lease <pid>` once it holds the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_child_runner() {
    let Ok(url) = std::env::var(CHILD) else {
        return;
    };
    let store = store(&url).await;
    let (handle, _task) = runner(&store, "ledger", Ledger::default(), true).spawn();
    say("ready");
    handle
        .wait_for_status(Duration::from_secs(3600), holding)
        .await;
    say(&format!("lease {}", std::process::id()));
    std::future::pending::<()>().await;
}

/// The OS pid of the process whose session holds `ledger`'s lease, by its session's name.
async fn lease_holder(db: &tokio_postgres::Client) -> Option<u32> {
    let row = db
        .query_opt(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.classid = 7403527 AND l.objsubid = 2 \
             AND l.granted AND l.database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap()?;
    let name: String = row.get(0);
    name.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `cond` every 20 ms, at most `within`.
async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut cond: impl FnMut() -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runner_processes_one_killed_the_other_continues_applying_each_event_once() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some(url) = fresh_postgres("failover").await else {
        return;
    };
    let store = store(&url).await;
    let db = client(&url).await;
    let mut children = [
        ChildTest::spawn("failover_child_runner", &[(CHILD, url.as_str())]),
        ChildTest::spawn("failover_child_runner", &[(CHILD, url.as_str())]),
    ];
    for c in &mut children {
        c.wait_for("ready", Duration::from_secs(60)).await;
    }
    // Events arrive while the runners run.
    let appender = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut last = GlobalPosition::START;
            for i in 0..EVENTS / 10 {
                last = append(&store, &format!("ledger-{}", i % 7), "Entry", 10).await;
            }
            last
        })
    };
    // The holder says so, and PostgreSQL agrees.
    let [a, b] = &mut children;
    let said: u32 = tokio::select! {
        pid = a.wait_for("lease ", Duration::from_secs(60)) => pid.parse().unwrap(),
        pid = b.wait_for("lease ", Duration::from_secs(60)) => pid.parse().unwrap(),
    };
    assert_eq!(lease_holder(&db).await, Some(said));
    let (holder, standby) = if a.pid() == said { (a, b) } else { (b, a) };
    assert_eq!(holder.pid(), said);

    // Kill it in the middle of the stream.
    assert!(
        eventually(Duration::from_secs(60), || async {
            ledger(&db, "ledger_v1_applied").await.0 >= 300
        })
        .await,
        "the holder applies events"
    );
    let applied_at_kill = ledger(&db, "ledger_v1_applied").await.0;
    holder.kill9();
    let killed = tokio::time::Instant::now();

    let took: u32 = standby
        .wait_for("lease ", POLL + Duration::from_secs(5))
        .await
        .parse()
        .unwrap();
    assert_eq!(took, standby.pid());
    let took_after = killed.elapsed();
    assert_eq!(lease_holder(&db).await, Some(standby.pid()));

    let head = appender.await.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || async {
            checkpoint(&db, "ledger").await.map(|c| c.0) == Some(head)
        })
        .await,
        "the survivor reaches the head ({:?} vs {head:?})\n--- survivor's stderr ---\n{}",
        checkpoint(&db, "ledger").await,
        standby.stderr()
    );
    assert_eq!(
        ledger(&db, "ledger_v1_applied").await,
        (EVENTS as i64, 1),
        "every event applied, none twice"
    );
    assert!(applied_at_kill < EVENTS as i64, "killed before the end");
    // For the report.
    let _ = writeln!(
        std::io::stderr(),
        "failover: killed at {applied_at_kill} applied; the standby took the lease after {took_after:?}"
    );
    standby.kill9();
}

async fn wait_status(h: &ProjectionHandle, pred: fn(&Status) -> bool) -> Status {
    h.wait_for_status(Duration::from_secs(30), pred).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_holders_session_ends() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some(url) = fresh_postgres("lease_term").await else {
        return;
    };
    let store = store(&url).await;
    let db = client(&url).await;
    let model = Ledger::default();
    let (h1, t1) = runner(&store, "ledger", model.clone(), true).spawn();
    assert!(holding(&wait_status(&h1, holding).await));
    let (h2, t2) = runner(&store, "ledger", model.clone(), true).spawn();
    assert_eq!(
        wait_status(&h2, |s| *s == Status::Standby).await,
        Status::Standby
    );
    let head = append(&store, "ledger-1", "Entry", 100).await;
    assert!(h1.wait_for(head, Duration::from_secs(30)).await);
    assert_eq!(h2.status(), Status::Standby, "one runner at a time");

    // The holder's session ends (an operator, a failover of the database's proxy...).
    let ended: bool = db
        .query_one(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = 'advisory' \
             AND l.classid = 7403527 AND l.objsubid = 2 AND l.granted AND l.database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ended);
    assert!(
        holding(&wait_status(&h2, holding).await),
        "the standby took over"
    );
    let head = append(&store, "ledger-2", "Entry", 100).await;
    assert!(h2.wait_for(head, Duration::from_secs(30)).await);
    // The old holder finds its connection gone on its next batch and waits for the lease.
    assert_eq!(
        wait_status(&h1, |s| *s == Status::Standby).await,
        Status::Standby
    );
    assert_eq!(ledger(&db, "ledger_v1_applied").await, (200, 1));
    assert_eq!(checkpoint(&db, "ledger").await, Some((head, Some(1))));
    for (h, t) in [(h1, t1), (h2, t2)] {
        h.shutdown();
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lease_two_racing_runners_still_apply_each_event_once() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some(url) = fresh_postgres("lease_off").await else {
        return;
    };
    let store = store(&url).await;
    let db = client(&url).await;
    let model = Ledger::default();
    let (h1, t1) = runner(&store, "race", model.clone(), false).spawn();
    let (h2, t2) = runner(&store, "race", model.clone(), false).spawn();
    let mut head = GlobalPosition::START;
    for i in 0..60 {
        head = append(&store, &format!("race-{}", i % 3), "Entry", 10).await;
    }
    for h in [&h1, &h2] {
        assert!(h.wait_for(head, Duration::from_secs(60)).await);
    }
    assert_eq!(ledger(&db, "race_v1_applied").await, (600, 1));
    assert_eq!(checkpoint(&db, "race").await, Some((head, Some(1))));
    let _ = writeln!(
        std::io::stderr(),
        "lease off: {} applications for 600 events (the rest rolled back by the checkpoint's compare-and-set)",
        model.applies()
    );
    for (h, t) in [(h1, t1), (h2, t2)] {
        h.shutdown();
        t.await.unwrap().unwrap();
    }
}
