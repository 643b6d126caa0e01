//! The tables, indexes and the append function, as SQL.

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tp_events (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id          xid8   NOT NULL DEFAULT pg_current_xact_id(),
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
CREATE INDEX IF NOT EXISTS tp_events_global ON tp_events (tx_id, seq);
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
-- Rows: ('dup', stream, id, version, tx, seq) for ids already stored (nothing written);
-- ('conflict', NULL, NULL, current version, NULL, NULL); or ('ok', ...) per appended event.
CREATE OR REPLACE FUNCTION tp_append(
    p_stream text, p_expected bigint, p_ids uuid[], p_types text[], p_schema int[],
    p_payloads text[], p_metadata text[], p_recorded bigint)
RETURNS TABLE (r_status text, r_stream text, r_id uuid, r_version bigint, r_tx text, r_seq bigint)
LANGUAGE plpgsql
-- Plans made while the tables were empty (sequential scans) must not be kept as they grow.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    cur bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_ids) AS i(id) JOIN tp_events e ON e.event_id = i.id) THEN
        RETURN QUERY SELECT 'dup'::text, e.stream_id, e.event_id, e.version, e.tx_id::text, e.seq
            FROM unnest(p_ids) AS i(id) JOIN tp_events e ON e.event_id = i.id;
        RETURN;
    END IF;
    INSERT INTO tp_streams (stream_id, version) VALUES (p_stream, 0) ON CONFLICT DO NOTHING;
    SELECT s.version INTO cur FROM tp_streams s WHERE s.stream_id = p_stream FOR UPDATE;
    IF NOT (p_expected = -1 OR (p_expected = -2 AND cur = 0) OR (p_expected = -3 AND cur > 0)
            OR p_expected = cur) THEN
        RETURN QUERY SELECT 'conflict'::text, NULL::text, NULL::uuid, cur, NULL::text, NULL::bigint;
        RETURN;
    END IF;
    RETURN QUERY
        INSERT INTO tp_events AS e (stream_id, version, event_id, event_type, schema_version,
                                    payload, metadata, recorded_at)
        SELECT p_stream, cur + u.ord, u.id, u.t, u.sv, u.p::json, u.m::json, p_recorded
        FROM UNNEST(p_ids, p_types, p_schema, p_payloads, p_metadata)
             WITH ORDINALITY AS u(id, t, sv, p, m, ord)
        RETURNING 'ok'::text, e.stream_id, e.event_id, e.version, e.tx_id::text, e.seq;
    UPDATE tp_streams SET version = cur + cardinality(p_ids) WHERE stream_id = p_stream;
    PERFORM pg_notify('tp_events', '');
END;
$$;
";

pub(super) const APPEND: &str = "SELECT r_status, r_stream, r_id, r_version, r_tx, r_seq \
                      FROM tp_append($1, $2, $3, $4, $5, $6, $7, $8)";

// The transaction id goes out as text under another name: an output column named `tx_id`
// would capture `ORDER BY tx_id` and sort as text ("1000" before "999").
pub(super) const COLUMNS: &str = "tx_id::text AS tx_text, seq, stream_id, version, event_id, event_type, \
                       schema_version, payload::text AS payload_text, metadata::text AS metadata_text";
