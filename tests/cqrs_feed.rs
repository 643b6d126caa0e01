//! The photo feed end to end through its HTTP service (`examples/feed`): a post fans out to
//! its author's followers (and only to them), likes count once per user, and a feed reads
//! newest first, 20 at a time, by keyset pages. Every request carries the consistency token
//! of the last command, so each read sees the writes before it.

#[allow(dead_code)]
#[path = "../examples/feed/main.rs"]
mod feed;

use axum::{Router, body::Body};
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use tower_patterns::consistency::{TokenKey, layer::TOKEN_HEADER};

/// The key the tests' apps sign their tokens with.
const KEY: TokenKey = TokenKey::new(*b"feed test key 16");

struct App {
    router: Router,
    /// The last consistency token a response carried, sent with every request.
    last: Option<String>,
}

impl App {
    async fn send(&mut self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(last) = &self.last {
            req = req.header(TOKEN_HEADER, last);
        }
        let body = body.map_or_else(Body::empty, |v| Body::from(v.to_string()));
        let res = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        if let Some(p) = res.headers().get(TOKEN_HEADER) {
            self.last = Some(p.to_str().unwrap().to_owned());
        }
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn command(&mut self, uri: &str, body: Value) {
        let (status, text) = self.send("POST", uri, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {text}");
    }

    /// A page of `user`'s feed: (post, author, likes).
    async fn feed(&mut self, user: &str, query: &str) -> Vec<(String, String, i64, i64)> {
        let (status, text) = self
            .send("GET", &format!("/feed/{user}?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let items: Value = serde_json::from_str(&text).unwrap();
        items
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["post"].as_str().unwrap().to_owned(),
                    i["author"].as_str().unwrap().to_owned(),
                    i["at"].as_i64().unwrap(),
                    i["likes"].as_i64().unwrap(),
                )
            })
            .collect()
    }
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tp-feed-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_fan_out_to_followers_likes_count_once_and_pages_are_newest_first() {
    let dir = temp_dir();
    let (router, _projection) = feed::sqlite_app(&dir, KEY).await.unwrap();
    fan_out(router).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_fan_out_to_followers_likes_count_once_and_pages_are_newest_first_on_postgres() {
    let Some(url) = tower_patterns_testkit::fresh_postgres("feed").await else {
        return; // skipped: no PostgreSQL (the reason is printed)
    };
    let (router, _projection) = feed::postgres_app(&url, KEY).await.unwrap();
    fan_out(router).await;
}

async fn fan_out(router: Router) {
    let mut app = App { router, last: None };

    app.command("/members/bo", json!({"op": "follow", "author": "ada"}))
        .await;
    app.command("/members/cy", json!({"op": "follow", "author": "ada"}))
        .await;
    app.command("/members/bo", json!({"op": "follow", "author": "ada"}))
        .await; // no-op
    app.command("/members/cy", json!({"op": "follow", "author": "eve"}))
        .await;
    // 45 posts by ada, 1,000 ms apart, and one by eve.
    for i in 0..45 {
        let at = 1_700_000_000_000_i64 + i * 1_000;
        app.command(
            &format!("/posts/a{i:02}"),
            json!({"op": "create", "author": "ada", "at": at}),
        )
        .await;
    }
    app.command(
        "/posts/e1",
        json!({"op": "create", "author": "eve", "at": 1_700_000_030_500_i64}),
    )
    .await;
    for user in ["bo", "cy", "bo", "dan"] {
        app.command("/posts/a44", json!({"op": "like", "user": user}))
            .await;
    }

    let page1 = app.feed("bo", "").await;
    assert_eq!(page1.len(), 20);
    assert_eq!(
        page1[0],
        ("a44".into(), "ada".into(), 1_700_000_044_000, 3),
        "bo twice counts once"
    );
    assert!(page1.windows(2).all(|w| w[0].2 > w[1].2), "newest first");
    assert!(page1.iter().all(|i| i.1 == "ada"), "bo does not follow eve");
    let (_, _, at, _) = &page1[19];
    let post = &page1[19].0;
    let page2 = app
        .feed("bo", &format!("before_at={at}&before_post={post}"))
        .await;
    assert_eq!(page2.len(), 20);
    assert_eq!(page2[0].0, "a24");
    let last = page2.last().unwrap().clone();
    let page3 = app
        .feed(
            "bo",
            &format!("before_at={}&before_post={}", last.2, last.0),
        )
        .await;
    assert_eq!(
        page3.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(),
        ["a04", "a03", "a02", "a01", "a00"]
    );

    let cy = app.feed("cy", "limit=100").await;
    assert_eq!(cy.len(), 20, "a page is 20 whatever is asked");
    assert!(cy.iter().any(|i| i.0 == "e1"), "cy follows eve too");
    assert!(app.feed("dan", "").await.is_empty(), "dan follows nobody");
    assert!(
        app.feed("ada", "").await.is_empty(),
        "an author's own posts are not in her feed"
    );

    // Fan-out happens at post time: a new follower sees only later posts.
    app.command("/members/dan", json!({"op": "follow", "author": "ada"}))
        .await;
    assert!(app.feed("dan", "").await.is_empty());
    app.command(
        "/posts/a45",
        json!({"op": "create", "author": "ada", "at": 1_700_000_100_000_i64}),
    )
    .await;
    assert_eq!(app.feed("dan", "").await.len(), 1);
    // Unfollowing takes the author's posts out of the feed.
    app.command("/members/cy", json!({"op": "unfollow", "author": "ada"}))
        .await;
    let cy = app.feed("cy", "").await;
    assert_eq!(cy.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(), ["e1"]);

    let (status, text) = app
        .send(
            "POST",
            "/posts/zz",
            Some(json!({"op": "like", "user": "bo"})),
        )
        .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "command refused")
    );
    let (status, text) = app
        .send(
            "POST",
            "/members/bo",
            Some(json!({"op": "follow", "author": "bo"})),
        )
        .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "command refused")
    );
    let (status, text) = app
        .send("POST", "/posts/zz", Some(json!({"op": "shout"})))
        .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::BAD_REQUEST, "not a feed command")
    );
}
