//! Sharding for a billion users, scaled down: users placed across 16 SQLite stores by region
//! (geo routing) and, within a region, by jump hash of their id; a search by name across every
//! shard (scatter-gather) beside the same search served by one denormalised name index (the
//! read model a projection would keep), timed side by side; the distribution; and how many
//! users move when a 17th shard joins.
//!
//! ```text
//! cargo run --release --example social_shards --features shard -- [--users 20000]
//! ```
#![allow(clippy::print_stdout, reason = "an example prints what it shows")]

use std::{
    io::Write,
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use rusqlite::{Connection, params};
use tower::{ServiceExt, service_fn, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError,
    rng::SplitMix64,
    shard::{
        Geo, GeoKey, Jump, Modulo, Partial, Route, ScatterGather, SortLimit, Strategy, plan_moves,
    },
};

/// The shards of each region: Europe 0–3, the Americas 4–11, Asia-Pacific 12–15.
const REGIONS: [(&str, std::ops::Range<usize>); 3] = [("eu", 0..4), ("us", 4..12), ("ap", 12..16)];
/// How many shards.
const SHARDS: usize = 16;
/// How many names a search returns.
const LIMIT: usize = 10;

/// One user.
#[derive(Clone, Debug, PartialEq, Eq)]
struct User {
    id: u64,
    name: String,
    region: &'static str,
}

/// A name made of syllables, reproducible from the generator.
fn name(rng: &mut SplitMix64) -> String {
    const SYLLABLES: [&str; 16] = [
        "an", "be", "ca", "di", "el", "fo", "ga", "hi", "jo", "ka", "li", "ma", "no", "ra", "si",
        "ta",
    ];
    let n = 2 + (rng.next_u64() % 2) as usize;
    (0..n)
        .map(|_| SYLLABLES[(rng.next_u64() % 16) as usize])
        .collect()
}

/// One shard's search: a name prefix in, (name, id) pairs out.
type ShardSearch = BoxCloneSyncService<String, Vec<(String, u64)>, BoxError>;

/// A shard's store: an in-memory SQLite database behind a lock.
type Store = Arc<Mutex<Connection>>;

fn store() -> Result<Store, BoxError> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL);
         CREATE INDEX users_name ON users (name);",
    )?;
    Ok(Arc::new(Mutex::new(conn)))
}

/// Names starting with `prefix` in `conn`, at most `LIMIT`, as (name, id).
fn search(conn: &Connection, table: &str, prefix: &str) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT name, id FROM {table} WHERE name >= ?1 AND name < ?1 || char(1114111) ORDER BY name, id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![prefix, LIMIT as i64], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    rows.collect()
}

