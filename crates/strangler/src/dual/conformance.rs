//! What every store must do, checked against the SQLite and PostgreSQL ones.

use super::{
    DualError, Row, Write,
    store::{Deferral, OutboxStore},
};

fn keys(rows: &[Row]) -> Vec<&str> {
    rows.iter().map(|r| r.key.as_str()).collect()
}

/// Runs every check on an empty table.
pub(crate) async fn check<S: OutboxStore>(s: &S) {
    writes_version_and_queue(s).await;
    guard_scan_and_replace(s).await;
    outbox_bookkeeping(s).await;
    ties_converge(s).await;
}

/// Two sides that wrote one key at the same version (two-way dual writes with skewed clocks)
/// end with the same row: at a tie the greater value wins, and a tombstone wins over any.
async fn ties_converge<S: OutboxStore>(s: &S) {
    let value = |r: Option<Row>| r.unwrap().value;
    assert_eq!(
        s.apply(&[Row::new("t:a", "b", 5)]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        s.apply(&[Row::new("t:a", "a", 5)]).await.unwrap(),
        vec![false]
    );
    assert_eq!(value(s.get("t:a").await.unwrap()).unwrap(), "b");
    assert_eq!(
        s.apply(&[Row::new("t:a", "c", 5)]).await.unwrap(),
        vec![true]
    );
    assert_eq!(value(s.get("t:a").await.unwrap()).unwrap(), "c");
    assert_eq!(
        s.apply(&[Row::new("t:a", "c", 5)]).await.unwrap(),
        vec![false],
        "the same row"
    );
    assert_eq!(
        s.apply(&[Row::tombstone("t:a", 5)]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        s.apply(&[Row::new("t:a", "z", 5)]).await.unwrap(),
        vec![false]
    );
    assert!(
        value(s.get("t:a").await.unwrap()).is_none(),
        "the tombstone stays"
    );
    assert_eq!(
        s.apply(&[Row::new("t:a", "a", 4)]).await.unwrap(),
        vec![false],
        "older"
    );
}

async fn writes_version_and_queue<S: OutboxStore>(s: &S) {
    let a = s.write(&Write::put("w:a", "1"), 100, 5).await.unwrap();
    assert_eq!(a.version, 100, "a new key takes the floor");
    let b = s.write(&Write::put("w:a", "2"), 7, 5).await.unwrap();
    assert_eq!(
        b.version, 101,
        "above the stored version when the floor is lower"
    );
    assert!(b.seq > a.seq);
    let c = s.write(&Write::put("w:a", "3"), 500, 6).await.unwrap();
    assert_eq!(c.version, 500);
    let d = s.write(&Write::delete("w:a"), 0, 6).await.unwrap();
    assert_eq!(d.version, 501);
    let row = s.get("w:a").await.unwrap().unwrap();
    assert_eq!(
        row,
        Row::tombstone("w:a", 501),
        "a delete leaves a tombstone"
    );
    // A delete of an unknown key leaves one too (version 1 at least).
    let e = s.write(&Write::delete("w:b"), 0, 6).await.unwrap();
    assert_eq!(e.version, 1);
    assert_eq!(s.get("w:none").await.unwrap(), None);
    let counts = s.outbox_counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.missed),
        (5, 0),
        "one entry per write"
    );
    let due = s.due(6, 100).await.unwrap();
    assert_eq!(due.len(), 5);
    assert_eq!(due[0].seq, a.seq);
    assert_eq!((due[0].key.as_str(), due[0].version), ("w:a", 100));
    // Due at 5 or 6: only the first two are due at 5.
    assert_eq!(s.due(5, 100).await.unwrap().len(), 2);
    // Delivering version 501 of w:a settles all four of its entries.
    assert_eq!(s.settle(&[("w:a".into(), 501)]).await.unwrap(), 4);
    assert_eq!(s.settle(&[("w:b".into(), 1)]).await.unwrap(), 1);
    assert_eq!(s.outbox_counts().await.unwrap().pending, 0);
}

