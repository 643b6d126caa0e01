//! The tables, indexes and functions, as SQL: the append, the gate, and the gated reads.
//!
//! # The gate, and why it never passes an event that can still appear
//!
//! Every append (`tp_append`, which [`append`](crate::EventStore::append) and `append_in` both
//! call) does, in its transaction:
//!
//! 1. (the transaction's first append only, see below) takes a *shared* transaction-level
//!    advisory lock on (7403529, 0), "an append is under way";
//! 2. `floor` := the last number `tp_commit_seq` handed out (0 before the first);
//! 3. takes two more shared transaction-level advisory locks, (7403525, high 32 bits of
//!    `floor`) and (7403526, low 32 bits). All three stay until the transaction ends;
//! 4. `c` := `nextval('tp_commit_seq')` (so `c > floor`), and stores its events with
//!    `commit_no = c`.
//!
//! A reader's gate reads the sequence's last value `v` (at instant t1), *then* (at t2 > t1)
//! either takes (7403529, 0) in exclusive mode for the rest of its transaction, which succeeds
//! only when no transaction holds it shared, and answers `g = v` (`tp_gate_alone()`, which the
//! store calls in a statement alone in its transaction, so appenders wait for it a few
//! microseconds at most); or finds in `pg_locks` the smallest `floor` a transaction of this
//! database still holds a pair for, and answers `g = min(v, smallest floor)` (`tp_gate()`,
//! safe anywhere; `tp_gate_alone()` falls back to it). The read runs as the next statement,
//! with a snapshot taken at t3 > t2, and returns only `commit_no <= g`.
//!
//! Proof that no event is skipped: let X be an append with `c <= g <= v`. Its `nextval`
//! happened before t1 (the sequence only grows, and has `CACHE 1`, so every session sees each
//! number handed out at once), and its locks were taken before that. Had X not ended by t2,
//! it would have held (7403529, 0), so the try-lock would have failed, and `pg_locks` would
//! have shown its pair, so `g <= floor_X < c`: contradiction. So X ended before t2.
//! PostgreSQL releases a transaction's locks only after its commit is visible to new
//! snapshots (also for a prepared transaction: `pg_locks` pairs by virtual transaction, which
//! it has, not by pid, which it lacks), so X is committed and visible at t3, or aborted and
//! never visible. Every event that becomes readable later therefore has `commit_no > g`, above
//! every position a reader was handed. Steps 1 to 3 run in a transaction's first append to the
//! store only (a transaction-local setting named after the store's sequence,
//! `tp.append_floor_<oid of tp_commit_seq>`, marks them done): a later append of the same
//! transaction to the same store has a larger `c` than that first `floor`, which the
//! transaction holds until it ends, so the argument holds for it too, and a transaction of
//! thousands of appends takes three locks, not thousands. A savepoint rolled back takes its
//! locks and the marker with it, so the next append locks again. The smallest high half with
//! the smallest low half of one transaction is at most its smallest pair (conservative); a
//! high half without its low half belongs to an append that has not taken its number yet. A
//! rolled-back append leaves a gap in the numbers, nothing else. A gate is only ever too small
//! for a later snapshot, never too large, so reusing one only delays. Only this database's
//! locks with these keys count: an open transaction elsewhere in the cluster, or one here that
//! does not append, holds no reader back.
//!
//! # Stores in several schemas of one database
//!
//! Each schema has its own tables, sequence and functions, but the lock keys are the
//! database's. The marker is the store's: a transaction that appends to stores in two schemas
//! announces a floor from each one's sequence at its first append to each (a floor from
//! another schema's sequence says nothing about this one's numbers: with one marker for every
//! schema, the append to a store whose sequence was behind the other's took no locks, and that
//! store's readers passed it). A gate counts every pair of the database, of any schema: the
//! others' only make `g` smaller, so an open append to one store whose floor is below another
//! store's `v` holds that store's readers back until it ends (a delay, never a skip), and an
//! append under way to any store sends every store's `tp_gate_alone()` to the scan.
//!
//! Every function the store creates runs with `search_path` set to the store's schema, then
//! `pg_temp` (`SET search_path = "<schema>", pg_temp`, the schema named as an identifier, not
//! the text of the `search_path` that created it): `b.tp_read_all(...)` reads the store in
//! schema `b` and `b.tp_append(...)` appends to it, whatever the caller's `search_path`, role
//! (a `"$user"` in a saved `search_path` would be the caller's, so a role owning a schema with
//! its own store would reach that one) or temporary tables (`pg_temp`, searched first unless
//! named, comes last). `tp_gate_alone()` too, though only the store calls it: the clause costs
//! about 2 microseconds of server time a call (measured on its cheap path). The store's own
//! statements name the schema `connect` found (`current_schema()`) too (`Statements`), so
//! one transaction, on any connection to the database, can append to stores in several
//! schemas, and a connection of the store's pool switched to another role, or given a
//! temporary `tp_events`, still reads and writes the store.
//!
//! The two steps need two snapshots. The store runs `tp_gate_alone()` and then the read as two
//! autocommit statements (`gate.rs`). `tp_read_all(commit, seq, max)`, for readers in SQL, is
//! `VOLATILE` plpgsql, whose statements each take a fresh snapshot under READ COMMITTED; it
//! refuses other isolation levels, whose one snapshot would predate the gate (SQLSTATE
//! `TP001`).
//!
//! # Migration
//!
//! The first layout ordered the log by the appending transaction's id (`tx_id xid8`) and gated
//! reads on the cluster's oldest running transaction. `SCHEMA` finds that column and, in the
//! same transaction as the rest of the setup, numbers the existing events by it (dense rank:
//! one number per old transaction, same order), moves the sequence past them, and drops it.
//!
//! The functions are replaced on every connect (`CREATE OR REPLACE`, their options too), so a
//! database an earlier release set up gets this release's append and gate at its first connect
//! (and an earlier release connecting again puts its own back).

