//! Hot reload over real HTTP: swaps under load lose no request, a request in flight finishes
//! on the generation it started with, an invalid file is refused and the old configuration
//! stays, a changed file and SIGHUP both reload.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use support::{TestGateway, Upstream, get};

fn config(upstream: std::net::SocketAddr, marker: &str, poll: &str) -> String {
    format!(
        r#"
[reload]
poll_interval = "{poll}"

[upstreams.u]
addresses = ["{upstream}"]

[[routes]]
name = "all"
prefix = "/"
upstream = "u"
request = {{ set_headers = {{ x-generation = "{marker}" }} }}
"#
    )
}

/// The same with a route of its own to a group of its own (`/slow-lane/...`), which the
/// plain configuration does not have.
fn config_with_slow_lane(upstream: std::net::SocketAddr, marker: &str) -> String {
    format!(
        r#"{}
[upstreams.lane]
addresses = ["{upstream}"]

[[routes]]
name = "slow-lane"
prefix = "/slow-lane"
upstream = "lane"
request = {{ strip_prefix = "/slow-lane" }}
"#,
        config(upstream, marker, "0s")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let gw = TestGateway::start(&config_with_slow_lane(a.addr, "0")).await;
    // A slow request in flight across the swaps, on a route (and a group) the first swap
    // removes.
    let slow = tokio::spawn({
        let url = gw.url("/slow-lane/slow/400");
        async move { get(&url, &[]).await.status }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let load: Vec<_> = (0..4)
        .map(|_| {
            let url = gw.url("/x");
            tokio::spawn(async move {
                let client = support::client();
                let mut statuses = Vec::new();
                for _ in 0..150 {
                    let req = Request::get(&url).body(Full::default()).unwrap();
                    statuses.push(support::send(&client, req).await.status);
                }
                statuses
            })
        })
        .collect();
    let reloader = gw.gateway.reloader();
    for i in 1..=10 {
        let up = if i % 2 == 0 { a.addr } else { b.addr };
        gw.rewrite(&config(up, &i.to_string(), "0s"));
        assert_eq!(reloader.reload_now().unwrap(), i + 1);
        if i == 5 {
            gw.rewrite("[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"missing\"\n");
            let err = reloader.reload_now().unwrap_err();
            assert_eq!(err.line(), 4, "{err}");
            assert_eq!(err.key(), "routes[0].upstream");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for task in load {
        let statuses = task.await.unwrap();
        assert_eq!(statuses.len(), 150);
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
    }
    assert_eq!(
        slow.await.unwrap(),
        StatusCode::OK,
        "the request in flight finished on the generation it started with"
    );
    let gone = get(&gw.url("/slow-lane/x"), &[]).await;
    assert_eq!(
        gone.json()["uri"],
        "/slow-lane/x",
        "the lane is gone: the catch-all takes it"
    );
    let handle = gw.gateway.handle();
    assert_eq!(
        (handle.generation(), handle.reloads(), handle.refused()),
        (11, 10, 1)
    );
    assert!(
        handle
            .last_refusal()
            .unwrap()
            .contains("no upstream group \"missing\"")
    );
    assert!(a.hits() > 0 && b.hits() > 0, "both generations served");
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.seen("x-generation").as_deref(), Some("10"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_or_sighup_reloads_and_a_bad_file_keeps_the_running_one() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(up.addr, "first", "20ms")).await;
    let reloader = gw.gateway.reloader();
    let _watch = reloader.spawn_watch().expect("polling is on");
    let wait_for = |generation: u64| {
        let gateway = gw.gateway.clone();
        async move {
            for _ in 0..500 {
                if gateway.generation() >= generation {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("generation {generation} never came");
        }
    };
    gw.rewrite(&config(up.addr, "second", "20ms"));
    wait_for(2).await;
    assert_eq!(
        get(&gw.url("/x"), &[])
            .await
            .seen("x-generation")
            .as_deref(),
        Some("second")
    );

    gw.rewrite("[server]\nmax_body = \"lots\"\n");
    for _ in 0..500 {
        if gw.gateway.handle().refused() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gw.gateway.handle().refused(),
        1,
        "refused once, not at every poll"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        gw.gateway.handle().refused(),
        1,
        "refused once, not at every poll"
    );
    assert_eq!(
        get(&gw.url("/x"), &[])
            .await
            .seen("x-generation")
            .as_deref(),
        Some("second")
    );

    // SIGHUP, with polling off in the new file (the watcher keeps its interval).
    #[cfg(unix)]
    {
        let _hup = reloader.spawn_sighup().unwrap();
        gw.rewrite(&config(up.addr, "third", "1h"));
        wait_for(3).await;
        gw.rewrite(&config(up.addr, "fourth", "1h"));
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_for(4).await;
        assert_eq!(
            get(&gw.url("/x"), &[])
                .await
                .seen("x-generation")
                .as_deref(),
            Some("fourth")
        );
    }
    gw.stop().await;
}
