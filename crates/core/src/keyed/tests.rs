//! Tests of the bounded keyed map.
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

#[test]
fn stays_within_its_bound_under_a_flood_of_distinct_keys() {
    let map: KeyedMap<u64, Arc<()>> = KeyedMap::builder().max_entries(1_000).build().unwrap();
    let mut peak = 0;
    for key in 0..1_000_000u64 {
        map.get_or_insert_with(key, || Arc::new(()));
        if key % 10_000 == 9_999 {
            map.sync();
            peak = peak.max(map.len());
            assert!(map.len() <= 1_000, "{} entries after {key} keys", map.len());
        }
    }
    map.sync();
    assert!(map.len() <= 1_000);
    assert!(peak > 0, "entries were kept at all");
}

#[test]
fn the_bound_holds_as_len_and_entries_see_it_without_a_sync() {
    let map: KeyedMap<u64, Arc<()>> = KeyedMap::builder().max_entries(1_000).build().unwrap();
    for key in 0..100_000u64 {
        map.get_or_insert_with(key, || Arc::new(()));
        assert!(map.len() <= 1_000, "{} entries after {key} keys", map.len());
        if key % 1_000 == 999 {
            let listed = map.entries().count();
            assert!(listed <= 1_000, "{listed} entries listed after {key} keys");
        }
    }
    assert!(
        map.len() >= 900,
        "the map is kept nearly full: {}",
        map.len()
    );
    // The same through the other ways in.
    for key in 100_000..200_000u64 {
        map.insert(key, Arc::new(()));
        map.get_or_replace_with(key + 1_000_000, |_| true, || Arc::new(()));
        assert!(map.len() <= 1_000, "{} entries after {key} keys", map.len());
    }
    assert!(map.entries().count() <= 1_000);
}

#[test]
fn lookups_of_present_keys_run_no_maintenance() {
    let map: KeyedMap<u64, u64> = KeyedMap::builder().max_entries(10).build().unwrap();
    for key in 0..10 {
        map.get_or_insert_with(key, || key);
    }
    assert_eq!(
        map.unsynced.load(Ordering::Relaxed),
        10,
        "below the bound: no sync"
    );
    for key in 0..10 {
        map.get_or_insert_with(key, || unreachable!());
    }
    assert_eq!(
        map.unsynced.load(Ordering::Relaxed),
        10,
        "hits count nothing"
    );
    assert_eq!(map.get_or_replace_with(3, |_| false, || 30), 30, "replaced");
    assert_eq!(map.get_or_replace_with(4, |_| true, || 40), 4, "kept");
    assert_eq!(
        map.unsynced.load(Ordering::Relaxed),
        10,
        "a replacement adds nothing"
    );
    // The slack of a map of 10 is one entry: the 11th key is within it, the 12th passes it.
    assert_eq!(map.slack, 1);
    map.get_or_insert_with(10, || 10);
    assert_eq!(
        map.unsynced.load(Ordering::Relaxed),
        11,
        "the 11th is within the slack"
    );
    map.get_or_insert_with(11, || 11);
    assert_eq!(
        map.unsynced.load(Ordering::Relaxed),
        0,
        "the 12th passed the slack: synced"
    );
    assert_eq!(map.len(), 10);
}

#[test]
fn a_full_map_runs_the_maintenance_once_per_slack_of_new_keys() {
    let map: KeyedMap<u64, u64> = KeyedMap::builder().max_entries(6_400).build().unwrap();
    assert_eq!(map.slack, 100);
    for key in 0..6_400 {
        map.get_or_insert_with(key, || key);
    }
    map.sync();
    assert_eq!(map.len(), 6_400, "full");
    let before = map.maintenance_runs.load(Ordering::Relaxed);
    for key in 10_000..20_000 {
        map.get_or_insert_with(key, || key);
    }
    let runs = map.maintenance_runs.load(Ordering::Relaxed) - before;
    // 10,000 new keys over a slack of 100: about one run per 101 keys.
    assert!(
        runs <= 100,
        "{runs} runs of the maintenance for 10,000 new keys"
    );
    assert!(runs >= 1, "the maintenance ran once the slack was passed");
    // Reading the length or the listing runs what is pending, and the bound holds.
    assert!(map.len() <= 6_400, "{} entries", map.len());
    assert!(map.entries().count() <= 6_400);
}

#[test]
fn len_and_entries_run_the_pending_maintenance_within_the_slack() {
    // A slack of 100: 50 new keys in a full map run no maintenance on insert, so only
    // `len` and `entries` keep the bound.
    let map: KeyedMap<u64, u64> = KeyedMap::builder().max_entries(6_400).build().unwrap();
    for key in 0..6_400 {
        map.get_or_insert_with(key, || key);
    }
    map.sync();
    for key in 10_000..10_050 {
        map.get_or_insert_with(key, || key);
    }
    assert_eq!(map.unsynced.load(Ordering::Relaxed), 50, "no run on insert");
    assert!(
        map.entries().count() <= 6_400,
        "the listing keeps the bound"
    );
    assert_eq!(
        map.unsynced.load(Ordering::Relaxed),
        0,
        "the listing ran it"
    );
    for key in 20_000..20_050 {
        map.get_or_insert_with(key, || key);
    }
    assert_eq!(map.unsynced.load(Ordering::Relaxed), 50, "no run on insert");
    assert!(map.len() <= 6_400, "the length keeps the bound");
    assert_eq!(map.unsynced.load(Ordering::Relaxed), 0, "the length ran it");

    // When what is pending cannot pass the bound (at most 50 counted and 50 added, in a
    // map of 100), neither runs it.
    let map: KeyedMap<u64, u64> = KeyedMap::builder().max_entries(100).build().unwrap();
    for key in 0..50 {
        map.get_or_insert_with(key, || key);
    }
    assert!(map.len() <= 50);
    assert_eq!(map.entries().count(), 50);
    assert_eq!(
        map.unsynced.load(Ordering::Relaxed),
        50,
        "nothing past the bound"
    );
    // Nor when it reaches the bound exactly: 50 counted and 50 added.
    map.sync();
    assert_eq!(map.len(), 50);
    for key in 50..100 {
        map.get_or_insert_with(key, || key);
    }
    assert_eq!(map.len(), 50, "as of the last maintenance");
    assert_eq!(
        map.unsynced.load(Ordering::Relaxed),
        50,
        "at the bound, not past it"
    );
}

