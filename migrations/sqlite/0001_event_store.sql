-- The event store on SQLite. Appends run under BEGIN IMMEDIATE (one writer at a time), so
-- global positions are assigned and committed strictly in order.

CREATE TABLE IF NOT EXISTS events (
    global_position  INTEGER PRIMARY KEY,          -- 1, 2, 3, ... with no gaps
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    sequence         INTEGER NOT NULL,             -- per aggregate, from 1, no gaps
    event_id         BLOB    NOT NULL UNIQUE,      -- UUID, 16 bytes
    event_type       TEXT    NOT NULL,
    payload_revision INTEGER NOT NULL,
    payload_format   INTEGER NOT NULL,             -- 0 MessagePack, 1 JSON
    recorded_at      INTEGER NOT NULL,             -- microseconds since the Unix epoch, UTC
    metadata         TEXT    NOT NULL,             -- JSON: command, correlation, causation ids, customer, extra
    payload          BLOB    NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, sequence) -- optimistic concurrency lives here
);

CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    sequence         INTEGER NOT NULL,
    payload_revision INTEGER NOT NULL,
    payload_format   INTEGER NOT NULL,
    recorded_at      INTEGER NOT NULL,
    payload          BLOB    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
