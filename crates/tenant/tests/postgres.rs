//! The seed's three isolation levels against a real PostgreSQL (provided by `scripts/test`):
//! tenant A can neither read nor write tenant B's rows, including through a connection
//! reused across tenants.
#![cfg(feature = "postgres")]

use std::str::FromStr;

use tokio_postgres::{Client, NoTls};
use tower_patterns_core::{
    tenant::TenantId,
    test_util::{Server, server_url},
};
use tower_patterns_tenant::{
    Registry, TenantStatus,
    postgres::{
        PostgresTenants, TenantPools, TenantSchema, begin_for_tenant, begin_in_schema, rls_sql,
    },
};

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("tp_tn_{tag}_{}_{nanos}", std::process::id())
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("PostgreSQL answers");
    tokio::spawn(conn);
    client
}

/// A new database; returns its URL and an admin client on it.
async fn fresh(url: &str, tag: &str) -> (String, Client) {
    let admin = connect(url).await;
    let db = unique(tag);
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    let db_url = format!("{base}/{db}");
    let client = connect(&db_url).await;
    (db_url, client)
}

fn with_user(url: &str, user: &str, password: &str) -> String {
    let mut config = tokio_postgres::Config::from_str(url).unwrap();
    config.user(user).password(password);
    let host = "127.0.0.1";
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("postgres").to_owned();
    format!("postgresql://{user}:{password}@{host}:{port}/{db}")
}

