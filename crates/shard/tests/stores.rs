//! Shards as real stores: separate SQLite files, and separate PostgreSQL databases (under
//! `scripts/test`; skipped with a printed reason otherwise). Users are written through the
//! router and must land in exactly the store the strategy names; a scatter-gather count adds
//! up across shards.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tower::{ServiceExt, service_fn};
use tower_patterns_core::{BoxError, KeyError, key::key_fn};
use tower_patterns_shard::{Jump, Merge, ScatterGather, ShardRouter, Strategy};
use tower_patterns_testkit::{Server, server_url};

/// Collects each shard's count (a custom merge).
struct Counts;

impl Merge<Answer> for Counts {
    type Output = Vec<i64>;

    fn empty(&self) -> Vec<i64> {
        Vec::new()
    }

    fn add(&self, merged: &mut Vec<i64>, _shard: usize, answer: Answer) {
        if let Answer::Count(n) = answer {
            merged.push(n);
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert { user: u64, name: String },
    Get { user: u64 },
    Count,
}

#[derive(Debug, PartialEq)]
enum Answer {
    Done,
    Name(Option<String>),
    Count(i64),
}

const SHARDS: usize = 4;
const USERS: u64 = 400;

fn by_user() -> impl tower_patterns_core::KeyExtractor<Op, Key = u64> + Clone {
    key_fn(|op: &Op| match op {
        Op::Insert { user, .. } | Op::Get { user } => Ok(*user),
        Op::Count => Err(KeyError::missing("user id (use scatter-gather to count)")),
    })
}

async fn exercise<S>(shards: Vec<S>) -> Vec<i64>
where
    S: tower::Service<Op, Response = Answer, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let router = ShardRouter::builder("users")
        .shards(shards.clone())
        .strategy(Jump::new(SHARDS))
        .key(by_user())
        .build()
        .unwrap();
    for user in 0..USERS {
        let insert = Op::Insert {
            user,
            name: format!("user-{user}"),
        };
        assert_eq!(router.clone().oneshot(insert).await.unwrap(), Answer::Done);
    }
    for user in [0, 7, 123, USERS - 1] {
        let got = router.clone().oneshot(Op::Get { user }).await.unwrap();
        assert_eq!(got, Answer::Name(Some(format!("user-{user}"))));
    }
    // Each store holds exactly the users the strategy places on it.
    for (shard, svc) in shards.iter().enumerate() {
        for user in 0..USERS {
            let here = svc.clone().oneshot(Op::Get { user }).await.unwrap();
            let expected = Jump::new(SHARDS).route(&user).shard() == shard;
            assert_eq!(
                here != Answer::Name(None),
                expected,
                "user {user} on shard {shard}"
            );
        }
    }
    let counts = ScatterGather::new(shards, Counts)
        .oneshot(Op::Count)
        .await
        .unwrap()
        .value;
    assert_eq!(counts.iter().sum::<i64>(), USERS as i64);
    counts
}

fn count_answer(n: i64) -> Answer {
    Answer::Count(n)
}

#[tokio::test]
async fn shards_as_separate_sqlite_files() {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "tp-shards-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let shards: Vec<_> = (0..SHARDS)
        .map(|i| {
            let conn = rusqlite::Connection::open(dir.join(format!("shard-{i}.db"))).unwrap();
            conn.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
                .unwrap();
            let conn = Arc::new(Mutex::new(conn));
            service_fn(move |op: Op| {
                let conn = conn.clone();
                async move {
                    let conn = conn.lock().unwrap();
                    Ok::<_, BoxError>(match op {
                        Op::Insert { user, name } => {
                            conn.execute(
                                "INSERT INTO users (id, name) VALUES (?1, ?2)",
                                (user as i64, name),
                            )?;
                            Answer::Done
                        }
                        Op::Get { user } => {
                            let mut stmt = conn.prepare("SELECT name FROM users WHERE id = ?1")?;
                            let mut rows = stmt.query([user as i64])?;
                            Answer::Name(match rows.next()? {
                                Some(row) => Some(row.get(0)?),
                                None => None,
                            })
                        }
                        Op::Count => {
                            count_answer(
                                conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?,
                            )
                        }
                    })
                }
            })
        })
        .collect();
    let counts = exercise(shards).await;
    assert_eq!(counts.len(), SHARDS);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn shards_as_separate_postgres_databases() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let base = url
        .rsplit_once('/')
        .map_or(url.as_str(), |(b, _)| b)
        .to_owned();
    let prefix = format!("tp_shard_{}", std::process::id());
    let mut shards = Vec::new();
    for i in 0..SHARDS {
        let db = format!("{prefix}_{i}");
        // One statement per call: CREATE DATABASE cannot run inside a transaction block.
        for statement in [
            format!("DROP DATABASE IF EXISTS {db}"),
            format!("CREATE DATABASE {db}"),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
        let (client, conn) =
            tokio_postgres::connect(&format!("{base}/{db}"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL)")
            .await
            .unwrap();
        let client = Arc::new(client);
        shards.push(service_fn(move |op: Op| {
            let client = client.clone();
            async move {
                Ok::<_, BoxError>(match op {
                    Op::Insert { user, name } => {
                        client
                            .execute(
                                "INSERT INTO users (id, name) VALUES ($1, $2)",
                                &[&(user as i64), &name],
                            )
                            .await?;
                        Answer::Done
                    }
                    Op::Get { user } => {
                        let row = client
                            .query_opt("SELECT name FROM users WHERE id = $1", &[&(user as i64)])
                            .await?;
                        Answer::Name(row.map(|r| r.get(0)))
                    }
                    Op::Count => {
                        let row = client.query_one("SELECT count(*) FROM users", &[]).await?;
                        count_answer(row.get(0))
                    }
                })
            }
        }));
    }
    let counts = exercise(shards).await;
    assert_eq!(counts.len(), SHARDS);
    for i in 0..SHARDS {
        admin
            .batch_execute(&format!("DROP DATABASE {prefix}_{i} WITH (FORCE)"))
            .await
            .unwrap();
    }
}
