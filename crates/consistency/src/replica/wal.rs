//! What the router asks PostgreSQL: the primary's WAL insert position (normalised, see
//! [`normalise_insert`]) and a replica's replay position and delay. Every query is one simple
//! query (one round trip, no prepared statement) answered as text.

use std::fmt;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::mark::Lsn;

/// The primary's WAL page and segment sizes, in bytes, read once per connection to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) block: u64,
    pub(crate) segment: u64,
}

/// A page starts with a short header of this many bytes ...
const SHORT_HEADER: u64 = 24;
/// ... except the first page of a segment, whose header is this long.
const LONG_HEADER: u64 = 40;

impl Geometry {
    /// PostgreSQL's defaults (8 kB pages, 16 MB segments).
    #[cfg(test)]
    pub(crate) const DEFAULT: Self = Self {
        block: 8192,
        segment: 16 * 1024 * 1024,
    };

    /// A geometry PostgreSQL can have: a power-of-two page of at least 1 kB, and a segment of
    /// a whole number of pages.
    pub(crate) fn checked(block: u64, segment: u64) -> Option<Self> {
        (block.is_power_of_two() && block >= 1024 && segment.is_power_of_two() && segment >= block)
            .then_some(Self { block, segment })
    }
}

/// The primary's insert position reduced to what a replica's replay position can show for the
/// same WAL.
///
/// After a record that ends exactly at a page boundary, `pg_current_wal_insert_lsn()` points
/// past the next page's header (24 bytes in, or 40 at a segment's first page), where the next
/// record will start; a replica that has replayed that record stops at the boundary until the
/// next record arrives. The header holds no record, so the boundary is the same position for
/// read-your-writes: an insert position that sits exactly after a page header is moved back
/// to the page start. Any other position is returned as it is.
pub(crate) fn normalise_insert(lsn: Lsn, geometry: Option<Geometry>) -> Lsn {
    let Some(g) = geometry else { return lsn };
    let in_segment = lsn.0 % g.segment;
    if in_segment == LONG_HEADER {
        Lsn(lsn.0 - LONG_HEADER)
    } else if in_segment >= g.block && lsn.0 % g.block == SHORT_HEADER {
        Lsn(lsn.0 - SHORT_HEADER)
    } else {
        lsn
    }
}

/// A query that failed, or answered something this module cannot read.
#[derive(Debug)]
pub(crate) enum ProbeError {
    Postgres(tokio_postgres::Error),
    Unreadable(&'static str),
    TimedOut,
    NoConnection(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres(e) => write!(f, "{e}"),
            Self::Unreadable(what) => write!(f, "unreadable answer: {what}"),
            Self::TimedOut => f.write_str("no answer within the probe timeout"),
            Self::NoConnection(e) => write!(f, "no connection: {e}"),
        }
    }
}

impl std::error::Error for ProbeError {}

impl From<tokio_postgres::Error> for ProbeError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

/// The text columns of the first row of a simple query.
async fn first_row(client: &Client, sql: &str) -> Result<Vec<Option<String>>, ProbeError> {
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            return Ok((0..row.len())
                .map(|i| row.get(i).map(str::to_owned))
                .collect());
        }
    }
    Err(ProbeError::Unreadable("no row"))
}

/// Reads `wal_block_size` and `wal_segment_size` (in bytes; PostgreSQL 11 and later report
/// the segment in bytes, older ones in units the `unit` column names).
pub(crate) async fn geometry(client: &Client) -> Result<Option<Geometry>, ProbeError> {
    let row = first_row(
        client,
        "SELECT (SELECT setting FROM pg_settings WHERE name = 'wal_block_size'), \
                (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), \
                (SELECT unit FROM pg_settings WHERE name = 'wal_segment_size')",
    )
    .await?;
    let number = |i: usize| -> Option<u64> { row.get(i)?.as_deref()?.parse().ok() };
    let unit = match row.get(2).and_then(Option::as_deref) {
        None | Some("B") => 1,
        Some("kB") => 1024,
        Some("8kB") => 8192,
        Some("MB") => 1024 * 1024,
        Some(_) => 0,
    };
    Ok(match (number(0), number(1)) {
        (Some(block), Some(segment)) => Geometry::checked(block, segment.saturating_mul(unit)),
        _ => None,
    })
}

