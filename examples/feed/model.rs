//! The photo feed: `Post` and `Member` aggregates (the write side) and the `Feed` read model,
//! fanned out on write: when a post is created, one row goes to the feed of each of its
//! author's current followers, so reading a feed is one indexed range scan, newest first.
//! Likes are counted per post, a user's second like of a post counting once.
//!
//! Self-contained: the example, its tests and the projection benchmark include this file with
//! `#[path]`. Every table is named through [`Tables::name`], so a rebuild fills a fresh copy.

#![allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    reason = "the example, its tests and the benchmark each use part of the model"
)]

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tower_patterns::{
    cqrs::{ApplyError, Tables},
    eventstore::{Aggregate, DomainEvent, RecordedEvent},
};

/// The stream prefix of posts (`post-<id>`).
pub const POST_PREFIX: &str = "post-";
/// The stream prefix of members (`member-<user>`): who they follow.
pub const MEMBER_PREFIX: &str = "member-";
/// The feed's page size.
pub const PAGE: u32 = 20;

/// What happened in the photo feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedEvent {
    /// A post (its photo lives elsewhere); `at` is milliseconds since the Unix epoch.
    PostCreated {
        post: String,
        author: String,
        at: i64,
    },
    /// `follower` follows `author`.
    Followed { follower: String, author: String },
    /// `follower` no longer follows `author`.
    Unfollowed { follower: String, author: String },
    /// `user` liked `post`.
    Liked { post: String, user: String },
}

impl DomainEvent for FeedEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::PostCreated { .. } => "PostCreated",
            Self::Followed { .. } => "Followed",
            Self::Unfollowed { .. } => "Unfollowed",
            Self::Liked { .. } => "Liked",
        }
    }
}

/// Why a command was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedError {
    /// A post created twice, or liked before it exists.
    NoSuchPost,
    /// The post exists already.
    AlreadyPosted,
    /// A member following themself.
    SelfFollow,
}

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NoSuchPost => "no such post",
            Self::AlreadyPosted => "the post exists already",
            Self::SelfFollow => "a member cannot follow themself",
        })
    }
}

impl std::error::Error for FeedError {}

/// What a post can be asked to do (its id is the command's aggregate id).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PostCommand {
    /// Create it.
    Create { author: String, at: i64 },
    /// Like it.
    Like { user: String },
}

/// A post on the write side: who liked it already (a second like appends nothing).
#[derive(Default, Serialize, Deserialize)]
pub struct Post {
    created: bool,
    likers: BTreeSet<String>,
}

impl Aggregate for Post {
    type Command = (String, PostCommand);
    type Event = FeedEvent;
    type Error = FeedError;

    fn handle(&self, (post, command): &Self::Command) -> Result<Vec<FeedEvent>, FeedError> {
        let post = post.clone();
        match command.clone() {
            PostCommand::Create { .. } if self.created => Err(FeedError::AlreadyPosted),
            PostCommand::Create { author, at } => {
                Ok(vec![FeedEvent::PostCreated { post, author, at }])
            }
            PostCommand::Like { .. } if !self.created => Err(FeedError::NoSuchPost),
            PostCommand::Like { user } if self.likers.contains(&user) => Ok(vec![]),
            PostCommand::Like { user } => Ok(vec![FeedEvent::Liked { post, user }]),
        }
    }

    fn apply(&mut self, event: &FeedEvent) {
        match event {
            FeedEvent::PostCreated { .. } => self.created = true,
            FeedEvent::Liked { user, .. } => {
                self.likers.insert(user.clone());
            }
            _ => {}
        }
    }
}

/// What a member can be asked to do (the member is the command's aggregate id).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MemberCommand {
    /// Follow `author`.
    Follow { author: String },
    /// Stop following `author`.
    Unfollow { author: String },
}

/// A member on the write side: whom they follow.
#[derive(Default, Serialize, Deserialize)]
pub struct Member {
    follows: BTreeSet<String>,
}

impl Aggregate for Member {
    type Command = (String, MemberCommand);
    type Event = FeedEvent;
    type Error = FeedError;

    fn handle(&self, (me, command): &Self::Command) -> Result<Vec<FeedEvent>, FeedError> {
        let follower = me.clone();
        match command.clone() {
            MemberCommand::Follow { author } if author == follower => Err(FeedError::SelfFollow),
            MemberCommand::Follow { author } if self.follows.contains(&author) => Ok(vec![]),
            MemberCommand::Follow { author } => Ok(vec![FeedEvent::Followed { follower, author }]),
            MemberCommand::Unfollow { author } if !self.follows.contains(&author) => Ok(vec![]),
            MemberCommand::Unfollow { author } => {
                Ok(vec![FeedEvent::Unfollowed { follower, author }])
            }
        }
    }