#[test]
fn frequently_used_keys_survive_a_flood() {
    let map: KeyedMap<u64, u64> = KeyedMap::builder().max_entries(100).build().unwrap();
    // Ten keys in steady use (10 calls each per round) against 50,000 one-off keys.
    for round in 0..50 {
        for _ in 0..10 {
            for hot in 0..10 {
                map.get_or_insert_with(hot, || hot);
            }
        }
        for cold in 0..1_000 {
            let key = 1_000 + round * 1_000 + cold;
            map.get_or_insert_with(key, || key);
        }
    }
    map.sync();
    let kept = (0..10).filter(|hot| map.get(hot).is_some()).count();
    assert_eq!(kept, 10, "only {kept} of 10 hot keys kept");
}

#[test]
fn init_runs_once_per_key() {
    let map: KeyedMap<&str, usize> = KeyedMap::builder().build().unwrap();
    let inits = AtomicUsize::new(0);
    for _ in 0..10 {
        map.get_or_insert_with("k", || inits.fetch_add(1, Ordering::SeqCst));
    }
    assert_eq!(inits.load(Ordering::SeqCst), 1);
    map.remove("k");
    assert!(map.get("k").is_none());
    map.insert("j", 5);
    map.sync();
    assert_eq!(map.entries().count(), 1);
}

#[test]
fn settings_are_validated_and_applied() {
    let err = KeyedMap::<u8, u8>::builder().max_entries(0).build();
    assert_eq!(err.unwrap_err().field(), "max_entries");
    let err = KeyedMapBuilder::<u8, u8>::default()
        .idle_timeout(Duration::ZERO)
        .build();
    assert_eq!(err.unwrap_err().field(), "idle_timeout");
    // Set as one `KeyBounds`, errors name the setting the user wrote.
    let bounds = |max_keys, idle| {
        KeyedMap::<u8, u8>::builder()
            .bounds(KeyBounds { max_keys, idle })
            .build()
            .unwrap_err()
            .field()
    };
    assert_eq!(bounds(0, None), "key_bounds");
    assert_eq!(bounds(1, Some(Duration::ZERO)), "key_bounds");

    let map = KeyedMapBuilder::<u8, u8>::default()
        .max_entries(7)
        .idle_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    assert_eq!(map.max_entries(), 7);
    assert_eq!(
        map.cache.policy().time_to_idle(),
        Some(Duration::from_secs(3))
    );
    let forever = KeyedMapBuilder::<u8, u8>::default()
        .no_idle_timeout()
        .build()
        .unwrap();
    assert_eq!(forever.cache.policy().time_to_idle(), None);

    // A builder clone keeps the settings; both print them.
    let builder = KeyedMapBuilder::<u8, u8>::default()
        .max_entries(9)
        .idle_timeout(Duration::from_secs(4));
    let copy = builder.clone();
    assert_eq!(
        format!("{copy:?}"),
        "KeyedMapBuilder { max_entries: 9, idle_timeout: Some(4s) }"
    );
    assert_eq!(format!("{builder:?}"), format!("{copy:?}"));
    let map = copy.build().unwrap();
    assert_eq!(map.max_entries(), 9);
    assert!(map.is_empty());
    map.insert(1, 1);
    map.sync();
    assert!(!map.is_empty());
    assert_eq!(
        format!("{map:?}"),
        "KeyedMap { entries: 1, max_entries: Some(9), idle_timeout: Some(4s) }"
    );
    // Clones share the entries and the count of what is not yet maintained.
    let clone = map.clone();
    clone.insert(2, 2);
    assert_eq!(map.unsynced.load(Ordering::Relaxed), 1);
    assert_eq!(map.get(&2), Some(2));
    assert_eq!(clone.max_entries(), 9);
}

#[test]
fn sharded_bounds_never_exceed_the_bound_and_lose_at_most_an_eighth() {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    for max in [1u64, 7, 8, 100, 1_000, 10_000, 100_000, 1 << 40] {
        let (shards, capacity) = sharded_bound(max);
        assert!(shards.is_power_of_two(), "{max}: {shards}");
        assert_eq!(capacity % shards as u64, 0, "{max}");
        assert!(capacity <= max, "{max}: {capacity}");
        assert!(capacity >= max - max / 8, "{max}: {capacity}");
        if max >= 1_000 {
            // Four shards per core at least up to the bound's own limit, as quick_cache would.
            assert!(shards >= (cores * 4).min(64), "{max}: {shards} shards");
        }
    }
}
