//! The three isolation levels against a real PostgreSQL (provided by `scripts/test`):
//! tenant A can neither read nor write tenant B's rows, including through a connection
//! reused across tenants.
#![cfg(feature = "postgres")]

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio_postgres::{Client, NoTls};
use tower_patterns_core::tenant::TenantId;
use tower_patterns_tenant::{
    Registry, TenantStatus,
    postgres::{
        PostgresTenants, TENANT_ROLES, TenantPools, TenantSchema, begin_for_tenant,
        begin_in_schema, database_sql, listen, rls_sql,
    },
};
use tower_patterns_testkit::{Server, server_url};

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

    // By any name: schema-qualified, ONLY, TABLE, a CTE; reads see acme's rows only and
    // writes of globex's rows touch nothing.
    let tx = begin_for_tenant(&mut app, &acme).await.unwrap();
    for sql in [
        "SELECT count(*) FROM public.orders",
        "SELECT count(*) FROM ONLY public.orders",
        "SELECT count(*) FROM (TABLE orders) t",
        "WITH o AS (SELECT * FROM public.orders) SELECT count(*) FROM o",
    ] {
        let n: i64 = tx.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(n, 2, "{sql}");
    }
    for sql in [
        "UPDATE public.orders SET total = 0 WHERE tenant_id = 'globex'",
        "DELETE FROM ONLY public.orders WHERE id = 3",
        "UPDATE orders SET tenant_id = 'acme' WHERE id = 3",
    ] {
        assert_eq!(tx.execute(sql, &[]).await.unwrap(), 0, "{sql}");
    }
    // Moving its own row to globex fails the policy's WITH CHECK.
    assert!(
        tx.execute("UPDATE orders SET tenant_id = 'globex' WHERE id = 1", &[])
            .await
            .is_err()
    );
    drop(tx);

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

/// The SQLSTATE of `result`'s error, or `None` when it succeeded.
fn state<T>(result: Result<T, tokio_postgres::Error>) -> Option<String> {
    result.err().map(|e| {
        e.code()
            .map_or_else(|| format!("{e:?}"), |c| c.code().to_owned())
    })
}

