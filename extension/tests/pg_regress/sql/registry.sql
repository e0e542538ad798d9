-- The registry: enable, alter, disable, and every error they raise (with SQLSTATE).
\set SHOW_CONTEXT never
CREATE SCHEMA rt;
CREATE TABLE rt.counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE rt.pair (region text, id int, v text, PRIMARY KEY (id, region));
CREATE TABLE rt.nokey (a int);
CREATE VIEW rt.v AS SELECT * FROM rt.counters;
CREATE TABLE rt.parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE rt.secure (id int PRIMARY KEY);
ALTER TABLE rt.secure ENABLE ROW LEVEL SECURITY;
CREATE TEMP TABLE tmp_t (id int PRIMARY KEY);
CREATE EXTENSION postgres_fdw;
CREATE SERVER loop FOREIGN DATA WRAPPER postgres_fdw;
CREATE FOREIGN TABLE rt.remote (id int) SERVER loop;

SELECT writebehind.enable('rt.counters');
SELECT writebehind.enable('rt.pair', on_conflict => 'ignore', read_barrier => false,
                          flush_interval => '50 ms', max_batch_rows => 500);
SELECT writebehind.enable('rt.nokey', mode => 'append');
SELECT relid, mode, on_conflict, read_barrier, flush_interval, max_batch_rows, key_columns
  FROM writebehind.tables ORDER BY relid::text;

-- errors
SELECT writebehind.enable('rt.counters');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.nokey');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE rt.nokey2 (a int);
SELECT writebehind.enable('rt.nokey2');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.v');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.parted');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.secure');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('tmp_t');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.remote');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.nokey2', mode => 'fancy');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.nokey2', mode => 'append', on_conflict => 'ignore');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE rt.k2 (id int PRIMARY KEY);
SELECT writebehind.enable('rt.k2', on_conflict => 'overwrite');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.k2', max_batch_rows => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.k2', flush_interval => '0 s');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.k2', colour => 'blue');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.enable('rt.missing');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.disable('rt.k2');
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.alter('rt.k2', read_barrier => false);
\echo :LAST_ERROR_SQLSTATE
SELECT writebehind.alter('rt.counters', on_conflict => 'bogus');
\echo :LAST_ERROR_SQLSTATE

-- a role that does not own the table
CREATE ROLE rt_other;
GRANT USAGE ON SCHEMA rt TO rt_other;
SET ROLE rt_other;
SELECT writebehind.enable('rt.k2');
\echo :LAST_ERROR_SQLSTATE
-- nor can it write the registry directly (row-level security on writebehind.tables)
INSERT INTO writebehind.tables (relid) VALUES ('rt.k2');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- alter changes only what it is given
SELECT writebehind.alter('rt.counters', on_conflict => 'dead_letter', max_batch_rows => 42);
SELECT relid, mode, on_conflict, read_barrier, max_batch_rows FROM writebehind.tables WHERE relid = 'rt.counters'::regclass;

-- disable removes the registration, the table stays
SELECT writebehind.disable('rt.pair');
SELECT count(*) FROM writebehind.tables WHERE relid = 'rt.pair'::regclass;
SELECT count(*) FROM rt.pair;

-- the status and workers views
SELECT "table", mode, inbox_rows, applied, coalesced, batches, dead_letters FROM writebehind.status ORDER BY "table"::text;
SELECT attname FROM pg_attribute WHERE attrelid = 'writebehind.status'::regclass AND attnum > 0 ORDER BY attnum;
SELECT attname FROM pg_attribute WHERE attrelid = 'writebehind.workers'::regclass AND attnum > 0 ORDER BY attnum;
SELECT database, count(*) FROM writebehind.workers GROUP BY 1;

SELECT writebehind.disable('rt.counters');
SELECT writebehind.disable('rt.nokey');
DROP SCHEMA rt CASCADE;
DROP SERVER loop;
DROP EXTENSION postgres_fdw;
DROP OWNED BY rt_other;
DROP ROLE rt_other;
