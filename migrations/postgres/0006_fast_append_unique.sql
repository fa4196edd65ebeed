-- The one-statement append without its own look for stored event ids: the unique index on
-- event_id refuses a stored id anyway, and the statement (autocommit) then writes nothing; the
-- caller takes a unique violation, like a moved stream, as the sign to plan the batch in full
-- (src/store/postgres.rs). One index search per event less on every append (about 11% of a
-- single-event append's time in a pgbench run on a million-row table).
--
-- A process still running the code from before this migration reports such a batch as a store
-- error (its commands fail and are retried) instead of answering the retry; upgrade command
-- processes together.

CREATE OR REPLACE FUNCTION nursery_append_fast(
    s_types TEXT[], s_ids TEXT[], s_bases BIGINT[],
    r_stream INT[], r_offset INT[], e_ids UUID[], e_types TEXT[], e_revisions INT[],
    e_formats SMALLINT[], recorded BIGINT, e_metadata TEXT[], e_payloads BYTEA[])
RETURNS TABLE (written BOOLEAN, head BIGINT, versions BIGINT[])
LANGUAGE plpgsql VOLATILE
-- A cached generic plan cannot see how few ids an array holds and, once the table is large,
-- may scan it: plan each call for its arguments instead (a fraction of a millisecond).
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    before BIGINT;
    current_versions BIGINT[];
BEGIN
    SELECT c.last_position INTO before FROM event_counter c WHERE c.id = 1 FOR UPDATE;
    SELECT array_agg(COALESCE((SELECT MAX(e.sequence) FROM events e
                               WHERE e.aggregate_type = s.t AND e.aggregate_id = s.i), 0)
                     ORDER BY s.n)
      INTO current_versions
      FROM unnest(s_types, s_ids) WITH ORDINALITY AS s(t, i, n);
    IF EXISTS (SELECT 1 FROM unnest(s_bases, current_versions) AS x(b, c) WHERE x.b >= 0 AND x.b <> x.c) THEN
        RETURN QUERY SELECT FALSE, before, current_versions;
        RETURN;
    END IF;
    INSERT INTO events (global_position, aggregate_type, aggregate_id, sequence, event_id,
                        event_type, payload_revision, payload_format, recorded_at, metadata, payload)
    SELECT before + r.n, s_types[r.si], s_ids[r.si], current_versions[r.si] + r.off + 1, r.eid,
           r.ety, r.rev, r.fmt, recorded, r.meta::jsonb, r.pl
      FROM unnest(r_stream, r_offset, e_ids, e_types, e_revisions, e_formats, e_metadata, e_payloads)
           WITH ORDINALITY AS r(si, off, eid, ety, rev, fmt, meta, pl, n);
    UPDATE event_counter SET last_position = before + cardinality(e_ids) WHERE id = 1;
    RETURN QUERY SELECT TRUE, before, current_versions;
END;
$$;