/// Creates (or upgrades) the store in `schema`, the connection's `current_schema()`: the
/// tables are created through the connection's `search_path`, the functions pinned to `schema`.
pub(super) fn schema_sql(schema: &str) -> String {
    SCHEMA.replace("@schema@", &quote_ident(schema))
}

/// `name` as an SQL identifier: double-quoted, its double quotes doubled. Only for use outside
/// dollar-quoted text (a function body would end at a `$$` in the name).
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The setup, with `@schema@` for the store's schema as a quoted identifier (outside any
/// function body: see [`quote_ident`]).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tp_events (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    commit_no      bigint NOT NULL,
    stream_id      text   NOT NULL,
    version        bigint NOT NULL,
    event_id       uuid   NOT NULL UNIQUE,
    event_type     text   NOT NULL,
    schema_version int    NOT NULL,
    payload        json   NOT NULL,
    metadata       json   NOT NULL,
    recorded_at    bigint NOT NULL,
    UNIQUE (stream_id, version)
);
-- CACHE 1 (the default, spelled out): every number handed out is the sequence's last value at
-- once, for every session. The gate depends on it.
CREATE SEQUENCE IF NOT EXISTS tp_commit_seq CACHE 1;
DO $migrate$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'tp_events'::regclass
               AND attname = 'tx_id' AND NOT attisdropped) THEN
        LOCK TABLE tp_events IN ACCESS EXCLUSIVE MODE;
        -- Its rows change shape: CREATE OR REPLACE below cannot change a function's result.
        DROP FUNCTION IF EXISTS tp_append(text, bigint, uuid[], text[], int[], text[], text[],
                                          bigint);
        ALTER TABLE tp_events ADD COLUMN IF NOT EXISTS commit_no bigint;
        UPDATE tp_events e SET commit_no = r.n
          FROM (SELECT seq, dense_rank() OVER (ORDER BY tx_id) AS n FROM tp_events) r
         WHERE e.seq = r.seq;
        PERFORM setval('tp_commit_seq', m) FROM (SELECT max(commit_no) AS m FROM tp_events) x
          WHERE m IS NOT NULL AND m > (SELECT CASE WHEN is_called THEN last_value ELSE 0 END
                                         FROM tp_commit_seq);
        ALTER TABLE tp_events ALTER COLUMN commit_no SET NOT NULL;
        DROP INDEX IF EXISTS tp_events_global;
        ALTER TABLE tp_events DROP COLUMN tx_id;
    END IF;
