//! Routes of kind `strangler`: a sticky split between two upstream groups over real HTTP,
//! changed through the migration's handle and by reloads, keyed by the verified consumer.

mod support;

use std::collections::HashMap;

use support::{TestGateway, Upstream, get, key_hash};
use tower_patterns_gateway::GatewayConfig;
use tower_patterns_strangler::{Mode, Share};

fn split_config(legacy: &Upstream, new: &Upstream, mode: &str) -> String {
    format!(
        r#"
[upstreams.monolith]
addresses = ["{}"]
[upstreams.users]
addresses = ["{}"]

[[routes]]
name = "users"
prefix = "/api/users"
[routes.strangler]
legacy = "monolith"
new = "users"
{mode}
key = "header:x-user"

[[routes]]
name = "rest"
prefix = "/"
upstream = "monolith"
"#,
        legacy.addr, new.addr
    )
}

/// The port of the upstream that answered.
async fn port(gw: &TestGateway, path: &str, user: &str) -> u16 {
    let answer = get(&gw.url(path), &[("x-user", user)]).await;
    assert_eq!(answer.status, 200, "{path} for {user}");
    answer.json()["port"].as_u64().unwrap() as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_route_is_sticky_and_changes_by_handle_and_reload() {
    let (legacy, new) = (Upstream::start().await, Upstream::start().await);
    let gw = TestGateway::start(&split_config(&legacy, &new, "mode = \"split\"\nsplit = 50")).await;
    let mut side = HashMap::new();
    for round in 0..2 {
        for u in 0..1000 {
            let user = format!("user-{u}");
            let p = port(&gw, &format!("/api/users/{u}"), &user).await;
            assert_eq!(
                *side.entry(user).or_insert(p),
                p,
                "user-{u} moved in round {round}"
            );
        }
    }
    let on_new = side.values().filter(|p| **p == new.addr.port()).count();
    assert!(
        (470..=530).contains(&on_new),
        "{on_new} of 1000 on the new side"
    );
    // Outside the route, the monolith.
    assert_eq!(port(&gw, "/api/orders", "user-1").await, legacy.addr.port());

    // The handle moves the route at once.
    let handle = gw.gateway.migration("users").expect("a migration");
    assert_eq!(
        handle.set_mode("users", Mode::New).unwrap(),
        Mode::Split(Share::HALF)
    );
    for u in 0..20 {
        assert_eq!(
            port(&gw, "/api/users/1", &format!("user-{u}")).await,
            new.addr.port()
        );
    }
    // A reload that leaves the route's table alone keeps the migration and its state...
    let reloader = gw.gateway.reloader();
    let mut same = split_config(&legacy, &new, "mode = \"split\"\nsplit = 50");
    same.push_str("\n[[routes]]\nname = \"extra\"\nprefix = \"/extra\"\nupstream = \"users\"\n");
    gw.rewrite(&same);
    reloader.reload_now().unwrap();
    assert_eq!(
        gw.gateway.migration("users").unwrap().mode("users"),
        Some(Mode::New)
    );
    // ...and one that changes it applies the file's mode.
    gw.rewrite(&split_config(&legacy, &new, "mode = \"legacy\""));
    reloader.reload_now().unwrap();
    assert_eq!(
        gw.gateway.migration("users").unwrap().mode("users"),
        Some(Mode::Legacy)
    );
    for u in 0..20 {
        assert_eq!(
            port(&gw, "/api/users/1", &format!("user-{u}")).await,
            legacy.addr.port()
        );
    }
    let counts = gw
        .gateway
        .migration("users")
        .unwrap()
        .counts("users")
        .unwrap();
    assert_eq!(counts.legacy, 20, "a fresh migration counts from zero");
    assert!(gw.gateway.migration("rest").is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_by_consumer_a_spoofed_identity_header_changes_nothing() {
    let (legacy, new) = (Upstream::start().await, Upstream::start().await);
    let mut consumers = String::new();
    for i in 0..40 {
        consumers.push_str(&format!(
            "[[consumers]]\nid = \"c{i}\"\napi_keys_sha256 = [\"{}\"]\n",
            key_hash(&format!("key-{i}"))
        ));
    }
    let toml = format!(
        r#"
[auth.keys]
api_key = {{ header = "x-api-key" }}

{consumers}
[upstreams.monolith]
addresses = ["{}"]
[upstreams.users]
addresses = ["{}"]

[[routes]]
name = "users"
prefix = "/"
auth = "keys"
[routes.strangler]
legacy = "monolith"
new = "users"
mode = "split"
split = 50
"#,
        legacy.addr, new.addr
    );
    let gw = TestGateway::start(&toml).await;
    let mut sides = Vec::new();
    for i in 0..40 {
        let key = format!("key-{i}");
        let first = get(&gw.url("/x"), &[("x-api-key", &key)]).await.json()["port"].as_u64();
        for spoof in ["c0", "c1", "c2", "c3", "c4", "c5"] {
            let again = get(
                &gw.url("/x"),
                &[("x-api-key", &key), ("x-consumer-id", spoof)],
            )
            .await
            .json()["port"]
                .as_u64();
            assert_eq!(first, again, "consumer c{i} moved by a spoofed header");
        }
        sides.push(first == Some(u64::from(new.addr.port())));
    }
    let on_new = sides.iter().filter(|s| **s).count();
    assert!(
        (8..=32).contains(&on_new),
        "{on_new} of 40 consumers on the new side"
    );
    gw.stop().await;
}

#[test]
fn bad_strangler_tables_are_refused_at_their_line() {
    let head = "[upstreams.monolith]\naddresses = [\"127.0.0.1:9101\"]\n[upstreams.users]\naddresses = [\"127.0.0.1:9102\"]\n\n[[routes]]\nname = \"users\"\nprefix = \"/api/users\"\n[routes.strangler]\nlegacy = \"monolith\"\n";
    let cases: &[(&str, usize, &str)] = &[
        ("new = \"nowhere\"\n", 11, "no upstream group \"nowhere\""),
        ("new = \"users\"\nmode = \"half\"\n", 12, "is not a mode"),
        ("new = \"users\"\nmode = \"split\"\n", 12, "needs split"),
        (
            "new = \"users\"\nmode = \"split\"\nsplit = 120\n",
            13,
            "percentage from 0 to 100",
        ),
        (
            "new = \"users\"\nmode = \"new\"\nsplit = 20\n",
            13,
            "split is for mode",
        ),
        (
            "new = \"users\"\nkey = \"consumer\"\n",
            12,
            "needs the route to have auth",
        ),
        ("new = \"users\"\nkey = \"cookie\"\n", 12, "is not a key"),
        (
            "new = \"users\"\nnew_tenants = [\"bad tenant\"]\n",
            12,
            "is not a tenant id",
        ),
        (
            "new = \"users\"\nramp = { steps = [50, 10] }\n",
            12,
            "steps increase",
        ),
        (
            "new = \"users\"\nmode = \"new\"\nramp = { steps = [10, 100] }\n",
            13,
            "drop mode",
        ),
        (
            "new = \"users\"\nmode = \"split\"\nramp = { steps = [10, 100] }\n",
            13,
            "drop mode",
        ),
        (
            "new = \"users\"\nshadow = { ignore = [\"no-slash\"] }\n",
            12,
            "is not a JSON Pointer",
        ),
        ("new = \"users\"\nsplit_percent = 3\n", 12, "unknown field"),
        (
            "new = \"users\"\nupstream = \"users\"\n",
            12,
            "unknown field",
        ),
    ];
    for (tail, line, message) in cases {
        let text = format!("{head}{tail}");
        let err = GatewayConfig::parse(&text, "gateway.toml").expect_err(tail);
        let shown = err.to_string();
        assert!(shown.contains(message), "{tail:?}: {shown}");
        assert!(
            shown.starts_with(&format!("gateway.toml:{line}:")),
            "{tail:?}: {shown}"
        );
    }
    // A route with a strangler takes no upstream.
    let both = "[upstreams.monolith]\naddresses = [\"127.0.0.1:9101\"]\n[[routes]]\nname = \"x\"\nprefix = \"/\"\nupstream = \"monolith\"\n[routes.strangler]\nlegacy = \"monolith\"\nnew = \"monolith\"\n";
    let err = GatewayConfig::parse(both, "gateway.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("takes no upstream"), "{err}");
    // A good one parses.
    let good = format!("{head}new = \"users\"\nmode = \"split\"\nsplit = 12.5\nramp_free = 1\n");
    assert!(
        GatewayConfig::parse(&good, "gateway.toml").is_err(),
        "unknown keys refused"
    );
    let good = format!(
        "{head}new = \"users\"\nramp = {{ steps = [10, 25, 50, 100], hold = \"5m\", window = \"30s\" }}\nshadow = {{ ignore = [\"/meta/request_id\"], noise_baseline = true }}\n"
    );
    GatewayConfig::parse(&good, "gateway.toml").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_and_key_of_the_file_is_applied() {
    let (legacy, new) = (Upstream::start().await, Upstream::start().await);
    // A split of 100% sends every keyed caller to the new side, and a request without a key
    // (no header, an empty one, or two) to legacy.
    let all = split_config(&legacy, &new, "mode = \"split\"\nsplit = 100");
    let gw = TestGateway::start(&all).await;
    assert_eq!(port(&gw, "/api/users/1", "u1").await, new.addr.port());
    let no_keys: [&[(&str, &str)]; 3] =
        [&[], &[("x-user", "")], &[("x-user", "a"), ("x-user", "b")]];
    for headers in no_keys {
        let answer = get(&gw.url("/api/users/1"), headers).await;
        assert_eq!(answer.json()["port"], legacy.addr.port(), "{headers:?}");
    }
    gw.stop().await;
    // Mode new: everything to the new side; mode shadow: legacy answers, with shadow set up.
    let gw = TestGateway::start(&split_config(&legacy, &new, "mode = \"new\"")).await;
    assert_eq!(port(&gw, "/api/users/1", "u1").await, new.addr.port());
    gw.stop().await;
    let gw = TestGateway::start(&split_config(&legacy, &new, "mode = \"shadow\"")).await;
    assert_eq!(port(&gw, "/api/users/1", "u1").await, legacy.addr.port());
    let migration = gw.gateway.migration("users").unwrap();
    assert_eq!(migration.mode("users"), Some(Mode::Shadow));
    assert!(migration.shadow().is_some());
    gw.stop().await;
    // Without auth and without a key, the client's address is the key: a split of 100% takes
    // every caller.
    let gw = TestGateway::start(&all.replace("key = \"header:x-user\"\n", "")).await;
    assert_eq!(
        get(&gw.url("/api/users/1"), &[]).await.json()["port"],
        new.addr.port()
    );
    gw.stop().await;
}