const DENIED: &str = "42501"; // insufficient_privilege
const NO_SUCH_TABLE: &str = "42P01"; // undefined_table

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_per_tenant_denies_other_schemas_by_any_name_under_the_tenants_role() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let (db_url, admin) = fresh(&url, "schema").await;
    let db = db_url.rsplit_once('/').unwrap().1.to_owned();
    let prefix = unique("s");
    let app_role = format!("{prefix}_app");
    // The application's login: no superuser, and NOINHERIT, so that outside a tenant's
    // transaction it holds no tenant's privileges (provisioning refuses any other).
    admin
        .batch_execute(&format!(
            "CREATE ROLE {app_role} LOGIN PASSWORD 'app' NOSUPERUSER NOBYPASSRLS NOINHERIT"
        ))
        .await
        .unwrap();
    let (acme, globex) = ids();
    let schema = |t: &TenantId| TenantSchema::with_prefix(&prefix, t).unwrap();
    for t in [&acme, &globex] {
        // Twice: provisioning is idempotent.
        for _ in 0..2 {
            admin
                .batch_execute(&schema(t).provision_sql(&app_role).unwrap())
                .await
                .unwrap();
        }
    }
    let mut app = connect(&with_user(&db_url, &app_role, "app")).await;
    // Each tenant's migration and data, through the library: its role owns its table.
    for t in [&acme, &globex] {
        let tx = begin_in_schema(&mut app, &schema(t)).await.unwrap();
        tx.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL)")
            .await
            .unwrap();
        tx.execute("INSERT INTO orders VALUES (1, $1)", &[&t.as_str()])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    // One connection, alternating tenants: each sees its own rows under the plain name.
    for t in [&acme, &globex, &acme] {
        let tx = begin_in_schema(&mut app, &schema(t)).await.unwrap();
        let note: String = tx
            .query_one("SELECT note FROM orders WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(note, t.as_str());
        let user: String = tx
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(user, schema(t).name());
        tx.commit().await.unwrap();
    }

    // As acme, every way of naming globex's table is refused, reads and writes alike.
    let other = schema(&globex).quoted();
    let attempts = [
        (format!("SELECT note FROM {other}.orders"), DENIED),
        (format!("SELECT note FROM \"{db}\".{other}.orders"), DENIED),
        (
            format!("INSERT INTO {other}.orders VALUES (2, 'acme')"),
            DENIED,
        ),
        (format!("UPDATE {other}.orders SET note = 'acme'"), DENIED),
        (format!("DELETE FROM {other}.orders"), DENIED),
        (format!("TRUNCATE {other}.orders"), DENIED),
        (format!("DROP TABLE {other}.orders"), DENIED),
        (format!("CREATE TABLE {other}.planted (x int)"), DENIED),
        (format!("GRANT USAGE ON SCHEMA {other} TO PUBLIC"), DENIED),
        // A search_path changed inside the transaction does not reach it either.
        (
            format!("SELECT set_config('search_path', '{other}', true); SELECT note FROM orders"),
            NO_SUCH_TABLE,
        ),
    ];
    for (sql, expected) in &attempts {
        let tx = begin_in_schema(&mut app, &schema(&acme)).await.unwrap();
        assert_eq!(
            state(tx.batch_execute(sql).await).as_deref(),
            Some(*expected),
            "{sql}"
        );
    }
    // What the guarantee does not cover, as the guide says: SQL that changes the role itself
    // (PostgreSQL checks SET ROLE against the login, a member of every tenant's role).
    let tx = begin_in_schema(&mut app, &schema(&acme)).await.unwrap();
    let sql = format!("SET LOCAL ROLE {other}; SELECT note FROM {other}.orders");
    assert_eq!(state(tx.batch_execute(&sql).await), None, "{sql}");
    drop(tx);
    // Outside a tenant's transaction the application's own role reaches no tenant's table.
    for t in [&acme, &globex] {
        let sql = format!("SELECT note FROM {}.orders", schema(t).quoted());
        assert_eq!(
            state(app.query(&sql, &[]).await).as_deref(),
            Some(DENIED),
            "{sql}"
        );
    }
    let err = app.query("SELECT note FROM orders", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some(NO_SUCH_TABLE));

    // globex's rows are as globex wrote them.
    let tx = begin_in_schema(&mut app, &schema(&globex)).await.unwrap();
    let notes = tx.query("SELECT note FROM orders", &[]).await.unwrap();
    assert_eq!(
        notes
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>(),
        ["globex"]
    );
    tx.commit().await.unwrap();
    // The tenants' roles cannot log in and are nobody's superusers.
    let logins = admin
        .query_one(
            "SELECT bool_or(rolcanlogin OR rolsuper OR rolbypassrls) FROM pg_roles WHERE rolname = ANY($1)",
            &[&vec![schema(&acme).name().to_owned(), schema(&globex).name().to_owned()]],
        )
        .await
        .unwrap();
    assert!(!logins.get::<_, bool>(0));
    assert!(TenantSchema::new(&TenantId::new(&"x".repeat(64)).unwrap()).is_err());
    assert!(TenantSchema::with_prefix("Bad prefix", &acme).is_err());
    assert!(schema(&acme).provision_sql("app; DROP TABLE x").is_err());

    drop(app);
    for t in [&acme, &globex] {
        let name = schema(t).quoted();
        admin
            .batch_execute(&format!("DROP SCHEMA {name} CASCADE; DROP ROLE {name};"))
            .await
            .unwrap();
    }
    admin
        .batch_execute(&format!("DROP ROLE {app_role}"))
        .await
        .unwrap();
}

