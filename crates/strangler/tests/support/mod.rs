//! What the SQLite dual-write tests share: reading a file's rows and outbox with plain SQL.
#![allow(dead_code)]

use std::{collections::BTreeMap, path::Path};

use rusqlite::Connection;

/// A table's rows by key: value (none for a tombstone) and version.
pub(crate) type Rows = BTreeMap<String, (Option<Vec<u8>>, i64)>;

/// Every row of table `users` in the file, read with plain SQL.
pub(crate) fn every_row(path: &Path) -> Rows {
    let c = Connection::open(path).unwrap();
    let mut q = c
        .prepare("SELECT key, value, version FROM users ORDER BY key")
        .unwrap();
    q.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The entries in table `users`'s outbox.
pub(crate) fn outbox_len(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM users_dual_outbox", [], |r| r.get(0))
        .unwrap()
}