    fn apply(&mut self, event: &FeedEvent) {
        match event {
            FeedEvent::Followed { author, .. } => {
                self.follows.insert(author.clone());
            }
            FeedEvent::Unfollowed { author, .. } => {
                self.follows.remove(author);
            }
            _ => {}
        }
    }
}

/// One entry of a user's feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedItem {
    pub post: String,
    pub author: String,
    pub at: i64,
    pub likes: i64,
}

/// A page request: the page after the `(at, post)` cursor of the last item seen.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct FeedPage {
    pub before_at: Option<i64>,
    pub before_post: Option<String>,
}

impl FeedPage {
    /// The cursor, when both halves are given.
    fn cursor(&self) -> (Option<i64>, Option<String>) {
        match (&self.before_at, &self.before_post) {
            (Some(at), Some(post)) => (Some(*at), Some(post.clone())),
            _ => (None, None),
        }
    }
}

/// The feed read model (a `SqliteProjection` and a `PostgresProjection`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Feed;

fn decode(event: &RecordedEvent) -> Result<Option<FeedEvent>, ApplyError> {
    if !event.stream_id.starts_with(POST_PREFIX) && !event.stream_id.starts_with(MEMBER_PREFIX) {
        return Ok(None); // another aggregate's event
    }
    Ok(Some(event.decode_event::<FeedEvent>()?))
}

mod sqlite_model {
    use rusqlite::{Transaction, params};

    use super::*;

    impl tower_patterns::cqrs::SqliteProjection for Feed {
        fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
            tx.execute_batch(&format!(
                "CREATE TABLE {follows} (author TEXT NOT NULL, follower TEXT NOT NULL,
                     PRIMARY KEY (author, follower)) WITHOUT ROWID;
                 CREATE TABLE {feed} (user TEXT NOT NULL, at INTEGER NOT NULL, post TEXT NOT NULL,
                     author TEXT NOT NULL, PRIMARY KEY (user, at, post)) WITHOUT ROWID;
                 CREATE TABLE {likes} (post TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE {liked} (post TEXT NOT NULL, user TEXT NOT NULL,
                     PRIMARY KEY (post, user)) WITHOUT ROWID;",
                follows = t.name("follows"),
                feed = t.name("feed"),
                likes = t.name("likes"),
                liked = t.name("liked"),
            ))?;
            Ok(())
        }

        fn apply(
            &self,
            tx: &Transaction<'_>,
            t: &Tables,
            e: &RecordedEvent,
        ) -> Result<(), ApplyError> {
            let Some(event) = decode(e)? else {
                return Ok(());
            };
            // Every write is idempotent (primary keys, and likes move only with a new liker).
            match event {
                FeedEvent::PostCreated { post, author, at } => {
                    tx.execute(
                        &format!(
                            "INSERT INTO {feed} (user, at, post, author)
                             SELECT follower, ?1, ?2, ?3 FROM {follows} WHERE author = ?3
                             ON CONFLICT DO NOTHING",
                            feed = t.name("feed"),
                            follows = t.name("follows"),
                        ),
                        params![at, post, author],
                    )?;
                }
                FeedEvent::Followed { follower, author } => {
                    tx.execute(
                        &format!("INSERT INTO {} (author, follower) VALUES (?1, ?2) ON CONFLICT DO NOTHING", t.name("follows")),
                        params![author, follower],
                    )?;
                }
                FeedEvent::Unfollowed { follower, author } => {
                    tx.execute(
                        &format!(
                            "DELETE FROM {} WHERE author = ?1 AND follower = ?2",
                            t.name("follows")
                        ),
                        params![author, follower],
                    )?;
                    tx.execute(
                        &format!(
                            "DELETE FROM {} WHERE user = ?1 AND author = ?2",
                            t.name("feed")
                        ),
                        params![follower, author],
                    )?;
                }
                FeedEvent::Liked { post, user } => {
                    let new = tx.execute(
                        &format!(
                            "INSERT INTO {} (post, user) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                            t.name("liked")
                        ),
                        params![post, user],
                    )?;
                    if new == 1 {
                        tx.execute(
                            &format!("INSERT INTO {} (post, n) VALUES (?1, 1) ON CONFLICT (post) DO UPDATE SET n = n + 1", t.name("likes")),
                            params![post],
                        )?;
                    }
                }
            }
            Ok(())
        }
    }

    /// A page of `user`'s feed, newest first, [`PAGE`] items.
    pub fn feed_sqlite(
        conn: &rusqlite::Connection,
        t: &Tables,
        user: &str,
        page: &FeedPage,
    ) -> rusqlite::Result<Vec<FeedItem>> {
        let (before_at, before_post) = page.cursor();
        let sql = format!(
            "SELECT f.post, f.author, f.at, COALESCE(l.n, 0) FROM {feed} f
             LEFT JOIN {likes} l ON l.post = f.post
             WHERE f.user = ?1 AND (?2 IS NULL OR (f.at, f.post) < (?2, ?3))
             ORDER BY f.at DESC, f.post DESC LIMIT ?4",
            feed = t.name("feed"),
            likes = t.name("likes"),
        );
        let mut stmt = conn.prepare(&sql)?;
        stmt.query_map(params![user, before_at, before_post, PAGE], |r| {
            Ok(FeedItem {
                post: r.get(0)?,
                author: r.get(1)?,
                at: r.get(2)?,
                likes: r.get(3)?,
            })
        })?
        .collect()
    }
}