END
$migrate$;
CREATE INDEX IF NOT EXISTS tp_events_commit ON tp_events (commit_no, seq);
CREATE TABLE IF NOT EXISTS tp_streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL,
    metadata  json
);
CREATE TABLE IF NOT EXISTS tp_snapshots (
    stream_id        text   PRIMARY KEY,
    version          bigint NOT NULL,
    snapshot_version int    NOT NULL,
    state            json   NOT NULL
);
-- One round trip per append. p_expected: -1 any, -2 no stream, -3 stream exists, >= 0 exact.
-- Rows: ('dup', stream, id, version, commit, seq) for ids already stored (nothing written);
-- ('conflict', NULL, NULL, current version, NULL, NULL); or ('ok', ...) per appended event.
CREATE OR REPLACE FUNCTION tp_append(
    p_stream text, p_expected bigint, p_ids uuid[], p_types text[], p_schema int[],
    p_payloads text[], p_metadata text[], p_recorded bigint)
RETURNS TABLE (r_status text, r_stream text, r_id uuid, r_version bigint, r_commit bigint,
               r_seq bigint)
LANGUAGE plpgsql
-- Plans made while the tables were empty (sequential scans) must not be kept as they grow.
SET plan_cache_mode = force_custom_plan
-- This schema's tables, whatever the caller's search_path, role or temporary tables (see
-- schema.rs).
SET search_path = @schema@, pg_temp
AS $$
DECLARE
    cur bigint;
    low bigint;
    c bigint;
    marker text;
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_ids) AS i(id) JOIN tp_events e ON e.event_id = i.id) THEN
        RETURN QUERY SELECT 'dup'::text, e.stream_id, e.event_id, e.version, e.commit_no, e.seq
            FROM unnest(p_ids) AS i(id) JOIN tp_events e ON e.event_id = i.id;
        RETURN;
    END IF;
    INSERT INTO tp_streams (stream_id, version) VALUES (p_stream, 0) ON CONFLICT DO NOTHING;
    SELECT s.version INTO cur FROM tp_streams s WHERE s.stream_id = p_stream FOR UPDATE;
    IF NOT (p_expected = -1 OR (p_expected = -2 AND cur = 0) OR (p_expected = -3 AND cur > 0)
            OR p_expected = cur) THEN
        RETURN QUERY SELECT 'conflict'::text, NULL::text, NULL::uuid, cur, NULL::bigint,
                            NULL::bigint;
        RETURN;
    END IF;
    -- The gate's half: say an append is under way, and announce a lower bound of its number,
    -- before taking it. Once per transaction and store: the first append's bound is below
    -- every later one's to the same store (the transaction keeps the locks, and so holds back
    -- all its appends there), and a transaction of many appends would otherwise fill the lock
    -- table. The marker is transaction-local, goes with the locks when a savepoint rolls back,
    -- and is named after this store's sequence: a bound from another schema's sequence says
    -- nothing about this one's numbers.
    marker := 'tp.append_floor_' || 'tp_commit_seq'::regclass::oid::text;
    IF NULLIF(current_setting(marker, true), '') IS NULL THEN
        PERFORM pg_advisory_xact_lock_shared(7403529, 0);
        SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO low
          FROM tp_commit_seq;
        PERFORM pg_advisory_xact_lock_shared(7403525, (low >> 32)::int);
        PERFORM pg_advisory_xact_lock_shared(7403526, (low & 4294967295)::bit(32)::int);
        PERFORM set_config(marker, low::text, true);
    END IF;
    c := nextval('tp_commit_seq');
    RETURN QUERY
        INSERT INTO tp_events AS e (commit_no, stream_id, version, event_id, event_type,
                                    schema_version, payload, metadata, recorded_at)
        SELECT c, p_stream, cur + u.ord, u.id, u.t, u.sv, u.p::json, u.m::json, p_recorded
        FROM UNNEST(p_ids, p_types, p_schema, p_payloads, p_metadata)
             WITH ORDINALITY AS u(id, t, sv, p, m, ord)
        RETURNING 'ok'::text, e.stream_id, e.event_id, e.version, e.commit_no, e.seq;
    UPDATE tp_streams SET version = cur + cardinality(p_ids) WHERE stream_id = p_stream;
    PERFORM pg_notify('tp_events', '');