fn ids() -> (TenantId, TenantId) {
    (
        TenantId::new("acme").unwrap(),
        TenantId::new("globex").unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_schema_with_forced_rls_isolates_tenants_on_one_connection() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let (db_url, owner) = fresh(&url, "rls").await;
    let role = unique("app");
    owner
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'app' NOSUPERUSER NOBYPASSRLS;
             CREATE TABLE orders (id int PRIMARY KEY, tenant_id text NOT NULL, total int NOT NULL);
             INSERT INTO orders VALUES (1, 'acme', 10), (2, 'acme', 20), (3, 'globex', 30);
             {}",
            rls_sql("orders", &role).unwrap()
        ))
        .await
        .unwrap();
    let (acme, globex) = ids();

    // One connection, as a pool would hand it from tenant to tenant.
    let mut app = connect(&with_user(&db_url, &role, "app")).await;
    let tx = begin_for_tenant(&mut app, &acme).await.unwrap();
    let rows = tx
        .query("SELECT id FROM orders ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        [1, 2]
    );
    // Writes to the other tenant's rows touch nothing; a row for it cannot be written.
    assert_eq!(
        tx.execute("UPDATE orders SET total = 0 WHERE id = 3", &[])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        tx.execute("DELETE FROM orders WHERE tenant_id = 'globex'", &[])
            .await
            .unwrap(),
        0
    );
    let forged = tx
        .execute("INSERT INTO orders VALUES (9, 'globex', 1)", &[])
        .await;
    let forged = forged.unwrap_err();
    let message = forged
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("row-level security"), "{forged:?}");
    drop(tx); // rolled back

    let tx = begin_for_tenant(&mut app, &globex).await.unwrap();
    let rows = tx.query("SELECT id, total FROM orders", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].get::<_, i32>(1),
        30,
        "acme's forged writes did not land"
    );
    tx.execute("INSERT INTO orders VALUES (4, 'globex', 40)", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The same connection after the transaction: the setting is gone, so nothing is visible.
    let leaked = app.query("SELECT id FROM orders", &[]).await.unwrap();
    assert!(
        leaked.is_empty(),
        "a session SET would have leaked globex here"
    );
    // RLS is forced (the owner is bound too; only superusers, like this test's admin, are
    // not), and the app role is no superuser, has no BYPASSRLS and owns nothing.
    let forced = owner
        .query_one(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'orders'",
            &[],
        )
        .await
        .unwrap();
    assert!(forced.get::<_, bool>(0) && forced.get::<_, bool>(1));
    let attrs = owner
        .query_one(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    assert!(!attrs.get::<_, bool>(0) && !attrs.get::<_, bool>(1));

    drop(app);
    owner
        .batch_execute(&format!(
            "DROP TABLE orders; DROP OWNED BY {role}; DROP ROLE {role};"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_per_tenant_sets_the_search_path_per_transaction() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let (_, mut client) = fresh(&url, "schema").await;
    let (acme, globex) = ids();
    for t in [&acme, &globex] {
        let schema = TenantSchema::new(t).unwrap();
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {s}; CREATE TABLE {s}.orders (id int, note text); INSERT INTO {s}.orders VALUES (1, '{t}');",
                s = schema.quoted()
            ))
            .await
            .unwrap();
    }
    // One connection, alternating tenants.
    for t in [&acme, &globex, &acme] {
        let tx = begin_in_schema(&mut client, &TenantSchema::new(t).unwrap())
            .await
            .unwrap();
        let note: String = tx
            .query_one("SELECT note FROM orders WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(note, t.as_str());
        tx.execute("INSERT INTO orders VALUES (2, $1)", &[&t.as_str()])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    // Outside a tenant transaction, unqualified names do not resolve to any tenant.
    let err = client
        .query("SELECT note FROM orders", &[])
        .await
        .unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("does not exist"), "{err:?}");
    let globex_notes = client
        .query("SELECT note FROM \"t_globex\".orders", &[])
        .await
        .unwrap();
    assert!(
        globex_notes
            .iter()
            .all(|r| r.get::<_, String>(0) == "globex")
    );
    assert_eq!(
        globex_notes.len(),
        2,
        "one seeded row, one written as globex"
    );
    assert!(TenantSchema::new(&TenantId::new(&"x".repeat(64)).unwrap()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_per_tenant_routes_to_bounded_pools() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let admin = connect(&url).await;
    let prefix = unique("dbt");
    let (acme, globex) = ids();
    for t in [&acme, &globex] {
        admin
            .batch_execute(&format!("CREATE DATABASE {prefix}_{t}"))
            .await
            .unwrap();
        let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
        let c = connect(&format!("{base}/{prefix}_{t}")).await;
        c.batch_execute(&format!(
            "CREATE TABLE orders (note text); INSERT INTO orders VALUES ('{t}');"
        ))
        .await
        .unwrap();
    }
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.set(prefix.clone()).unwrap();
    let pools = TenantPools::new(
        tokio_postgres::Config::from_str(&url).unwrap(),
        |t| format!("{}_{t}", PREFIX.get().unwrap()),
        1,
        2,
    )
    .unwrap();
    for t in [&acme, &globex, &acme] {
        let client = pools.pool(t).unwrap().get().await.unwrap();
        let notes = client.query("SELECT note FROM orders", &[]).await.unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].get::<_, String>(0), t.as_str());
    }
    assert!(pools.len() <= 1, "at most one pool is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_registry_answers_through_the_cache() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let (db_url, client) = fresh(&url, "registry").await;
    let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
        tokio_postgres::Config::from_str(&db_url).unwrap(),
        NoTls,
    ))
    .max_size(2)
    .build()
    .unwrap();
    let store = PostgresTenants::new(pool);
    store.migrate().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO tp_tenants VALUES ('acme', 'gold', 'active'), ('initech', 'free', 'suspended');",
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO tp_tenant_api_keys VALUES ($1, 'acme')",
            &[&tower_patterns_tenant::hash_api_key("sk_acme").as_slice()],
        )
        .await
        .unwrap();
    let registry = Registry::new(store);
    let (acme, _) = ids();
    let record = registry.get(&acme).await.unwrap().unwrap();
    assert_eq!(&*record.plan, "gold");
    let initech = TenantId::new("initech").unwrap();
    assert_eq!(
        registry.get(&initech).await.unwrap().unwrap().status,
        TenantStatus::Suspended
    );
    assert!(
        registry
            .get(&TenantId::new("nobody").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    let owner = registry
        .by_api_key(&tower_patterns_tenant::hash_api_key("sk_acme"))
        .await
        .unwrap();
    assert_eq!(owner, Some(acme.clone()));
    // Cached: a change in the table shows only after invalidation.
    client
        .batch_execute("UPDATE tp_tenants SET plan = 'platinum' WHERE id = 'acme'")
        .await
        .unwrap();
    assert_eq!(&*registry.get(&acme).await.unwrap().unwrap().plan, "gold");
    registry.invalidate(&acme);
    assert_eq!(
        &*registry.get(&acme).await.unwrap().unwrap().plan,
        "platinum"
    );
}