pub use sqlite_model::feed_sqlite;

#[cfg(feature = "cqrs-postgres")]
mod postgres_model {
    use tokio_postgres::{GenericClient, Transaction};

    use super::*;

    impl tower_patterns::cqrs::PostgresProjection for Feed {
        async fn create(&self, tx: &Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
            tx.batch_execute(&format!(
                "CREATE TABLE {follows} (author text NOT NULL, follower text NOT NULL,
                     PRIMARY KEY (author, follower));
                 CREATE TABLE {feed} (\"user\" text NOT NULL, at bigint NOT NULL, post text NOT NULL,
                     author text NOT NULL, PRIMARY KEY (\"user\", at, post));
                 CREATE TABLE {likes} (post text PRIMARY KEY, n bigint NOT NULL);
                 CREATE TABLE {liked} (post text NOT NULL, \"user\" text NOT NULL,
                     PRIMARY KEY (post, \"user\"));",
                follows = t.name("follows"),
                feed = t.name("feed"),
                likes = t.name("likes"),
                liked = t.name("liked"),
            ))
            .await?;
            Ok(())
        }

        async fn apply(
            &self,
            tx: &Transaction<'_>,
            t: &Tables,
            e: &RecordedEvent,
        ) -> Result<(), ApplyError> {
            let Some(event) = decode(e)? else {
                return Ok(());
            };
            match event {
                FeedEvent::PostCreated { post, author, at } => {
                    tx.execute(
                        &format!(
                            "INSERT INTO {feed} (\"user\", at, post, author)
                             SELECT follower, $1, $2, $3 FROM {follows} WHERE author = $3
                             ON CONFLICT DO NOTHING",
                            feed = t.name("feed"),
                            follows = t.name("follows"),
                        ),
                        &[&at, &post, &author],
                    )
                    .await?;
                }
                FeedEvent::Followed { follower, author } => {
                    tx.execute(
                        &format!("INSERT INTO {} (author, follower) VALUES ($1, $2) ON CONFLICT DO NOTHING", t.name("follows")),
                        &[&author, &follower],
                    )
                    .await?;
                }
                FeedEvent::Unfollowed { follower, author } => {
                    tx.execute(
                        &format!(
                            "DELETE FROM {} WHERE author = $1 AND follower = $2",
                            t.name("follows")
                        ),
                        &[&author, &follower],
                    )
                    .await?;
                    tx.execute(
                        &format!(
                            "DELETE FROM {} WHERE \"user\" = $1 AND author = $2",
                            t.name("feed")
                        ),
                        &[&follower, &author],
                    )
                    .await?;
                }
                FeedEvent::Liked { post, user } => {
                    let new = tx
                        .execute(
                            &format!("INSERT INTO {} (post, \"user\") VALUES ($1, $2) ON CONFLICT DO NOTHING", t.name("liked")),
                            &[&post, &user],
                        )
                        .await?;
                    if new == 1 {
                        tx.execute(
                            &format!("INSERT INTO {likes} (post, n) VALUES ($1, 1) ON CONFLICT (post) DO UPDATE SET n = {likes}.n + 1", likes = t.name("likes")),
                            &[&post],
                        )
                        .await?;
                    }
                }
            }
            Ok(())
        }
    }

    /// A page of `user`'s feed, newest first, [`PAGE`] items.
    pub async fn feed_postgres(
        client: &impl GenericClient,
        t: &Tables,
        user: &str,
        page: &FeedPage,
    ) -> Result<Vec<FeedItem>, tokio_postgres::Error> {
        let (before_at, before_post) = page.cursor();
        let sql = format!(
            "SELECT f.post, f.author, f.at, COALESCE(l.n, 0) FROM {feed} f
             LEFT JOIN {likes} l ON l.post = f.post
             WHERE f.\"user\" = $1 AND ($2::bigint IS NULL OR (f.at, f.post) < ($2, $3::text))
             ORDER BY f.at DESC, f.post DESC LIMIT $4",
            feed = t.name("feed"),
            likes = t.name("likes"),
        );
        let rows = client
            .query(&sql, &[&user, &before_at, &before_post, &i64::from(PAGE)])
            .await?;
        Ok(rows
            .iter()
            .map(|r| FeedItem {
                post: r.get(0),
                author: r.get(1),
                at: r.get(2),
                likes: r.get(3),
            })
            .collect())
    }
}

#[cfg(feature = "cqrs-postgres")]
pub use postgres_model::feed_postgres;