END;
$$;
-- The highest append number below which every append has ended (see schema.rs): `pg_locks`.
CREATE OR REPLACE FUNCTION tp_gate() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = @schema@, pg_temp
AS $$
DECLARE
    v bigint;
    pending bigint;
BEGIN
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO v
      FROM tp_commit_seq;
    -- The smallest announced lower bound, per transaction (a prepared transaction has no pid,
    -- but a virtual transaction id); a transaction's smallest high and low halves give at most
    -- its smallest pair, and one with a single half has not taken its number yet.
    SELECT min((t.hi << 32) | t.lo) INTO pending FROM (
        SELECT min(l.objid::bigint) FILTER (WHERE l.classid = 7403525) AS hi,
               min(l.objid::bigint) FILTER (WHERE l.classid = 7403526) AS lo
          FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.objsubid = 2
           AND l.classid IN (7403525, 7403526)
           AND l.database = (SELECT d.oid FROM pg_database d
                              WHERE d.datname = current_database())
         GROUP BY l.virtualtransaction) t;
    RETURN LEAST(v, COALESCE(pending, v));
END;
$$;
-- The same, first trying the cheap way: when no append is under way (none holds its shared
-- lock), all up to the sequence's value have ended. The try-lock is held until the caller's
-- transaction ends (appenders wait for it), so call this only as a statement alone in its
-- transaction, as the store does.
CREATE OR REPLACE FUNCTION tp_gate_alone() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = @schema@, pg_temp
AS $$
DECLARE
    v bigint;
BEGIN
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO v
      FROM tp_commit_seq;
    IF pg_try_advisory_xact_lock(7403529, 0) THEN
        RETURN v;
    END IF;
    RETURN tp_gate();
END;
$$;
CREATE OR REPLACE FUNCTION tp_read_all(p_commit bigint, p_seq bigint, p_max bigint)
RETURNS TABLE (r_commit bigint, r_seq bigint, r_stream text, r_version bigint, r_id uuid,
               r_type text, r_schema int, r_payload text, r_metadata text)
LANGUAGE plpgsql VOLATILE
SET search_path = @schema@, pg_temp
AS $$
DECLARE
    g bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'tp_read_all needs READ COMMITTED (one snapshot would predate the gate)'
            USING ERRCODE = 'TP001';
    END IF;
    g := tp_gate();
    RETURN QUERY SELECT e.commit_no, e.seq, e.stream_id, e.version, e.event_id, e.event_type,
                        e.schema_version, e.payload::text, e.metadata::text
      FROM tp_events e
     WHERE (e.commit_no, e.seq) > (p_commit, p_seq) AND e.commit_no <= g
     ORDER BY e.commit_no, e.seq LIMIT p_max;
END;
$$;
";