/// Runs the example with `args` (without the program name), writing to `out`.
pub(crate) async fn run(args: &[String], out: &mut (impl Write + Send)) -> ExitCode {
    let users = match args {
        [] => 20_000,
        [flag, n] if flag == "--users" => match n.parse::<u64>() {
            Ok(n) if (100..=1_000_000).contains(&n) => n,
            _ => return usage(out),
        },
        _ => return usage(out),
    };
    match show(users, out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(out: &mut impl Write) -> ExitCode {
    let _ = writeln!(
        out,
        "usage: social_shards [--users N]   (N from 100 to 1000000)"
    );
    ExitCode::from(2)
}

async fn show(n: u64, out: &mut (impl Write + Send)) -> Result<(), BoxError> {
    let geo = Geo::new(REGIONS.iter().map(|(r, s)| (*r, s.clone())).collect(), "us")?;
    let stores: Vec<Store> = (0..SHARDS).map(|_| store()).collect::<Result<_, _>>()?;
    // The denormalised index: every user's name in one table, as a projection of the users'
    // events would keep it (here written beside each insert).
    let index = store()?;
    let mut rng = SplitMix64::new(2026);
    let mut counts = [0u64; SHARDS];
    let mut ids = Vec::with_capacity(usize::try_from(n)?);
    {
        let mut conns: Vec<_> = stores
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
            .collect();
        let mut idx = index.lock().unwrap_or_else(PoisonError::into_inner);
        let txs: Vec<_> = conns
            .iter_mut()
            .map(|c| c.transaction())
            .collect::<Result<_, _>>()?;
        let itx = idx.transaction()?;
        for id in 0..n {
            // A quarter of the users in Europe, half in the Americas, a quarter in Asia-Pacific:
            // each region has shards in proportion.
            let region = match rng.next_u64() % 4 {
                0 => "eu",
                1 | 2 => "us",
                _ => "ap",
            };
            let user = User {
                id,
                name: name(&mut rng),
                region,
            };
            let Route::To(shard) = geo.route(&GeoKey {
                region: region.to_owned(),
                key: id,
            }) else {
                return Err("geo routing refused a user".into());
            };
            txs[shard].execute(
                "INSERT INTO users (id, name, region) VALUES (?1, ?2, ?3)",
                params![user.id, user.name, user.region],
            )?;
            itx.execute(
                "INSERT INTO users (id, name, region) VALUES (?1, ?2, ?3)",
                params![user.id, user.name, user.region],
            )?;
            counts[shard] += 1;
            ids.push(id);
        }
        for tx in txs {
            tx.commit()?;
        }
        itx.commit()?;
    }
    let mean = n as f64 / SHARDS as f64;
    let (min, max) = (
        counts.iter().min().copied().unwrap_or(0),
        counts.iter().max().copied().unwrap_or(0),
    );
    writeln!(
        out,
        "{n} users over {SHARDS} shards by region (eu 0-3, us 4-11, ap 12-15), then jump hash of the id"
    )?;
    for (region, span) in REGIONS {
        let in_region: Vec<String> = counts[span.clone()].iter().map(u64::to_string).collect();
        writeln!(out, "  {region}: {}", in_region.join(" "))?;
    }
    writeln!(out, "users per shard: min {min}, max {max}, mean {mean:.0}")?;

    // The same search two ways.
    let shard_services: Vec<ShardSearch> = stores
        .iter()
        .map(|s| {
            let s = s.clone();
            BoxCloneSyncService::new(service_fn(move |prefix: String| {
                let s = s.clone();
                async move {
                    let conn = s.lock().unwrap_or_else(PoisonError::into_inner);
                    Ok::<_, BoxError>(search(&conn, "users", &prefix)?)
                }
            }))
        })
        .collect();
    let scatter = ScatterGather::new(
        shard_services,
        SortLimit::new(LIMIT, |u: &(String, u64)| u.clone()),
    )
    .concurrency(SHARDS)
    .timeout(Duration::from_secs(1))
    .partial(Partial::Fail);
    let prefix = "ka";
    let rounds = 50u32;
    let start = Instant::now();
    let mut gathered = Vec::new();
    for _ in 0..rounds {
        gathered = scatter.clone().oneshot(prefix.to_owned()).await?.value;
    }
    let scatter_ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    let start = Instant::now();
    let mut indexed = Vec::new();
    for _ in 0..rounds {
        let conn = index.lock().unwrap_or_else(PoisonError::into_inner);
        indexed = search(&conn, "users", prefix)?;
    }
    let index_ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    let names: Vec<String> = gathered
        .iter()
        .take(3)
        .map(|(name, id)| format!("{name} #{id}"))
        .collect();
    writeln!(
        out,
        "search names starting {prefix:?}, first {LIMIT}: scatter-gather over {SHARDS} shards {scatter_ms:.3} ms; the name index {index_ms:.3} ms; same answer: {} ({}, ...)",
        if gathered == indexed { "yes" } else { "NO" },
        names.join(", ")
    )?;

    // Growing from 16 to 17 shards.
    let jump = plan_moves(&Jump::new(16), &Jump::new(17), &ids).fraction();
    let modulo = plan_moves(&Modulo::new(16), &Modulo::new(17), &ids).fraction();
    writeln!(
        out,
        "going from 16 to 17 shards moves {:.2}% of users by jump hash (the least possible is {:.2}%), {:.2}% by modulo",
        jump * 100.0,
        100.0 / 17.0,
        modulo * 100.0
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    run(
        &std::env::args().skip(1).collect::<Vec<_>>(),
        &mut std::io::stdout(),
    )
    .await
}