async fn guard_scan_and_replace<S: OutboxStore>(s: &S) {
    let r = |k: &str, v: &str, n| Row::new(k, v.as_bytes().to_vec(), n);
    let stored = s
        .apply(&[r("g:1", "five", 5), r("g:2", "two", 2)])
        .await
        .unwrap();
    assert_eq!(stored, [true, true]);
    // Older versions never overwrite, nor a lesser value at an equal one (see
    // `ties_converge`); a newer one does; tombstones too.
    let stored = s
        .apply(&[r("g:1", "three", 3), r("g:2", "one", 2)])
        .await
        .unwrap();
    assert_eq!(stored, [false, false]);
    assert_eq!(s.get("g:1").await.unwrap().unwrap(), r("g:1", "five", 5));
    let stored = s
        .apply(&[Row::tombstone("g:1", 6), r("g:3", "x", 1)])
        .await
        .unwrap();
    assert_eq!(stored, [true, true]);
    assert_eq!(
        s.apply(&[r("g:1", "old", 4)]).await.unwrap(),
        [false],
        "an older write never brings a deleted row back"
    );
    // Rows by key, in any order.
    let mut got = s
        .rows(&["g:2".into(), "g:1".into(), "nope".into()])
        .await
        .unwrap();
    got.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(got, [Row::tombstone("g:1", 6), r("g:2", "two", 2)]);
    // Key order is byte order: uppercase before lowercase, and "é" after "z".
    for k in ["g:Z", "g:é", "g:z", "g:10"] {
        s.apply(&[r(k, "v", 1)]).await.unwrap();
    }
    let all = s.scan(None, 100).await.unwrap();
    let mut want: Vec<&str> = keys(&all);
    want.sort_unstable();
    assert_eq!(keys(&all), want, "scan in byte order");
    let g: Vec<&str> = keys(&all)
        .into_iter()
        .filter(|k| k.starts_with("g:"))
        .collect();
    assert_eq!(g, ["g:1", "g:10", "g:2", "g:3", "g:Z", "g:z", "g:é"]);
    let page = s.scan(Some("g:2"), 2).await.unwrap();
    assert_eq!(keys(&page), ["g:3", "g:Z"]);
    assert_eq!(
        keys(&s.scan(Some("g:é"), 10).await.unwrap()),
        ["w:a", "w:b"]
    );
    assert!(s.scan(Some("w:b"), 10).await.unwrap().is_empty());
    // Compare-and-set repairs.
    assert!(
        !s.replace("g:2", Some(9), Some(&r("g:2", "x", 1)))
            .await
            .unwrap()
    );
    assert!(
        s.replace("g:2", Some(2), Some(&r("g:2", "down", 1)))
            .await
            .unwrap()
    );
    assert_eq!(s.get("g:2").await.unwrap().unwrap(), r("g:2", "down", 1));
    assert!(
        !s.replace("g:2", None, Some(&r("g:2", "x", 1)))
            .await
            .unwrap()
    );
    assert!(
        s.replace("g:4", None, Some(&r("g:4", "new", 3)))
            .await
            .unwrap()
    );
    assert!(!s.replace("g:4", Some(2), None).await.unwrap());
    assert!(s.replace("g:4", Some(3), None).await.unwrap());
    assert_eq!(s.get("g:4").await.unwrap(), None);
    assert!(!s.replace("g:5", None, None).await.unwrap());
    // A version past SQL's integers is refused, not wrapped.
    let err = s.apply(&[r("g:big", "x", u64::MAX)]).await.unwrap_err();
    assert!(matches!(err, DualError::CorruptRow { .. }), "{err:?}");
}

async fn outbox_bookkeeping<S: OutboxStore>(s: &S) {
    let a = s.write(&Write::put("o:a", "1"), 1, 10).await.unwrap();
    let b = s.write(&Write::put("o:b", "1"), 1, 10).await.unwrap();
    let defer = |seq, attempts, due_ms, missed: Option<u64>| Deferral {
        seq,
        attempts,
        due_ms,
        missed_since_ms: missed,
        error: "secondary busy".into(),
    };
    s.defer(&[defer(a.seq, 1, 50, None), defer(b.seq, 3, 20, Some(15))])
        .await
        .unwrap();
    let due = s.due(30, 10).await.unwrap();
    assert_eq!(due.len(), 1, "a deferred entry waits for its time");
    assert_eq!(
        (due[0].seq, due[0].attempts, due[0].missed_since_ms),
        (b.seq, 3, Some(15))
    );
    assert_eq!(
        s.due(50, 10).await.unwrap()[0].seq,
        b.seq,
        "earliest due first"
    );
    let missed = s.missed(10).await.unwrap();
    assert_eq!(missed.len(), 1);
    assert_eq!(
        (
            missed[0].key.as_str(),
            missed[0].attempts,
            missed[0].since_ms
        ),
        ("o:b", 3, 15)
    );
    assert_eq!(missed[0].last_error.as_deref(), Some("secondary busy"));
    let counts = s.outbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.missed), (2, 1));
    // Settling an older version leaves a newer entry; settling clears the missed record.
    assert_eq!(s.settle(&[("o:b".into(), b.version - 1)]).await.unwrap(), 0);
    assert_eq!(s.settle(&[("o:b".into(), b.version)]).await.unwrap(), 1);
    assert!(s.missed(10).await.unwrap().is_empty());
    // Deferring an entry settled meanwhile does nothing.
    s.defer(&[defer(b.seq, 4, 0, None)]).await.unwrap();
    assert_eq!(s.settle(&[("o:a".into(), a.version)]).await.unwrap(), 1);
    assert_eq!(s.outbox_counts().await.unwrap().pending, 0);
}

/// Plants rows no store would write (through `plant`, raw SQL on table `rows`) and checks
/// that reading them is an error naming the row, never a panic.
pub(crate) async fn corrupt_rows_are_errors<S: OutboxStore>(s: &S, plant: impl AsyncFn(&str)) {
    plant("DELETE FROM rows; INSERT INTO rows (key, value, version) VALUES ('bad', NULL, -3)")
        .await;
    for err in [
        s.scan(None, 10).await.unwrap_err(),
        s.get("bad").await.unwrap_err(),
    ] {
        match err {
            DualError::CorruptRow { key, reason, .. } => {
                assert_eq!(key.as_deref(), Some("bad"));
                assert!(reason.contains("version"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    plant("DELETE FROM rows").await;
}
