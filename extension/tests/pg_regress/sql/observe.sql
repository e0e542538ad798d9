-- The pipeline view: batch counts in ingest_stats, proxy reports, writebehind.proxies and the
-- status identity acked = pending_in_proxies + inbox_rows + applied + coalesced + dead_letters.
\set SHOW_CONTEXT never
CREATE SCHEMA ob;
CREATE TABLE ob.c (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note varchar(3));
SELECT writebehind.enable('ob.c');

-- batch 1 of proxy q holds 6 acknowledged changes the proxy coalesced into 4 inbox rows; the
-- worker folds two of them and dead-letters one
BEGIN;
SELECT writebehind.begin_batch('q', 1, NULL, ARRAY['ob.c'::regclass::oid], ARRAY[6::bigint], ARRAY[4::bigint]);
INSERT INTO writebehind.inbox (proxy_id, batch_seq, relid, op, key, data) VALUES
  ('q', 1, 'ob.c'::regclass, 'I', '["1"]', '{"n": "1"}'),
  ('q', 1, 'ob.c'::regclass, 'U', '["1"]', '{"n": {"add": "5"}}'),
  ('q', 1, 'ob.c'::regclass, 'I', '["2"]', '{"n": "2"}'),
  ('q', 1, 'ob.c'::regclass, 'I', '["3"]', '{"note": "too long"}');
COMMIT;
-- a replay of the batch counts nothing twice
BEGIN;
SELECT writebehind.begin_batch('q', 1, NULL, ARRAY['ob.c'::regclass::oid], ARRAY[6::bigint], ARRAY[4::bigint]);
ROLLBACK;
SELECT proxy_id, acked, coalesced, rows, batches FROM writebehind.ingest_stats WHERE relid = 'ob.c'::regclass;

-- the proxy still holds 2 acknowledged changes of ob.c
SELECT count(*) >= 0 AS reported FROM writebehind.report('q', jsonb_build_object(
    'address', '127.0.0.1:6432', 'durability', 'wal', 'version', 'test',
    'started_at', '2026-01-01 00:00:00+00', 'clients', 3, 'acked', 8, 'pending', 2,
    'shipped', 4, 'batches', 1, 'wal_bytes', 1000, 'errors', 0,
    'pending_by_table', jsonb_build_object('ob.c'::regclass::oid::text, 2)));
SELECT proxy_id, address, durability, stale, clients, acked, pending, shipped, wal_bytes, paused
FROM writebehind.proxies;

SELECT writebehind.flush('ob.c');
SELECT * FROM ob.c ORDER BY id;
SELECT acked, pending_in_proxies, inbox_rows, applied, coalesced, dead_letters, coalescing_ratio,
       acked = pending_in_proxies + inbox_rows + applied + coalesced + dead_letters AS adds_up
FROM writebehind.status WHERE "table" = 'ob.c'::regclass;

-- argument checks
BEGIN;
SELECT writebehind.begin_batch('q', 2, NULL, ARRAY['ob.c'::regclass::oid], ARRAY[1::bigint], ARRAY[]::bigint[]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT writebehind.report('', '{}');
\echo :LAST_ERROR_SQLSTATE

-- a proxy gone for good is forgotten
SELECT writebehind.forget_proxy('q'), writebehind.forget_proxy('q');
SELECT count(*) FROM writebehind.proxies;

SELECT writebehind.disable('ob.c');
DELETE FROM writebehind.dead_letters;
DELETE FROM writebehind.progress;
DELETE FROM writebehind.ingest_stats;
DROP SCHEMA ob CASCADE;
