//! SQLite shared tables: the scoped API cannot reach another tenant's rows.
#![cfg(feature = "sqlite")]

use rusqlite::{Connection, types::Value};
use tower_patterns_core::tenant::TenantId;
use tower_patterns_tenant::sqlite::{Scoped, ScopedError};

#[test]
fn a_tenant_can_neither_read_nor_write_another_tenants_rows() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE orders (tenant_id TEXT NOT NULL, id INTEGER, total INTEGER)")
        .unwrap();
    let acme = TenantId::new("acme").unwrap();
    let globex = TenantId::new("globex").unwrap();
    let (a, g) = (Scoped::new(&conn, &acme), Scoped::new(&conn, &globex));
    for id in 1..=3 {
        a.insert(
            "orders",
            &[
                ("id", Value::Integer(id)),
                ("total", Value::Integer(10 * id)),
            ],
        )
        .unwrap();
    }
    g.insert(
        "orders",
        &[("id", Value::Integer(1)), ("total", Value::Integer(99))],
    )
    .unwrap();

    let mine = a.select("orders", &["id", "total"], &[]).unwrap();
    assert_eq!(mine.len(), 3);
    let theirs = g
        .select("orders", &["total"], &[("id", Value::Integer(1))])
        .unwrap();
    assert_eq!(theirs, vec![vec![Value::Integer(99)]]);

    // globex updates and deletes "id 2" and "every row": only its own rows are touched.
    assert_eq!(
        g.update("orders", &[("total", Value::Integer(0))], &[])
            .unwrap(),
        1
    );
    assert_eq!(g.delete("orders", &[("id", Value::Integer(2))]).unwrap(), 0);
    assert_eq!(
        a.select("orders", &["total"], &[("id", Value::Integer(2))])
            .unwrap(),
        vec![vec![Value::Integer(20)]]
    );

    // tenant_id cannot be set, forged in a filter, or smuggled in through a name.
    assert!(matches!(
        g.insert("orders", &[("tenant_id", Value::Text("acme".into()))]),
        Err(ScopedError::Name(_))
    ));
    assert!(matches!(
        g.select(
            "orders",
            &["id"],
            &[("tenant_id", Value::Text("acme".into()))]
        ),
        Err(ScopedError::Name(_))
    ));
    assert!(matches!(
        g.select("orders", &["id FROM orders --"], &[]),
        Err(ScopedError::Name(_))
    ));
    assert!(matches!(
        g.delete("orders WHERE 1=1 --", &[]),
        Err(ScopedError::Name(_))
    ));
    // Values are bound, never spliced.
    let injected = g
        .select("orders", &["id"], &[("id", Value::Text("1 OR 1=1".into()))])
        .unwrap();
    assert!(injected.is_empty());
    let all: i64 = conn
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(all, 4, "nothing lost");
}
