-- gDBPool's test database: test_values(id, val1, val2), seeded, with a NOTIFY on UPDATE.
-- The row count comes from the custom setting dbpool.seed_rows (default 1,000,000):
--   psql "$DATABASE_URL" -c "SET dbpool.seed_rows = 1000" -f sql/test_schema.sql   (psql runs -c first)
--   or PGOPTIONS='-c dbpool.seed_rows=1000' psql "$DATABASE_URL" -f sql/test_schema.sql
DROP TABLE IF EXISTS test_values CASCADE;

CREATE TABLE test_values (
  id   serial PRIMARY KEY,
  val1 integer NOT NULL,
  val2 integer NOT NULL
);

INSERT INTO test_values (val1, val2)
SELECT (random() * 1000)::int, (random() * 1000)::int
FROM generate_series(1, coalesce(nullif(current_setting('dbpool.seed_rows', true), ''), '1000000')::int);

ANALYZE test_values;

-- gDBPool used a RULE; a trigger does the same and sees the new row.
CREATE OR REPLACE FUNCTION notify_test_values() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('notify_test_values', json_build_object('id', NEW.id, 'val1', NEW.val1)::text);
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER notify_test_values
AFTER UPDATE ON test_values
FOR EACH ROW EXECUTE FUNCTION notify_test_values();
