//! The Redis rate limiter against real Redis (the one `scripts/test --with-servers` starts;
//! `TP_REDIS_URL`), side by side in one run: the in-process GCRA limiter, this crate's Redis
//! limiter (one Lua script per check), and the floor of any Redis limiter, a raw `EVALSHA` of a
//! script that does nothing on the same connection. One task; each check is a round trip on
//! loopback.
//!
//! Without `TP_REDIS_URL` it prints why and measures nothing.
//!
//! `scripts/test --with-servers -- cargo bench --features full --bench ratelimit_redis`

mod support;

use criterion::{criterion_group, criterion_main};
use tower_patterns::{
    key::{AsciiKey, KeyFn, key_fn},
    ratelimit::{GcraLimiter, Limiter, Rate, redis::RedisLimiter},
};

const RATE: Rate = Rate::per_second(1_000_000_000).burst(4_000);

/// The 16 tenants' keys, made once (a clone shares its bytes).
fn tenant(i: u64) -> AsciiKey {
    static KEYS: std::sync::OnceLock<Vec<AsciiKey>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        (0..16)
            .map(|t| AsciiKey::try_from(format!("tenant-{t}").as_str()).expect("a valid key"))
            .collect()
    })[(i % 16) as usize]
        .clone()
}

type ByTenant = KeyFn<fn(&u64) -> Result<AsciiKey, tower_patterns::KeyError>>;

fn by_tenant(i: &u64) -> Result<AsciiKey, tower_patterns::KeyError> {
    Ok(tenant(*i))
}

fn redis(c: &mut criterion::Criterion) {
    let Ok(url) = std::env::var("TP_REDIS_URL") else {
        eprintln!(
            "ratelimit_redis: TP_REDIS_URL is not set (run it under scripts/test --with-servers); skipped"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _context = rt.enter();
    let mut group = c.benchmark_group("ratelimit_redis_single");
    let mut i = 0u64;

    let gcra: GcraLimiter<ByTenant, AsciiKey> = GcraLimiter::builder("bench_gcra")
        .key(key_fn(by_tenant as fn(&u64) -> _))
        .rate(RATE)
        .build()
        .expect("a limiter");
    group.bench_function("gcra_in_process", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            match Limiter::check(&gcra, &i) {
                tower_patterns::ratelimit::Decision::Now(r) => r.expect("admitted"),
                tower_patterns::ratelimit::Decision::Later(_) => unreachable!("in process"),
            }
        })
    });

    let limiter = RedisLimiter::builder("bench_redis")
        .key(key_fn(by_tenant as fn(&u64) -> _))
        .url(url.clone())
        .rate(RATE)
        .build()
        .expect("a Redis limiter");
    group.bench_function("tower_patterns_redis", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let decision = Limiter::check(&limiter, &i);
            rt.block_on(async move {
                match decision {
                    tower_patterns::ratelimit::Decision::Now(r) => r,
                    tower_patterns::ratelimit::Decision::Later(f) => f.await,
                }
            })
            .expect("admitted")
        })
    });

    let client = redis::Client::open(url).expect("a Redis URL");
    let mut conn = rt
        .block_on(redis::aio::ConnectionManager::new(client))
        .expect("a Redis connection");
    let script = redis::Script::new("return 1");
    group.bench_function("raw_evalsha_floor", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            rt.block_on(
                script
                    .key(tenant(i).as_str())
                    .invoke_async::<i64>(&mut conn),
            )
            .expect("an answer")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = redis
}
criterion_main!(benches);
