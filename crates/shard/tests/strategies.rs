//! Placement properties over 100,000 keys on 16 shards: balance, keys moved by a 17th shard,
//! and identical placement in another process.

use std::{
    borrow::Cow,
    collections::HashSet,
    process::Command,
    sync::{Barrier, Mutex},
};

use proptest::prelude::*;
use tower_patterns_shard::{
    Directory, Geo, GeoKey, Jump, Modulo, Range, Rendezvous, Ring, Route, ShardKey, SlotMove,
    Strategy, plan_moves,
};

const KEYS: u64 = 100_000;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user-{i}")).collect()
}

/// The largest shard's load over the mean.
fn max_over_mean<P: Strategy>(s: &P, keys: &[String]) -> f64 {
    let mut counts = vec![0u64; s.shards()];
    for k in keys {
        counts[s.route(k.as_str()).shard()] += 1;
    }
    let mean = keys.len() as f64 / s.shards() as f64;
    *counts.iter().max().unwrap() as f64 / mean
}

#[test]
fn every_strategy_spreads_100k_keys_over_16_shards() {
    let keys = keys();
    // Expected bounds: hash-based placement at 6,250 keys per shard has a standard deviation
    // of about 77 keys (1.2%); the ring's virtual nodes add the arcs' unevenness.
    let bounds: [(&str, f64); 5] = [
        ("modulo", max_over_mean(&Modulo::new(16), &keys)),
        ("jump", max_over_mean(&Jump::new(16), &keys)),
        ("rendezvous", max_over_mean(&Rendezvous::new(16), &keys)),
        (
            "ring/160",
            max_over_mean(&Ring::new(16, 160).unwrap(), &keys),
        ),
        (
            "directory",
            max_over_mean(&Directory::new(16).unwrap(), &keys),
        ),
    ];
    for (name, ratio) in bounds {
        let limit = if name.starts_with("ring") { 1.15 } else { 1.05 };
        assert!(ratio <= limit, "{name}: max/mean {ratio:.3} over {limit}");
    }
    // Range on numeric keys spreads evenly when boundaries are even.
    let range = Range::new((1..16).map(|i| i * KEYS / 16).collect()).unwrap();
    let numeric: Vec<u64> = (0..KEYS).collect();
    let mut counts = [0u64; 16];
    for k in &numeric {
        counts[range.route(k).shard()] += 1;
    }
    assert!(counts.iter().all(|c| *c == KEYS / 16));
}

#[test]
fn a_17th_shard_moves_the_minimum_for_consistent_strategies() {
    let keys = keys();
    let moved = |name: &str, f: f64| (name.to_owned(), f);
    let results = [
        moved(
            "jump",
            plan_moves(&Jump::new(16), &Jump::new(17), &keys).fraction(),
        ),
        moved(
            "rendezvous",
            plan_moves(&Rendezvous::new(16), &Rendezvous::new(17), &keys).fraction(),
        ),
        moved(
            "ring",
            plan_moves(
                &Ring::new(16, 160).unwrap(),
                &Ring::new(17, 160).unwrap(),
                &keys,
            )
            .fraction(),
        ),
    ];
    for (name, f) in results {
        assert!(
            (f - 1.0 / 17.0).abs() < 0.012,
            "{name} moved {f:.4}, about 1/17 expected"
        );
    }
    let modulo = plan_moves(&Modulo::new(16), &Modulo::new(17), &keys).fraction();
    assert!(
        (modulo - 16.0 / 17.0).abs() < 0.01,
        "modulo moved {modulo:.4}"
    );
    // Keys that move with jump and rendezvous only move to the new shard.
    let plan = plan_moves(&Jump::new(16), &Jump::new(17), &keys);
    assert!(plan.moved.iter().all(|(_, _, to)| *to == 16));
}

#[test]
fn the_directory_moves_exactly_the_planned_slots() {
    let dir = Directory::new(16).unwrap();
    let moves = dir.plan_resize(17);
    let fraction = moves.len() as f64 / 16_384.0;
    assert!((fraction - 1.0 / 17.0).abs() < 0.001, "{fraction}");
    assert!(moves.iter().all(|m| m.to == 16));
    let slots: HashSet<u16> = moves.iter().map(|m| m.slot).collect();
    assert_eq!(slots.len(), moves.len(), "each slot moves once");
    assert_eq!(dir.shards(), 16);
    dir.begin(&moves).unwrap();
    assert_eq!(dir.shards(), 17, "the new shard counts from the first move");
    dir.complete(&moves).unwrap();
    let owners = dir.owners();
    let mut counts = vec![0usize; 17];
    for o in owners {
        counts[o] += 1;
    }
    assert!(counts.iter().all(|c| (963..=964).contains(c)), "{counts:?}");
    assert_eq!(dir.version(), 2);
    assert!(
        dir.complete(&moves).is_err(),
        "a finished move cannot finish twice"
    );
}

