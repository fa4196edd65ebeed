-- Who runs the event processors: the process holding the advisory lock of a name, with the
-- epoch it took when it got the lock. Commits of the processors check the epoch, so a process
-- that lost the lead (its connection dropped, another took over) can never commit again.
CREATE TABLE IF NOT EXISTS processor_leaders (
    name  TEXT   PRIMARY KEY,
    epoch BIGINT NOT NULL
);
