//! One append through the `tp_append` function, on a pooled connection or a transaction.

use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::rows::{position, to_i64, to_u64};
use crate::{
    AppendResult, Error, EventData, ExpectedVersion,
    store::{Seen, seen},
};

/// Runs one append through `tp_append` on `client` (a pooled connection or a transaction).
pub(super) async fn append_tx<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    stmt: &tokio_postgres::Statement,
    stream: &str,
    expected: ExpectedVersion,
    events: &[EventData],
    recorded_at: u64,
) -> Result<AppendResult, Error> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let schema: Vec<i32> = events
        .iter()
        .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
        .collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.get()).collect();
    let metadata: Vec<String> = events
        .iter()
        .map(|e| {
            let mut m = e.metadata.clone();
            m.recorded_at_micros = recorded_at;
            serde_json::to_string(&m).map_err(|e| Error::Encode(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let expected_code: i64 = match expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream => -2,
        ExpectedVersion::StreamExists => -3,
        ExpectedVersion::Exact(v) => to_i64(v),
    };
    let mut rows = client
        .query(
            stmt,
            &[
                &stream,
                &expected_code,
                &ids,
                &types,
                &schema,
                &payloads,
                &metadata,
                &to_i64(recorded_at),
            ],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                // A concurrent append of the same event ids: the caller retries, and then
                // finds them stored.
                Error::Backend(Box::new(DuplicateRace))
            } else {
                Error::backend(e)
            }
        })?;
    let status: &str = rows.first().map_or("", |r| r.get(0));
    match status {
        "dup" => {
            let found: Vec<_> = ids
                .iter()
                .map(|id| {
                    rows.iter().find(|r| r.get::<_, Uuid>(2) == *id).map(|r| {
                        (
                            r.get::<_, String>(1),
                            to_u64(r.get(3)),
                            position(r.get(4), r.get(5)),
                        )
                    })
                })
                .collect();
            match seen(stream, events, &found)? {
                Seen::All(done) => Ok(done),
                Seen::New => Err(Error::backend(
                    "tp_append reported duplicates it did not name",
                )),
            }
        }
        "conflict" => Err(Error::WrongExpectedVersion {
            stream: stream.to_owned(),
            expected,
            actual: to_u64(rows[0].get(3)),
        }),
        "ok" => {
            rows.sort_by_key(|r| r.get::<_, i64>(3));
            Ok(AppendResult {
                version: rows.last().map_or(0, |r| to_u64(r.get(3))),
                positions: rows.iter().map(|r| position(r.get(4), r.get(5))).collect(),
                duplicate: false,
            })
        }
        other => Err(Error::backend(format!("tp_append answered {other:?}"))),
    }
}

/// Two appends of the same event id raced; the loser retries.
#[derive(Debug)]
struct DuplicateRace;

impl std::fmt::Display for DuplicateRace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a concurrent append stored the same event id")
    }
}

impl std::error::Error for DuplicateRace {}

pub(super) fn is_race(e: &Error) -> bool {
    matches!(e, Error::Backend(b) if b.is::<DuplicateRace>())
}
