//! The inbox on PostgreSQL: a repeated delivery is dropped inside the effect's transaction,
//! also when two deliveries of one event race; pruning deletes only old rows.
#![cfg(feature = "postgres")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::NoTls;
use tower_patterns_cqrs::inbox::Inbox;
use tower_patterns_testkit::fresh_postgres;
use uuid::Uuid;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// The like counter of the photo feed: one delivery of `liked` in one transaction.
async fn deliver(client: &mut tokio_postgres::Client, inbox: &Inbox, liked: Uuid) -> bool {
    let tx = client.transaction().await.unwrap();
    let first = inbox.first_postgres(&tx, liked).await.unwrap();
    if first {
        tx.execute(
            "INSERT INTO likes VALUES ('p1', 1) ON CONFLICT (post) DO UPDATE SET n = likes.n + 1",
            &[],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    first
}

async fn likes(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT n FROM likes WHERE post = 'p1'", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_repeated_delivery_takes_effect_once() {
    let Some(url) = fresh_postgres("inbox").await else {
        return;
    };
    let mut client = connect(&url).await;
    Inbox::create_postgres(&client).await.unwrap();
    Inbox::create_postgres(&client).await.unwrap(); // idempotent
    client
        .batch_execute("CREATE TABLE likes (post text PRIMARY KEY, n int NOT NULL)")
        .await
        .unwrap();
    let inbox = Inbox::new("like_counter");
    let liked = Uuid::now_v7();
    assert!(deliver(&mut client, &inbox, liked).await);
    assert!(!deliver(&mut client, &inbox, liked).await);
    assert_eq!(likes(&client).await, 1);

    // A delivery rolled back is not remembered.
    let other = Uuid::now_v7();
    let tx = client.transaction().await.unwrap();
    assert!(inbox.first_postgres(&tx, other).await.unwrap());
    tx.rollback().await.unwrap();
    assert!(deliver(&mut client, &inbox, other).await);
    assert_eq!(likes(&client).await, 2);

    // Another consumer of the same event has its own rows.
    let tx = client.transaction().await.unwrap();
    assert!(
        Inbox::new("search")
            .first_postgres(&tx, liked)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn two_racing_deliveries_of_one_event_take_effect_once() {
    let Some(url) = fresh_postgres("inbox_race").await else {
        return;
    };
    let mut a = connect(&url).await;
    let mut b = connect(&url).await;
    let watch = connect(&url).await;
    Inbox::create_postgres(&a).await.unwrap();
    a.batch_execute("CREATE TABLE likes (post text PRIMARY KEY, n int NOT NULL)")
        .await
        .unwrap();
    let inbox = Inbox::new("like_counter");
    let liked = Uuid::now_v7();
    // A records the event and holds its transaction open; B's insert waits on A's row.
    let tx_a = a.transaction().await.unwrap();
    assert!(inbox.first_postgres(&tx_a, liked).await.unwrap());
    let b_inbox = inbox.clone();
    let racing = tokio::spawn(async move {
        let first = deliver(&mut b, &b_inbox, liked).await;
        (first, b)
    });
    // B is blocked on A's row: wait until PostgreSQL shows it waiting on a lock.
    for _ in 0..500 {
        let waiting: i64 = watch
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if waiting > 0 || racing.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!racing.is_finished(), "B waits for A's row");
    tx_a.execute("INSERT INTO likes VALUES ('p1', 1)", &[])
        .await
        .unwrap();
    tx_a.commit().await.unwrap();
    let (first, _b) = racing.await.unwrap();
    assert!(!first, "B sees A's committed row: a repeat");
    assert_eq!(likes(&watch).await, 1);
}

#[tokio::test]
async fn pruning_deletes_the_old_rows_of_one_consumer() {
    let Some(url) = fresh_postgres("inbox_prune").await else {
        return;
    };
    let mut client = connect(&url).await;
    Inbox::create_postgres(&client).await.unwrap();
    let (search, cache) = (Inbox::new("search"), Inbox::new("cache"));
    let id = Uuid::now_v7();
    let tx = client.transaction().await.unwrap();
    assert!(search.first_postgres(&tx, id).await.unwrap());
    assert!(cache.first_postgres(&tx, id).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(
        search
            .prune_postgres_before(&client, UNIX_EPOCH)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        search
            .prune_postgres(&client, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    let later = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(
        search.prune_postgres_before(&client, later).await.unwrap(),
        1
    );
    let tx = client.transaction().await.unwrap();
    assert!(search.first_postgres(&tx, id).await.unwrap(), "pruned");
    assert!(!cache.first_postgres(&tx, id).await.unwrap(), "kept");
    tx.commit().await.unwrap();

    // By age: a row recorded two hours ago goes, a fresh one stays.
    let (old, fresh) = (Uuid::now_v7(), Uuid::now_v7());
    let tx = client.transaction().await.unwrap();
    assert!(search.first_postgres(&tx, old).await.unwrap());
    assert!(search.first_postgres(&tx, fresh).await.unwrap());
    tx.execute(
        "UPDATE tp_inbox SET received_at = received_at - 7200000000 WHERE event_id = $1",
        &[&old],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let pruned = search
        .prune_postgres(&client, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let tx = client.transaction().await.unwrap();
    assert!(search.first_postgres(&tx, old).await.unwrap(), "pruned");
    assert!(!search.first_postgres(&tx, fresh).await.unwrap(), "kept");
    tx.commit().await.unwrap();
}