/// The store's statements, every table and function named with the store's schema: they reach
/// the store whatever the `search_path` of the connection they run on (also one of another
/// store's pool, for the append; also one a caller switched to another role, or gave a
/// temporary `tp_events`, for the rest).
pub(super) struct Statements {
    /// The append, through the schema's `tp_append`.
    pub(super) append: String,
    /// Computes the gate and keeps it in the session (`tp.gate`) for the read pipelined right
    /// after it (see `gate.rs`); answers it too, for reuse.
    pub(super) gate: String,
    pub(super) read_all_at_gate: String,
    pub(super) head_at_gate: String,
    pub(super) count_after_at_gate: String,
    pub(super) stream_forward: String,
    pub(super) stream_backward: String,
    pub(super) find_event: String,
    pub(super) stream_version: String,
    pub(super) stream_metadata: String,
    pub(super) set_stream_metadata: String,
    pub(super) load_snapshot: String,
    pub(super) save_snapshot: String,
}

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        let s = quote_ident(schema);
        let read_all_at_gate = format!(
            "SELECT {COLUMNS} FROM {s}.tp_events WHERE (commit_no, seq) > ($1, $2) \
             AND commit_no <= {} ORDER BY tp_events.commit_no, tp_events.seq LIMIT $3",
            bound(4)
        );
        let head_at_gate = format!(
            "SELECT {COLUMNS} FROM {s}.tp_events WHERE commit_no <= {} \
             ORDER BY tp_events.commit_no DESC, tp_events.seq DESC LIMIT 1",
            bound(1)
        );
        let count_after_at_gate = format!(
            "SELECT count(*) FROM (SELECT 1 FROM {s}.tp_events \
             WHERE (commit_no, seq) > ($1, $2) AND commit_no <= {} LIMIT $3) s",
            bound(4)
        );
        Self {
            append: format!(
                "SELECT r_status, r_stream, r_id, r_version, r_commit, r_seq \
                 FROM {s}.tp_append($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            gate: format!("SELECT set_config('tp.gate', {s}.tp_gate_alone()::text, false)::bigint"),
            read_all_at_gate,
            head_at_gate,
            count_after_at_gate,
            stream_forward: format!(
                "SELECT {COLUMNS} FROM {s}.tp_events WHERE stream_id = $1 AND version >= $2 \
                 ORDER BY tp_events.version LIMIT $3"
            ),
            stream_backward: format!(
                "SELECT {COLUMNS} FROM {s}.tp_events WHERE stream_id = $1 AND version <= $2 \
                 ORDER BY tp_events.version DESC LIMIT $3"
            ),
            find_event: format!("SELECT {COLUMNS} FROM {s}.tp_events WHERE event_id = $1"),
            stream_version: format!("SELECT version FROM {s}.tp_streams WHERE stream_id = $1"),
            stream_metadata: format!(
                "SELECT metadata::text FROM {s}.tp_streams WHERE stream_id = $1"
            ),
            set_stream_metadata: format!(
                "INSERT INTO {s}.tp_streams (stream_id, version, metadata) \
                 VALUES ($1, 0, $2::text::json) \
                 ON CONFLICT (stream_id) DO UPDATE SET metadata = excluded.metadata"
            ),
            load_snapshot: format!(
                "SELECT version, snapshot_version, state::text FROM {s}.tp_snapshots \
                 WHERE stream_id = $1"
            ),
            save_snapshot: format!(
                "INSERT INTO {s}.tp_snapshots (stream_id, version, snapshot_version, state) \
                 VALUES ($1, $2, $3, $4::text::json) ON CONFLICT (stream_id) DO UPDATE SET \
                 version = excluded.version, snapshot_version = excluded.snapshot_version, \
                 state = excluded.state WHERE excluded.version >= tp_snapshots.version"
            ),
        }
    }
}

/// The columns [`row_to_event`](super::rows::row_to_event) reads, in its order.
const COLUMNS: &str = "commit_no, seq, stream_id, version, event_id, event_type, \
                       schema_version, payload::text AS payload_text, metadata::text AS metadata_text";

/// The read's bound: parameter `$n` when given (a gate reused), else the session's `tp.gate`.
/// A value left from an earlier read is an older gate: smaller, so only delaying; none at all
/// (`NULL`) reads nothing.
fn bound(n: u8) -> String {
    format!("COALESCE(${n}::bigint, NULLIF(current_setting('tp.gate', true), '')::bigint)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_quoted_as_one_identifier() {
        assert_eq!(quote_ident("orders"), r#""orders""#);
        assert_eq!(
            quote_ident(r#"a"; DROP TABLE x; --"#),
            r#""a""; DROP TABLE x; --""#
        );
    }

    #[test]
    fn every_statement_names_the_schema() {
        let st = Statements::new("s");
        for sql in [
            &st.append,
            &st.gate,
            &st.read_all_at_gate,
            &st.head_at_gate,
            &st.count_after_at_gate,
            &st.stream_forward,
            &st.stream_backward,
            &st.find_event,
            &st.stream_version,
            &st.stream_metadata,
            &st.set_stream_metadata,
            &st.load_snapshot,
            &st.save_snapshot,
        ] {
            assert!(sql.contains(r#""s".tp_"#), "{sql}");
        }
    }
}