static DB_PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn tenant_database(t: &TenantId) -> String {
    format!("{}_{t}", DB_PREFIX.get().expect("set by the test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_per_tenant_logs_in_as_the_tenant_and_cannot_open_another() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let admin = connect(&url).await;
    DB_PREFIX.set(unique("dbt")).unwrap();
    let (acme, globex) = ids();
    for t in [&acme, &globex] {
        for statement in database_sql(&tenant_database(t), Some("it's secret")).unwrap() {
            admin.batch_execute(&statement).await.unwrap();
        }
    }
    let base = tokio_postgres::Config::from_str(&url).unwrap();
    let pools = TenantPools::new(base.clone(), tenant_database, 1, 2)
        .unwrap()
        .credentials(|_, config| {
            config.password("it's secret");
        });
    // Each tenant's migration and data, through its own pool: its role owns its table.
    for t in [&acme, &globex] {
        let client = pools.pool(t).unwrap().get().await.unwrap();
        client
            .batch_execute(&format!(
                "CREATE TABLE orders (note text); INSERT INTO orders VALUES ('{t}');"
            ))
            .await
            .unwrap();
    }
    for t in [&acme, &globex, &acme] {
        let client = pools.pool(t).unwrap().get().await.unwrap();
        let notes = client.query("SELECT note FROM orders", &[]).await.unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].get::<_, String>(0), t.as_str());
        // Logged in as the tenant's own role, which is no superuser.
        let who = client
            .query_one(
                "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(who.get::<_, String>(0), tenant_database(t));
        assert!(!who.get::<_, bool>(1));
        // Another database cannot be named from here.
        let sql = format!(
            "SELECT note FROM \"{}\".public.orders",
            tenant_database(&globex)
        );
        if t == &acme {
            assert_eq!(
                state(client.query(&sql, &[]).await).as_deref(),
                Some("0A000"), // feature_not_supported: cross-database references
            );
        }
    }
    assert!(pools.len() <= 1, "at most one pool is kept");

    // A pool of globex's database that logs in as acme (a mix-up in the configuration) is
    // refused at the door: CONNECT is revoked from everyone but the database's own role.
    let acme_role = tenant_database(&acme);
    let mixed_up = TenantPools::new(base, tenant_database, 1, 1)
        .unwrap()
        .credentials(move |_, config| {
            config.user(&acme_role).password("it's secret");
        });
    let err = mixed_up.pool(&globex).unwrap().get().await.unwrap_err();
    let deadpool_postgres::PoolError::Backend(err) = err else {
        panic!("{err:?}")
    };
    assert_eq!(err.code().map(|c| c.code()), Some(DENIED), "{err:?}");
    assert!(database_sql("bad\"name", None).is_err());
    assert!(database_sql(&"x".repeat(64), None).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_for_a_tenant_build_one_pool() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let built = Arc::new(AtomicUsize::new(0));
    let pools = Arc::new(
        TenantPools::new(
            tokio_postgres::Config::from_str(&url).unwrap(),
            |_| "postgres".to_owned(),
            8,
            1,
        )
        .unwrap()
        .credentials({
            let built = built.clone();
            move |_, config| {
                built.fetch_add(1, Ordering::SeqCst);
                config.user("postgres");
            }
        }),
    );
    let acme = TenantId::new("acme").unwrap();
    const RACERS: usize = 64;
    let barrier = Arc::new(std::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (pools, barrier, acme) = (pools.clone(), barrier.clone(), acme.clone());
            std::thread::spawn(move || {
                barrier.wait();
                pools.pool(&acme).unwrap()
            })
        })
        .collect();
    let got: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(built.load(Ordering::SeqCst), 1, "one pool built");
    // And every racer holds that one pool: its single connection, taken through the first
    // racer's handle, is the one every handle reports.
    let held = got[0].get().await.unwrap();
    for pool in &got {
        let status = pool.status();
        assert_eq!((status.size, status.available), (1, 0));
    }
    drop(held);
    assert_eq!(pools.len(), 1);
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

/// Waits until `listener` has applied `count` notifications: a bounded loop of short waits
/// on its counter, not a fixed sleep.
async fn applied(listener: &tower_patterns_tenant::postgres::RegistryListener, count: u64) {
    for _ in 0..2_000 {
        if listener.notifications() >= count {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!(
        "{} notifications applied, {count} expected",
        listener.notifications()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_registry_drops_changed_entries_when_notified() {
    use http::{Request, Response, StatusCode};
    use tower::{ServiceBuilder, ServiceExt, service_fn};
    use tower_patterns_core::http::ErrorResponseLayer;
    use tower_patterns_tenant::{TenancyLayer, TenantContext, hash_api_key};

    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let (db_url, client) = fresh(&url, "notify").await;
    let config = tokio_postgres::Config::from_str(&db_url).unwrap();
    let pool =
        deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(config.clone(), NoTls))
            .max_size(2)
            .build()
            .unwrap();
    let store = PostgresTenants::new(pool.clone());
    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // idempotent, triggers included
    client
        .batch_execute(
            "INSERT INTO tp_tenants VALUES ('acme', 'gold', 'active'), ('globex', 'free', 'active');",
        )
        .await
        .unwrap();
    let add_key = |key: &'static str, tenant: &'static str| {
        let client = &client;
        async move {
            client
                .execute(
                    "INSERT INTO tp_tenant_api_keys VALUES ($1, $2)",
                    &[&hash_api_key(key).as_slice(), &tenant],
                )
                .await
                .unwrap();
        }
    };
    add_key("sk_acme", "acme").await;
    // An hour's cache: whatever shows below within the test came from a notification.
    let hour = std::time::Duration::from_secs(3600);
    let registry = Registry::with_ttls(store, hour, hour, 1_000);
    let listener = listen(registry.clone(), config).await.unwrap();
    // A second registry on the same tables that nobody notifies: what the cache alone does.
    let deaf = Registry::with_ttls(PostgresTenants::new(pool), hour, hour, 1_000);

    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(
            TenancyLayer::builder("test")
                .registry(registry.clone())
                .api_key("x-api-key")
                .build()
                .unwrap(),
        )
        .service(service_fn(|req: Request<()>| async move {
            let ctx = TenantContext::of(&req).unwrap();
            Ok::<_, std::convert::Infallible>(Response::new(format!("{} {}", ctx.id(), ctx.plan())))
        }));
    let call = |key: &'static str| {
        let svc = svc.clone();
        async move {
            let req = Request::builder()
                .header("x-api-key", key)
                .body(())
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            (res.status(), res.into_body())
        }
    };
    let (acme, _) = ids();
    let sk_acme = hash_api_key("sk_acme");
    assert_eq!(call("sk_acme").await, (StatusCode::OK, "acme gold".into()));
    assert_eq!(deaf.by_api_key(&sk_acme).await.unwrap(), Some(acme.clone()));
    assert_eq!(&*deaf.get(&acme).await.unwrap().unwrap().plan, "gold");
    // Ask for a key before it exists: the unknown answer is cached too.
    assert_eq!(call("sk_late").await.0, StatusCode::UNAUTHORIZED);

    let expected = std::cell::Cell::new(listener.notifications());
    let change = async |sql: &str, notifications: u64| {
        client.batch_execute(sql).await.unwrap();
        expected.set(expected.get() + notifications);
        applied(&listener, expected.get()).await;
    };
    // A plan change, then a suspension: the next request sees each.
    change(
        "UPDATE tp_tenants SET plan = 'platinum' WHERE id = 'acme'",
        1,
    )
    .await;
    assert_eq!(
        call("sk_acme").await,
        (StatusCode::OK, "acme platinum".into())
    );
    change(
        "UPDATE tp_tenants SET status = 'suspended' WHERE id = 'acme'",
        1,
    )
    .await;
    assert_eq!(call("sk_acme").await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        &*deaf.get(&acme).await.unwrap().unwrap().plan,
        "gold",
        "without the notification the cache would have served the old record for an hour"
    );
    change(
        "UPDATE tp_tenants SET status = 'active' WHERE id = 'acme'",
        1,
    )
    .await;
    assert_eq!(call("sk_acme").await.0, StatusCode::OK);
    // A key moved to another tenant, then revoked.
    change("UPDATE tp_tenant_api_keys SET tenant_id = 'globex'", 1).await;
    assert_eq!(
        call("sk_acme").await,
        (StatusCode::OK, "globex free".into())
    );
    change("DELETE FROM tp_tenant_api_keys", 1).await;
    assert_eq!(call("sk_acme").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        deaf.by_api_key(&sk_acme).await.unwrap(),
        Some(acme.clone()),
        "without the notification the revoked key would have worked for an hour"
    );
    // A key issued after it was asked for (the unknown answer was cached).
    change(
        &format!(
            "INSERT INTO tp_tenant_api_keys VALUES ('\\x{}', 'acme')",
            hash_api_key("sk_late")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        1,
    )
    .await;
    assert_eq!(
        call("sk_late").await,
        (StatusCode::OK, "acme platinum".into())
    );
    // A TRUNCATE announces everything: the keys of both tenants go at once.
    change("TRUNCATE tp_tenant_api_keys", 1).await;
    assert_eq!(call("sk_late").await.0, StatusCode::UNAUTHORIZED);
    // Deleting a tenant deletes its keys (cascade) and announces both.
    add_key("sk_globex", "globex").await;
    expected.set(expected.get() + 1);
    applied(&listener, expected.get()).await;
    assert_eq!(call("sk_globex").await.0, StatusCode::OK);
    change("DELETE FROM tp_tenants WHERE id = 'globex'", 2).await;
    assert_eq!(call("sk_globex").await.0, StatusCode::UNAUTHORIZED);
}

/// The backends of `db` that listen for the registry's changes.
async fn listeners(admin: &Client, db: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query = 'LISTEN tp_tenant_changes'",
            &[&db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_clears_the_cache_on_a_lost_connection_reconnects_and_stops_when_dropped() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let (db_url, admin) = fresh(&url, "relisten").await;
    let db = db_url.rsplit_once('/').unwrap().1.to_owned();
    let config = tokio_postgres::Config::from_str(&db_url).unwrap();
    let registry_over = |config: &tokio_postgres::Config| {
        let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
            config.clone(),
            NoTls,
        ))
        .max_size(1)
        .build()
        .unwrap();
        let hour = std::time::Duration::from_secs(3600);
        Registry::with_ttls(PostgresTenants::new(pool), hour, hour, 100)
    };
    let registry = registry_over(&config);
    registry.store().migrate().await.unwrap();
    admin
        .batch_execute("INSERT INTO tp_tenants VALUES ('acme', 'gold', 'active')")
        .await
        .unwrap();
    let (acme, _) = ids();
    let listener = listen(registry.clone(), config.clone()).await.unwrap();
    assert_eq!(&*registry.get(&acme).await.unwrap().unwrap().plan, "gold");
    let old = listeners(&admin, &db).await;
    assert_eq!(old.len(), 1);
    // The listening connection is cut: the cache is cleared (changes may go unannounced), and
    // the listener comes back (after 100 ms) on a new connection.
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&old[0]])
        .await
        .unwrap();
    let mut back = Vec::new();
    for _ in 0..2_000 {
        back = listeners(&admin, &db).await;
        if back.len() == 1 && back != old {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(back.len() == 1 && back != old, "listening again: {back:?}");
    assert!(
        registry.cached(&acme).is_none(),
        "cleared when the connection was lost"
    );
    assert_eq!(&*registry.get(&acme).await.unwrap().unwrap().plan, "gold");
    let before = listener.notifications();
    admin
        .batch_execute("UPDATE tp_tenants SET plan = 'platinum'")
        .await
        .unwrap();
    applied(&listener, before + 1).await;
    assert_eq!(
        &*registry.get(&acme).await.unwrap().unwrap().plan,
        "platinum"
    );

    // Dropped, it stops: a change that a second listener (on another registry) sees is not
    // applied to this registry any more.
    drop(listener);
    let witness_registry = registry_over(&config);
    let witness = listen(witness_registry, config).await.unwrap();
    admin
        .batch_execute("UPDATE tp_tenants SET plan = 'free'")
        .await
        .unwrap();
    applied(&witness, 1).await;
    assert_eq!(
        &*registry.get(&acme).await.unwrap().unwrap().plan,
        "platinum",
        "no listener, no invalidation"
    );
}

/// The error PostgreSQL raised for `result`: its message and hint.
fn raised<T>(result: Result<T, tokio_postgres::Error>) -> String {
    let err = result.err().expect("provisioning was refused");
    let db = err.as_db_error().expect("a PostgreSQL error");
    assert_eq!(db.code().code(), "P0001", "{db:?}"); // raise_exception
    format!("{} ({})", db.message(), db.hint().unwrap_or_default())
}

/// The roles `role` is a direct member of, and whether `schema` exists.
async fn granted(admin: &Client, role: &str, schema: &str) -> (Vec<String>, bool) {
    let roles = admin
        .query(
            "SELECT g.rolname::text FROM pg_auth_members m
             JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
             WHERE u.rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exists = admin
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    (roles, exists)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_provisioning_refuses_a_role_of_the_tenants_name_that_it_did_not_make() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let admin = connect(&url).await;
    let prefix = unique("f");
    let schema = |t: &str| TenantSchema::with_prefix(&prefix, &TenantId::new(t).unwrap()).unwrap();
    let app_role = format!("{prefix}_app");
    let other_app = format!("{prefix}_web");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {app_role} LOGIN NOINHERIT;
             CREATE ROLE {other_app} LOGIN NOINHERIT;
             CREATE ROLE {prefix}_admin NOLOGIN CREATEROLE;
             CREATE ROLE {prefix}_boss NOLOGIN;"
        ))
        .await
        .unwrap();
    // The tenant `app` is the application's own role: refused before any SQL, as are the
    // marker group as the application or as a tenant.
    assert!(schema("app").provision_sql(&app_role).is_err());
    assert!(schema("acme").provision_sql(TENANT_ROLES).is_err());
    assert!(
        TenantSchema::with_prefix("tower", &TenantId::new("patterns_tenants").unwrap())
            .unwrap()
            .provision_sql(&app_role)
            .is_err()
    );

    // A tenant of our own provisioning (which creates the marker group), provisioned again.
    for _ in 0..2 {
        admin
            .batch_execute(&schema("acme").provision_sql(&app_role).unwrap())
            .await
            .unwrap();
    }
    admin
        .batch_execute(&format!(
            "CREATE ROLE {prefix}_sneaky NOLOGIN CREATEROLE IN ROLE {TENANT_ROLES}"
        ))
        .await
        .unwrap();
    // Roles of a tenant's name that provisioning did not make: another application's login,
    // a CREATEROLE role, a plain role outside the marker group, a CREATEROLE role inside it.
    // Each is refused, and nothing is granted or created.
    for tenant in ["app", "admin", "boss", "sneaky"] {
        let s = schema(tenant);
        let message = raised(
            admin
                .batch_execute(&s.provision_sql(&other_app).unwrap())
                .await,
        );
        assert!(
            message.contains("is not a tenant role"),
            "{tenant}: {message}"
        );
        assert_eq!(granted(&admin, &other_app, s.name()).await, (vec![], false));
    }
    let acme = schema("acme").name().to_owned();
    assert_eq!(
        granted(&admin, &app_role, &acme).await,
        (vec![acme.clone()], true)
    );
    assert_eq!(granted(&admin, &acme, &acme).await.0, [TENANT_ROLES]);

    admin
        .batch_execute(&format!(
            "DROP SCHEMA \"{acme}\" CASCADE; DROP ROLE \"{acme}\";
             DROP ROLE {app_role}, {other_app}, {prefix}_admin, {prefix}_boss, {prefix}_sneaky;"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_provisioning_refuses_an_inheriting_or_superuser_login() {
    let Some(url) = server_url(Server::Postgres) else {
        return;
    };
    let admin = connect(&url).await;
    let prefix = unique("l");
    let schema = |t: &str| TenantSchema::with_prefix(&prefix, &TenantId::new(t).unwrap()).unwrap();
    let inherits = format!("{prefix}_inh");
    let superuser = format!("{prefix}_su");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {inherits} LOGIN;
             CREATE ROLE {superuser} LOGIN SUPERUSER NOINHERIT;"
        ))
        .await
        .unwrap();
    // A login that inherits (PostgreSQL's default) would hold every tenant's privileges
    // outside a tenant's transaction; a superuser bypasses them all. Nothing is granted.
    let acme = schema("acme").name().to_owned();
    let message = raised(
        admin
            .batch_execute(&schema("acme").provision_sql(&inherits).unwrap())
            .await,
    );
    assert!(
        message.contains(&format!("ALTER ROLE \"{inherits}\" NOINHERIT")),
        "{message}"
    );
    assert_eq!(granted(&admin, &inherits, &acme).await, (vec![], false));
    let message = raised(
        admin
            .batch_execute(&schema("acme").provision_sql(&superuser).unwrap())
            .await,
    );
    assert!(message.contains("superuser"), "{message}");
    assert_eq!(granted(&admin, &superuser, &acme).await, (vec![], false));
    let missing = format!("{prefix}_nobody");
    let message = raised(
        admin
            .batch_execute(&schema("acme").provision_sql(&missing).unwrap())
            .await,
    );
    assert!(message.contains("does not exist"), "{message}");

    // Once NOINHERIT, the same login is served, and holds nothing of the tenant's outside
    // its transactions.
    admin
        .batch_execute(&format!("ALTER ROLE {inherits} NOINHERIT"))
        .await
        .unwrap();
    admin
        .batch_execute(&schema("acme").provision_sql(&inherits).unwrap())
        .await
        .unwrap();
    assert_eq!(
        granted(&admin, &inherits, &acme).await,
        (vec![acme.clone()], true)
    );

    admin
        .batch_execute(&format!(
            "DROP SCHEMA \"{acme}\" CASCADE; DROP ROLE \"{acme}\";
             DROP ROLE {inherits}, {superuser};"
        ))
        .await
        .unwrap();
}
