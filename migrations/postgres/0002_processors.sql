-- Event processors: which generation of each projection serves, checkpoints per generation,
-- read-model documents, and dead letters.

CREATE TABLE IF NOT EXISTS processors (
    name              TEXT    PRIMARY KEY,
    active_generation INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS checkpoints (
    name       TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    position   BIGINT  NOT NULL,        -- the last global position applied
    updated_at BIGINT  NOT NULL,        -- microseconds since the Unix epoch
    PRIMARY KEY (name, generation)
);

CREATE TABLE IF NOT EXISTS documents (
    projection TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    key        TEXT    NOT NULL,
    body       JSONB   NOT NULL,
    PRIMARY KEY (projection, generation, key)
);

CREATE TABLE IF NOT EXISTS dead_letters (
    id             BIGSERIAL PRIMARY KEY,
    processor      TEXT     NOT NULL,
    position       BIGINT   NOT NULL,
    aggregate_type TEXT     NOT NULL,
    aggregate_id   TEXT     NOT NULL,
    sequence       BIGINT   NOT NULL,
    event_type     TEXT     NOT NULL,
    error          TEXT     NOT NULL,   -- why it failed; for one waiting behind: which position it waits for
    attempts       INTEGER  NOT NULL,
    parked         BOOLEAN  NOT NULL,   -- true: it failed itself; false: it waits behind a failed one
    skipped        BOOLEAN  NOT NULL DEFAULT FALSE, -- dropped by an operator; kept so rebuilds leave it out too
    parked_at      BIGINT   NOT NULL,
    UNIQUE (processor, position)
);
CREATE INDEX IF NOT EXISTS dead_letters_stream ON dead_letters (processor, aggregate_type, aggregate_id, position);
