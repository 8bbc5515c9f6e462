-- When PostgreSQL stored each audit record, beside when it happened (`occurred_at`): the difference is
-- how far the decision audit trails behind the decisions.
--
-- The default is volatile on purpose. A `COPY` into a table whose omitted columns have a volatile
-- default inserts each row as it arrives; otherwise it buffers up to 1,000 rows and inserts them at
-- once. ext-authz streams decisions into one `COPY` for 100 ms at a time, so with buffering PostgreSQL
-- did a whole window's inserts (index entries included) in one burst of 2-5 ms at its end, which took
-- a core from Envoy and ext-authz on a small machine and showed in the proxy's p99. Row by row, the
-- same work comes in pieces of well under a millisecond, for about 10 % more PostgreSQL CPU per row
-- (BENCHMARKS.md).
--
-- Records stored before this migration have no `written_at` (adding the column with a volatile default
-- would rewrite every partition).

ALTER TABLE audit_log ADD COLUMN written_at timestamptz;
ALTER TABLE audit_log ALTER COLUMN written_at SET DEFAULT clock_timestamp();