/// The primary's WAL insert position, normalised.
pub(crate) async fn insert_lsn(
    client: &Client,
    geometry: Option<Geometry>,
) -> Result<Lsn, ProbeError> {
    let row = first_row(client, "SELECT pg_current_wal_insert_lsn()::text").await?;
    let lsn = lsn_at(&row, 0).ok_or(ProbeError::Unreadable("insert position"))?;
    Ok(normalise_insert(lsn, geometry))
}

/// The primary's WAL flush position: what it has written to disk, and so what its replicas
/// can have received.
pub(crate) async fn flush_lsn(client: &Client) -> Result<Lsn, ProbeError> {
    let row = first_row(client, "SELECT pg_current_wal_flush_lsn()::text").await?;
    lsn_at(&row, 0).ok_or(ProbeError::Unreadable("flush position"))
}

/// Makes the primary flush its WAL up to now: one statement, in a transaction of its own,
/// that writes one WAL record (an empty transactional logical message, which touches no table
/// and needs no privilege) and commits with `synchronous_commit = local`, which flushes
/// everything before its commit record without waiting for synchronous standbys. Replicas
/// receive only flushed WAL, and a primary flushes on commit: records after the last commit
/// (a non-transactional message, a standby snapshot, hint bits) or a commit made with
/// `synchronous_commit = off` can wait in its buffers until the next commit or the WAL
/// writer's round, while a token already points past them. (A transaction that only takes a
/// transaction id commits without flushing: PostgreSQL flushes only for transactions that
/// wrote WAL.) A failure rolls the statement's own transaction back: the session stays usable.
pub(crate) async fn flush_now(client: &Client) -> Result<(), ProbeError> {
    client
        .batch_execute(
            "SELECT set_config('synchronous_commit', 'local', true), \
                    pg_logical_emit_message(true, 'tower_patterns.flush', '')",
        )
        .await
        .map_err(ProbeError::Postgres)
}

/// A replica's replay position alone (what a read on it has seen at most, once the read is
/// over).
pub(crate) async fn replay_lsn(client: &Client) -> Result<Lsn, ProbeError> {
    let row = first_row(client, "SELECT pg_last_wal_replay_lsn()::text").await?;
    lsn_at(&row, 0).ok_or(ProbeError::Unreadable("replay position (is it a standby?)"))
}

/// What one probe of a replica reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ReplicaProbe {
    pub(crate) replay: Lsn,
    pub(crate) receive: Option<Lsn>,
    /// Seconds since the last transaction it replayed committed on the primary (0 when it
    /// has replayed none since it started).
    pub(crate) since_last_replayed: f64,
}

/// A replica's replay and receive positions and how old its last replayed transaction is.
pub(crate) async fn replica_probe(client: &Client) -> Result<ReplicaProbe, ProbeError> {
    let row = first_row(
        client,
        "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text, \
                COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8, 0)",
    )
    .await?;
    let replay =
        lsn_at(&row, 0).ok_or(ProbeError::Unreadable("replay position (is it a standby?)"))?;
    let seconds = row
        .get(2)
        .and_then(Option::as_deref)
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .unwrap_or(0.0);
    Ok(ReplicaProbe {
        replay,
        receive: lsn_at(&row, 1),
        since_last_replayed: seconds.max(0.0),
    })
}

