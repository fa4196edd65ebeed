-- The event store on PostgreSQL.
--
-- Gap safety: every append first locks the single row of event_counter (SELECT ... FOR UPDATE)
-- and holds it to commit. Appends are therefore serialized, positions are taken from the counter
-- (not a sequence, so a rolled-back append leaves no hole), and each append's rows become
-- visible before the next append can even take its positions. A reader of the global order can
-- never see position N+1 committed while N is still pending. See src/store/postgres.rs.

CREATE TABLE IF NOT EXISTS event_counter (
    id            SMALLINT PRIMARY KEY CHECK (id = 1),
    last_position BIGINT   NOT NULL
);
INSERT INTO event_counter (id, last_position) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS events (
    global_position  BIGINT   PRIMARY KEY,          -- 1, 2, 3, ... with no gaps
    aggregate_type   TEXT     NOT NULL,
    aggregate_id     TEXT     NOT NULL,
    sequence         BIGINT   NOT NULL,             -- per aggregate, from 1, no gaps
    event_id         UUID     NOT NULL UNIQUE,
    event_type       TEXT     NOT NULL,
    payload_revision INTEGER  NOT NULL,
    payload_format   SMALLINT NOT NULL,             -- 0 MessagePack, 1 JSON
    recorded_at      BIGINT   NOT NULL,             -- microseconds since the Unix epoch, UTC
    metadata         JSONB    NOT NULL,             -- command, correlation, causation ids, customer, extra
    payload          BYTEA    NOT NULL,
    CONSTRAINT events_stream_sequence UNIQUE (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type   TEXT     NOT NULL,
    aggregate_id     TEXT     NOT NULL,
    sequence         BIGINT   NOT NULL,
    payload_revision INTEGER  NOT NULL,
    payload_format   SMALLINT NOT NULL,
    recorded_at      BIGINT   NOT NULL,
    payload          BYTEA    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- Takes the append lock and reads, in one round trip, what planning an append needs: the head,
-- the current version of each stream, and where any of the given event ids is already stored.
-- Inside a VOLATILE function each statement takes a fresh snapshot (READ COMMITTED), so the
-- reads after the lock see everything the previous lock holder committed.
CREATE OR REPLACE FUNCTION nursery_lock_for_append(types TEXT[], ids TEXT[], event_ids UUID[])
RETURNS TABLE (kind SMALLINT, aggregate_type TEXT, aggregate_id TEXT, sequence BIGINT,
               event_id UUID, global_position BIGINT, recorded_at BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head BIGINT;
BEGIN
    SELECT c.last_position INTO head FROM event_counter c WHERE c.id = 1 FOR UPDATE;
    RETURN QUERY
        SELECT 2::SMALLINT, ''::TEXT, ''::TEXT, 0::BIGINT, NULL::UUID, head, 0::BIGINT
        UNION ALL
        SELECT 0::SMALLINT, s.t, s.i,
               COALESCE((SELECT MAX(e.sequence) FROM events e
                         WHERE e.aggregate_type = s.t AND e.aggregate_id = s.i), 0),
               NULL::UUID, 0::BIGINT, 0::BIGINT
          FROM unnest(types, ids) AS s(t, i)
        UNION ALL
        SELECT 1::SMALLINT, e.aggregate_type, e.aggregate_id, e.sequence, e.event_id, e.global_position, e.recorded_at
          FROM events e WHERE e.event_id = ANY(event_ids);
END;
$$;
