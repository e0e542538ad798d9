-- The inbox contract: exactly-once batches, folding, policies, dead letters, retry, flush.
\set SHOW_CONTEXT never
CREATE SCHEMA it;
CREATE TABLE it.c (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note varchar(5), price numeric(10,2));
SELECT writebehind.enable('it.c');

-- batch 1 of proxy p: begin_batch says true the first time, false for a replay
BEGIN;
SELECT writebehind.begin_batch('p', 1);
INSERT INTO writebehind.inbox (proxy_id, batch_seq, relid, op, key, data) VALUES
  ('p', 1, 'it.c'::regclass, 'I', '["1"]', '{"n": "10", "price": "1.50"}'),
  ('p', 1, 'it.c'::regclass, 'U', '["1"]', '{"n": {"add": "1"}, "price": {"add": "0.25"}}'),
  ('p', 1, 'it.c'::regclass, 'U', '["1"]', '{"n": {"add": "-3"}}'),
  ('p', 1, 'it.c'::regclass, 'I', '["2"]', '{"n": "2", "note": "toolong"}'),
  ('p', 1, 'it.c'::regclass, 'I', '["3"]', '{"n": "x3"}'),
  ('p', 1, 'it.c'::regclass, 'I', '["4"]', '{"n": "4"}'),
  ('p', 1, 'it.c'::regclass, 'D', '["4"]', NULL),
  ('p', 1, 'it.c'::regclass, 'I', '["4"]', '{"note": "again"}'),
  ('p', 1, 'it.c'::regclass, 'U', '["5"]', '{"n": {"set": "5"}}'),
  ('p', 1, 'it.c'::regclass, 'I', '["6"]', 'not json');
COMMIT;
BEGIN;
SELECT writebehind.begin_batch('p', 1);
ROLLBACK;
SELECT writebehind.committed_seq('p'), writebehind.committed_seq('nobody');
SELECT writebehind.flush('it.c');
SELECT * FROM it.c ORDER BY id;
SELECT op, key, sqlstate, message FROM writebehind.dead_letters ORDER BY key;
SELECT inbox_rows, applied, coalesced, batches, dead_letters, apply_lag_seconds FROM writebehind.status WHERE "table" = 'it.c'::regclass;

-- upsert updates listed columns only; N (DO NOTHING) and X (DO UPDATE SET listed)
BEGIN;
SELECT writebehind.begin_batch('p', 2);
INSERT INTO writebehind.inbox (proxy_id, batch_seq, relid, op, key, data, conflict_set) VALUES
  ('p', 2, 'it.c'::regclass, 'I', '["1"]', '{"note": "up"}', NULL),
  ('p', 2, 'it.c'::regclass, 'N', '["4"]', '{"n": "999"}', NULL),
  ('p', 2, 'it.c'::regclass, 'X', '["7"]', '{"n": "7", "note": "new"}', '{note}'),
  ('p', 2, 'it.c'::regclass, 'X', '["4"]', '{"n": "40", "note": "x"}', '{n}');
COMMIT;
SELECT writebehind.flush('it.c');
SELECT * FROM it.c ORDER BY id;

-- a policy of dead_letter sends a conflicting INSERT to the dead letters with 23505
SELECT writebehind.alter('it.c', on_conflict => 'dead_letter');
BEGIN;
SELECT writebehind.begin_batch('p', 3);
INSERT INTO writebehind.inbox (proxy_id, batch_seq, relid, op, key, data) VALUES
  ('p', 3, 'it.c'::regclass, 'I', '["1"]', '{"n": "100"}'),
  ('p', 3, 'it.c'::regclass, 'I', '["8"]', '{"n": "8"}');
COMMIT;
SELECT writebehind.flush('it.c');
SELECT id, n FROM it.c WHERE id IN (1, 8) ORDER BY id;
SELECT key, sqlstate FROM writebehind.dead_letters WHERE sqlstate = '23505';

-- retry: fix the cause, re-queue, apply
ALTER TABLE it.c ALTER COLUMN note TYPE varchar(20);
SELECT writebehind.retry_dead_letters('it.c', ARRAY(SELECT id FROM writebehind.dead_letters WHERE sqlstate = '22001'));
SELECT writebehind.flush('it.c');
SELECT id, n, note FROM it.c WHERE id = 2;
SELECT key, sqlstate FROM writebehind.dead_letters ORDER BY key;

-- flush outside READ COMMITTED is refused
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT writebehind.flush();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- begin_batch argument checks
SELECT writebehind.begin_batch('', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.begin_batch('p', 0);
\echo :LAST_ERROR_SQLSTATE

SELECT writebehind.disable('it.c');
DELETE FROM writebehind.dead_letters;
DELETE FROM writebehind.progress;
DROP SCHEMA it CASCADE;