fn lsn_at(row: &[Option<String>], i: usize) -> Option<Lsn> {
    Lsn::parse(row.get(i)?.as_deref()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the test PostgreSQL: after an asynchronous commit the insert position runs ahead of
    /// the flush (for a WAL writer round); `flush_now` flushes it at once.
    #[tokio::test]
    async fn flush_now_flushes_what_an_asynchronous_commit_left_in_the_buffers() {
        let Some(url) = tower_patterns_testkit::fresh_postgres("walflush").await else {
            return;
        };
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "SET synchronous_commit = off; CREATE TABLE t (id int); INSERT INTO t VALUES (1)",
            )
            .await
            .unwrap();
        let mut unflushed_seen = 0;
        for i in 0..20 {
            client
                .execute("INSERT INTO t VALUES ($1)", &[&i])
                .await
                .unwrap();
            let inserted = insert_lsn(&client, None).await.unwrap();
            if flush_lsn(&client).await.unwrap() < inserted {
                unflushed_seen += 1;
            }
            flush_now(&client).await.unwrap();
            let flushed = flush_lsn(&client).await.unwrap();
            assert!(
                flushed >= inserted,
                "{flushed} < {inserted} after flush_now"
            );
        }
        // The test is only worth something if asynchronous commits did leave WAL unflushed.
        assert!(unflushed_seen > 0);
    }

    const G: Option<Geometry> = Some(Geometry::DEFAULT);
    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn a_position_just_past_a_page_header_is_the_page_start() {
        // A page inside a segment: 24 bytes of header.
        assert_eq!(normalise_insert(Lsn(8192 + 24), G), Lsn(8192));
        assert_eq!(normalise_insert(Lsn(5 * 8192 + 24), G), Lsn(5 * 8192));
        // A segment's first page: 40 bytes of header.
        assert_eq!(normalise_insert(Lsn(SEG + 40), G), Lsn(SEG));
        assert_eq!(
            normalise_insert(Lsn(0x16_0000_0000 + 40), G),
            Lsn(0x16_0000_0000)
        );
        // The last page of a segment is an ordinary page.
        assert_eq!(
            normalise_insert(Lsn(2 * SEG - 8192 + 24), G),
            Lsn(2 * SEG - 8192)
        );
    }

    #[test]
    fn any_other_position_is_kept() {
        for lsn in [
            0,
            24,   // inside a segment's long header: not an insert position
            8192, // the boundary itself
            8192 + 23,
            8192 + 25,
            8192 + 40, // 40 in an ordinary page is a record
            SEG + 24,  // 24 into a segment's first page is inside its header
            SEG + 8192 + 40,
            u64::MAX,
        ] {
            assert_eq!(normalise_insert(Lsn(lsn), G), Lsn(lsn), "{lsn}");
        }
        // Without a known geometry nothing moves.
        assert_eq!(normalise_insert(Lsn(8192 + 24), None), Lsn(8192 + 24));
    }

    #[test]
    fn other_page_and_segment_sizes() {
        let g = Geometry::checked(32 * 1024, 64 * 1024 * 1024);
        assert_eq!(normalise_insert(Lsn(32 * 1024 + 24), g), Lsn(32 * 1024));
        assert_eq!(normalise_insert(Lsn(8192 + 24), g), Lsn(8192 + 24));
        assert_eq!(
            normalise_insert(Lsn(64 * 1024 * 1024 + 40), g),
            Lsn(64 * 1024 * 1024)
        );
        assert_eq!(
            normalise_insert(Lsn(16 * 1024 * 1024 + 40), g),
            Lsn(16 * 1024 * 1024 + 40)
        );
    }

    #[test]
    fn impossible_geometries_are_refused() {
        assert_eq!(Geometry::checked(8192, SEG), Some(Geometry::DEFAULT));
        for (block, segment) in [
            (0, SEG),
            (8192, 0),
            (1000, SEG),
            (8192, 4096),
            (512, SEG),
            (8192, SEG + 1),
        ] {
            assert_eq!(Geometry::checked(block, segment), None, "{block} {segment}");
        }
    }
}
