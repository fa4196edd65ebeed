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