#[test]
fn moves_out_of_range_are_refused_not_a_panic() {
    let dir = Directory::new(4).unwrap();
    let bad = [
        SlotMove {
            slot: 16_384,
            from: 0,
            to: 1,
        },
        SlotMove {
            slot: u16::MAX,
            from: 3,
            to: 1,
        },
        // 65,536 + 1 would be cut to shard 1 as a u16.
        SlotMove {
            slot: 0,
            from: 0,
            to: 65_537,
        },
        SlotMove {
            slot: 0,
            from: 0,
            to: 16_384,
        },
        SlotMove {
            slot: 0,
            from: usize::MAX,
            to: 1,
        },
    ];
    for m in bad {
        let err = dir.begin(&[m]).expect_err("refused");
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(dir.complete(&[m]).is_err());
    }
    assert_eq!(dir.version(), 0, "nothing was published");
    assert_eq!(dir.shards(), 4);
    // The largest valid move still works.
    let last = SlotMove {
        slot: 16_383,
        from: 3,
        to: 16_383,
    };
    dir.begin(&[last]).unwrap();
    dir.complete(&[last]).unwrap();
    assert_eq!(dir.owners()[16_383], 16_383);
}

#[test]
fn a_resize_fills_each_shard_below_its_share_and_no_other() {
    // 2 → 4 shards: each new shard takes half of each old shard's surplus.
    let dir = Directory::new(2).unwrap();
    let moves = dir.plan_resize(4);
    let count = |f: &dyn Fn(&SlotMove) -> bool| moves.iter().filter(|m| f(m)).count();
    assert_eq!(count(&|m| m.to == 2), 4_096);
    assert_eq!(count(&|m| m.to == 3), 4_096);
    assert_eq!(count(&|m| m.from == 0), 4_096);
    assert_eq!(count(&|m| m.from == 1), 4_096);

    // 3 shards owning 5,462, 5,460 and 5,462 slots (shares 5,462, 5,461, 5,461): shard 0 is
    // at its share and takes nothing; one slot moves from shard 2 to shard 1.
    let dir = Directory::new(3).unwrap();
    let step = SlotMove {
        slot: (0..16_384u16)
            .find(|s| dir.route(&InSlot(*s)) == Route::To(1))
            .unwrap(),
        from: 1,
        to: 2,
    };
    dir.begin(&[step]).unwrap();
    dir.complete(&[step]).unwrap();
    let moves = dir.plan_resize(3);
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!((moves[0].from, moves[0].to), (2, 1));
}

/// A key that lives in a given directory slot.
struct InSlot(u16);

impl ShardKey for InSlot {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.to_le_bytes().to_vec())
    }
    fn slot(&self) -> u16 {
        self.0
    }
}

const THREADS: usize = 8;

#[test]
fn concurrent_migrations_of_distinct_slots_lose_no_update() {
    // Each thread moves its own 256 slots (all owned by shard 0 at first), one begin and one
    // complete per slot: 4,096 changes racing on one table.
    const PER_THREAD: usize = 256;
    let dir = Directory::new(4).unwrap();
    let start = Barrier::new(THREADS);
    let plan = |t: usize| {
        (0..PER_THREAD).map(move |i| SlotMove {
            slot: (t * PER_THREAD + i) as u16,
            from: 0,
            to: 1 + t % 3,
        })
    };
    let failures = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (dir, start) = (&dir, &start);
                s.spawn(move || {
                    start.wait();
                    let mut failures = 0;
                    for m in plan(t) {
                        failures += usize::from(dir.begin(&[m]).is_err());
                        failures += usize::from(dir.complete(&[m]).is_err());
                    }
                    failures
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(failures, 0, "a begin lost before its complete");
    for m in (0..THREADS).flat_map(plan) {
        assert_eq!(dir.route(&InSlot(m.slot)), Route::To(m.to), "{m:?}");
    }
    assert_eq!(
        dir.version(),
        (2 * THREADS * PER_THREAD) as u64,
        "one version per change"
    );
    let moved = (THREADS * PER_THREAD) as u16;
    assert_eq!(
        dir.route(&InSlot(moved)),
        Route::To(0),
        "other slots stay put"
    );
}

#[test]
fn concurrent_migrations_of_the_same_slots_start_each_move_once() {
    // Every thread tries to move the same 2,048 slots, each to its own target: for each slot
    // exactly one begin wins, and its complete makes its target the owner.
    const SLOTS: u16 = 2048;
    let dir = Directory::new(4).unwrap();
    let start = Barrier::new(THREADS);
    let winners = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (dir, start, winners) = (&dir, &start, &winners);
            s.spawn(move || {
                start.wait();
                for slot in 0..SLOTS {
                    let m = SlotMove {
                        slot,
                        from: 0,
                        to: 1 + t % 3,
                    };
                    if dir.begin(&[m]).is_ok() {
                        winners.lock().unwrap().push(m);
                        dir.complete(&[m]).unwrap();
                    }
                }
            });
        }
    });
    let mut winners = winners.into_inner().unwrap();
    winners.sort_unstable_by_key(|m| m.slot);
    let slots: Vec<u16> = winners.iter().map(|m| m.slot).collect();
    assert_eq!(
        slots,
        (0..SLOTS).collect::<Vec<_>>(),
        "each slot's move began exactly once"
    );
    for m in &winners {
        assert_eq!(dir.route(&InSlot(m.slot)), Route::To(m.to), "{m:?}");
    }
    assert_eq!(dir.version(), 2 * u64::from(SLOTS));
}

