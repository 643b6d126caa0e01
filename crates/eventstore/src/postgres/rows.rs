//! Rows to events, and the integer conversions of the columns.

use tokio_postgres::Row;

use crate::{Error, GlobalPosition, RecordedEvent, event::RawEvent};

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn position(commit: i64, seq: i64) -> GlobalPosition {
    GlobalPosition::new(to_u64(commit), to_u64(seq))
}

pub(super) fn row_to_event(r: &Row) -> Result<RecordedEvent, Error> {
    let commit: i64 = r.try_get(0).map_err(Error::backend)?;
    let seq: i64 = r.try_get(1).map_err(Error::backend)?;
    RawEvent {
        position: position(commit, seq),
        stream_id: r.try_get(2).map_err(Error::backend)?,
        version: to_u64(r.try_get(3).map_err(Error::backend)?),
        id: Ok(r.try_get(4).map_err(Error::backend)?),
        event_type: r.try_get(5).map_err(Error::backend)?,
        schema_version: i64::from(r.try_get::<_, i32>(6).map_err(Error::backend)?),
        payload: r.try_get(7).map_err(Error::backend)?,
        metadata: r.try_get(8).map_err(Error::backend)?,
    }
    .check()
}