#[test]
fn geo_keeps_regions_in_their_groups() {
    let geo = Geo::new(vec![("eu", 0..4), ("us", 4..12), ("ap", 12..16)], "us").unwrap();
    for i in 0..10_000u64 {
        for (region, span) in [("eu", 0..4), ("us", 4..12), ("ap", 12..16)] {
            let key = GeoKey {
                region: region.into(),
                key: i,
            };
            assert!(span.contains(&geo.route(&key).shard()), "{region}");
        }
        let unknown = GeoKey {
            region: "mars".into(),
            key: i,
        };
        assert!(
            (4..12).contains(&geo.route(&unknown).shard()),
            "fallback group"
        );
    }
    assert!(
        Geo::new(vec![("eu", 0..4), ("us", 3..8)], "eu").is_err(),
        "overlap refused"
    );
}

#[test]
fn bounded_load_ring_skips_a_hot_shard() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let ring = Ring::new(4, 100).unwrap().bounded_load(0.25).unwrap();
    let loads: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
    let key = "hot-key";
    let home = ring.route(key).shard();
    loads[home].store(10, Ordering::Relaxed); // 10 of 10 in flight: far above 1.25 × mean
    let moved = ring.route_with_loads(key, &loads).shard();
    assert_ne!(moved, home, "the overloaded shard is skipped");
    loads[home].store(0, Ordering::Relaxed);
    assert_eq!(ring.route_with_loads(key, &loads).shard(), home);
}

proptest! {
    #[test]
    fn jump_and_rendezvous_place_any_key_in_range(key in any::<u64>(), n in 1usize..1_000) {
        prop_assert!(Jump::new(n).route(&key).shard() < n);
        prop_assert!(Rendezvous::new(n).route(&key).shard() < n);
        prop_assert!(Modulo::new(n).route(&key).shard() < n);
    }

    #[test]
    fn growing_by_one_moves_keys_only_to_the_new_shard(key in any::<u64>(), n in 1usize..200) {
        let (before, after) = (Jump::new(n).route(&key).shard(), Jump::new(n + 1).route(&key).shard());
        prop_assert!(before == after || after == n);
        let (before, after) = (
            Rendezvous::new(n).route(&key).shard(),
            Rendezvous::new(n + 1).route(&key).shard(),
        );
        prop_assert!(before == after || after == n);
    }
}

/// Placements of the first 1,000 keys by every strategy, as text.
fn placements() -> String {
    let keys = keys();
    let ring = Ring::new(16, 160).unwrap();
    let dir = Directory::new(16).unwrap();
    keys.iter()
        .take(1_000)
        .map(|k| {
            let k = k.as_str();
            format!(
                "{} {} {} {} {}",
                Modulo::new(16).route(k).shard(),
                Jump::new(16).route(k).shard(),
                Rendezvous::new(16).route(k).shard(),
                ring.route(k).shard(),
                dir.route(k).shard()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn placements_are_identical_in_another_process() {
    if std::env::var_os("TP_SHARD_PLACEMENTS_CHILD").is_some() {
        // The child's whole job: write its placements for the parent to compare.
        use std::io::Write;
        std::io::stdout()
            .write_all(placements().as_bytes())
            .unwrap();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "placements_are_identical_in_another_process",
            "--exact",
            "--nocapture",
            "--quiet",
        ])
        .env("TP_SHARD_PLACEMENTS_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let child = String::from_utf8(out.stdout).unwrap();
    let mine = placements();
    assert!(
        child.contains(&mine),
        "the child process placed keys differently"
    );
}
