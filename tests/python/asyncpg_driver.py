"""asyncpg (named prepared statements, Describe of statements, binary parameters and results,
its own type introspection, executemany, transactions, copy_records_to_table, LISTEN) through
writebehind-proxy, both on pass-through tables and on the write-behind table TABLE.

Usage: asyncpg_driver.py PORT DIRECT_PORT TABLE (exit 0 = pass). With PORT = DIRECT_PORT the
same scenario runs straight against PostgreSQL (the reference: every expectation below is what
PostgreSQL does); otherwise PORT is the proxy's, and DIRECT_PORT is used to observe that writes
were acknowledged from memory and to count them in writebehind.status.

TABLE must exist, be write-behind (`writebehind.enable`) and be empty:
  (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note text, tag varchar(8))"""
import asyncio
import datetime
import decimal
import random
import sys

import asyncpg

port, direct_port, table = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
through_proxy = port != direct_port


async def connect(p):
    return await asyncpg.connect(host="127.0.0.1", port=p, user="postgres", database="postgres", ssl=False)


async def expect_error(sqlstate, coro):
    try:
        await coro
    except asyncpg.PostgresError as e:
        assert e.sqlstate == sqlstate, f"expected {sqlstate}, got {e.sqlstate}: {e}"
        return
    raise AssertionError(f"expected an error {sqlstate}, got none")


async def pass_through(conn):
    """Statements on ordinary tables: values of many types both ways, errors, rollback, COPY,
    type introspection, LISTEN/NOTIFY."""
    kinds = f"{table}_kinds"
    await conn.execute(f"DROP TABLE IF EXISTS {kinds}")
    await conn.execute(
        f"CREATE TABLE {kinds} (id int PRIMARY KEY, i int, t text, num numeric(12,3),"
        " ts timestamptz, b bytea, flag bool)"
    )
    ts = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone.utc)
    rows = [
        (1, 42, "héllo", decimal.Decimal("12345.678"), ts, b"\x00\xffbin", True),
        (2, None, None, None, None, None, None),
        (3, -7, "", decimal.Decimal("-0.001"), ts + datetime.timedelta(days=400), b"", False),
    ]
    ins = await conn.prepare(f"INSERT INTO {kinds} VALUES ($1, $2, $3, $4, $5, $6, $7)")
    assert [t.name for t in ins.get_parameters()] == [
        "int4", "int4", "text", "numeric", "timestamptz", "bytea", "bool"
    ], ins.get_parameters()
    for r in rows:
        assert await ins.fetch(*r) == []
    got = await conn.fetch(f"SELECT * FROM {kinds} WHERE id = ANY($1::int[]) ORDER BY id", [1, 2, 3])
    assert [tuple(r) for r in got] == rows, got
    # Parameters compared with parameters of every type (binary both ways).
    one = await conn.fetchrow(
        f"SELECT id FROM {kinds} WHERE i = $1 AND t = $2 AND num = $3 AND ts = $4 AND b = $5 AND flag = $6",
        *rows[0][1:],
    )
    assert one["id"] == 1, one
    assert await conn.fetchval("SELECT $1::int IS NULL", None) is True
    # Errors with their SQLSTATE; the session goes on.
    await expect_error("23505", conn.execute(f"INSERT INTO {kinds} (id) VALUES ($1)", 1))
    await expect_error("22012", conn.fetchval("SELECT 1 / $1::int", 0))
    await expect_error("42P01", conn.fetch("SELECT * FROM no_such_table"))
    # A transaction rolled back leaves nothing; one committed stays.
    tr = conn.transaction()
    await tr.start()
    await conn.execute(f"INSERT INTO {kinds} (id, t) VALUES ($1, $2)", 10, "gone")
    assert await conn.fetchval(f"SELECT count(*) FROM {kinds} WHERE id = 10") == 1
    await tr.rollback()
    assert await conn.fetchval(f"SELECT count(*) FROM {kinds} WHERE id = 10") == 0
    try:
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {kinds} (id) VALUES ($1)", 11)
            await conn.execute(f"INSERT INTO {kinds} (id) VALUES ($1)", 11)
    except asyncpg.UniqueViolationError:
        pass
    assert await conn.fetchval(f"SELECT count(*) FROM {kinds} WHERE id = 11") == 0
    async with conn.transaction():
        await conn.execute(f"INSERT INTO {kinds} (id) VALUES ($1)", 12)
    assert await conn.fetchval(f"SELECT count(*) FROM {kinds} WHERE id = 12") == 1
    # executemany on an ordinary table: pipelined Bind/Execute, one Sync.
    await conn.executemany(f"INSERT INTO {kinds} (id, i, t) VALUES ($1, $2, $3)",
                           [(100 + k, k, f"m{k}") for k in range(200)])
    # COPY in binary format.
    await conn.copy_records_to_table(kinds, records=[(500 + k, k, f"c{k}") for k in range(300)],
                                     columns=["id", "i", "t"])
    assert await conn.fetchval(f"SELECT count(*) FROM {kinds} WHERE id >= 100") == 500
    # asyncpg's own type introspection (an enum and a domain it does not know).
    await conn.execute(f"DROP TYPE IF EXISTS {table}_mood CASCADE")
    await conn.execute(f"CREATE TYPE {table}_mood AS ENUM ('sad', 'happy')")
    assert await conn.fetchval(f"SELECT 'happy'::{table}_mood") == "happy"
    assert await conn.fetchval(f"SELECT ARRAY['sad', 'happy']::{table}_mood[]") == ["sad", "happy"]
    # LISTEN on this session, NOTIFY from another one.
    got_note = asyncio.get_running_loop().create_future()
    await conn.add_listener(f"{table}_chan", lambda c, pid, ch, payload: got_note.done() or got_note.set_result(payload))
    other = await connect(port)
    await other.execute(f"NOTIFY {table}_chan, 'ping'")
    await other.close()
    assert await asyncio.wait_for(got_note, 10) == "ping"


class Model:
    """What TABLE must hold, and how many changes the proxy must have acknowledged."""

    def __init__(self):
        self.rows = {}  # id -> [n, note, tag]
        self.acked = 0


async def write_behind(conn, observer):
    m = Model()
    rng = random.Random(7)
    # asyncpg prepares with Parse/Describe/Flush and no Sync. The SELECT's passes through, and
    # the proxy then sends the rest of that group upstream as it comes: had a write's
    # Bind/Execute/Sync come next, that one write would pass through (PostgreSQL runs it: the
    # same outcome, not acknowledged from memory). A first read ends the group.
    read = await conn.prepare(f"SELECT n, note, tag FROM {table} WHERE id = $1")
    assert await read.fetchrow(0) is None
    ins = await conn.prepare(f"INSERT INTO {table} (id, n, note) VALUES ($1, $2, $3)")
    inc = await conn.prepare(f"UPDATE {table} SET n = n + $1 WHERE id = $2")
    setnote = await conn.prepare(f"UPDATE {table} SET note = $1, tag = $2 WHERE id = $3")
    dele = await conn.prepare(f"DELETE FROM {table} WHERE id = $1")
    # Describe answered with the types PostgreSQL infers from the columns.
    assert [t.name for t in inc.get_parameters()] == ["int8", "int4"], inc.get_parameters()
    assert [t.name for t in ins.get_parameters()] == ["int4", "int8", "text"], ins.get_parameters()
    assert inc.get_attributes() == ()

    for k in range(1, 101):
        assert await ins.fetch(k, 0, f"k{k}") == []
        m.rows[k] = [0, f"k{k}", None]
        m.acked += 1
    # Increments on one key, then a direct look: through the proxy nothing applied yet.
    for _ in range(10):
        await inc.fetch(5, 1)
    m.rows[1][0] += 50
    m.acked += 10
    if through_proxy:
        n = await observer.fetchval(f"SELECT count(*) FROM {table}")
        assert n == 0, f"acknowledged writes must not have reached PostgreSQL yet, found {n} rows"
    assert tuple(await read.fetchrow(1)) == (50, "k1", None), "read-your-writes"

    next_id = 101
    for step in range(3000):
        live = sorted(m.rows)
        r = rng.random()
        if r < 0.6:
            k, d = rng.choice(live), rng.randint(-5, 20)
            assert await conn.execute(f"UPDATE {table} SET n = n + $1 WHERE id = $2", d, k) == "UPDATE 1"
            m.rows[k][0] += d
        elif r < 0.75:
            k, note, tag = rng.choice(live), f"s{step}", rng.choice([None, "t", "eight888"])
            assert await conn.execute(setnote.get_query(), note, tag, k) == "UPDATE 1"
            m.rows[k][1:] = [note, tag]
        elif r < 0.85:
            k = rng.choice(live)
            assert await conn.execute(dele.get_query(), k) == "DELETE 1"
            del m.rows[k]
        else:
            k, n = next_id, rng.randint(0, 1000)
            next_id += 1
            assert await conn.execute(ins.get_query(), k, n, None) == "INSERT 0 1"
            m.rows[k] = [n, None, None]
        m.acked += 1
        if step % 300 == 299:
            k = rng.choice(sorted(m.rows))
            got = await read.fetchrow(k)
            assert got is not None and list(got) == m.rows[k], (k, got, m.rows[k])
            gone = next_id + 5
            assert await read.fetchrow(gone) is None

    # executemany: pipelined Bind/Execute of one prepared statement, one Sync.
    keys = sorted(m.rows)[:50]
    await conn.executemany(inc.get_query(), [(3, k) for k in keys])
    for k in keys:
        m.rows[k][0] += 3
    m.acked += len(keys)
    assert await conn.fetchval(f"SELECT sum(n) FROM {table}") == sum(v[0] for v in m.rows.values())
    # A COPY (asyncpg: Parse/Describe/Flush of its column query, then the COPY's Query without
    # a Sync), then a write: the Query ended that group, so the write is acknowledged.
    # (Columns not copied before: asyncpg caches the column query per column list.)
    await conn.copy_records_to_table(f"{table}_kinds", records=[(9000 + i, "late") for i in range(10)],
                                     columns=["id", "t"])
    await inc.fetch(1, keys[0])
    m.rows[keys[0]][0] += 1
    m.acked += 1
    if through_proxy:
        n = await observer.fetchval(f"SELECT n FROM {table} WHERE id = $1", keys[0])
        assert n == m.rows[keys[0]][0] - 1, "the write after COPY was not acknowledged from memory"

    # Validation errors with PostgreSQL's SQLSTATE; nothing of them is applied.
    k = sorted(m.rows)[0]
    await expect_error("23502", conn.execute(ins.get_query(), 9999, None, "x"))
    await expect_error("23502", conn.execute(f"UPDATE {table} SET n = $1 WHERE id = $2", None, k))
    await expect_error("22001", conn.execute(setnote.get_query(), "x", "ninechars", k))
    # Constants in the simple protocol (asyncpg's parameters are binary, checked by asyncpg):
    # a text that is no integer, an integer out of range.
    await expect_error("22P02", conn.execute(f"UPDATE {table} SET n = n + 'abc' WHERE id = {k}"))
    await expect_error("22003", conn.execute(f"INSERT INTO {table} (id, n) VALUES (2147483648, 1)"))
    await expect_error("42703", conn.execute(f"UPDATE {table} SET nope = $1 WHERE id = $2", 1, k))
    # executemany with a bad row in the middle: atomic, nothing of it applies.
    await expect_error("23502", conn.executemany(inc.get_query().replace("n + $1", "$1"),
                                                 [(1, keys[0]), (None, keys[1]), (1, keys[2])]))
    # Simple-protocol writes are acknowledged too.
    assert await conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id = {k}") == "UPDATE 1"
    m.rows[k][0] += 1
    m.acked += 1

    # A transaction: its writes pass through (not acknowledged), a rollback undoes them.
    tr = conn.transaction()
    await tr.start()
    await conn.execute(inc.get_query(), 1000, k)
    assert tuple(await read.fetchrow(k)) == (m.rows[k][0] + 1000, *m.rows[k][1:])
    await tr.rollback()
    async with conn.transaction():
        await conn.execute(inc.get_query(), 7, k)
    m.rows[k][0] += 7
    assert list(await read.fetchrow(k)) == m.rows[k]

    # Everything, through the session (its barrier), then applied and compared directly too.
    got = {r["id"]: [r["n"], r["note"], r["tag"]] for r in await conn.fetch(f"SELECT * FROM {table}")}
    assert got == m.rows, f"{len(got)} rows vs {len(m.rows)} in the model"
    await conn.execute("SELECT writebehind.flush()")
    got = {r["id"]: [r["n"], r["note"], r["tag"]] for r in await observer.fetch(f"SELECT * FROM {table}")}
    assert got == m.rows, "table (direct) differs from the model"
    assert await observer.fetchval("SELECT count(*) FROM writebehind.dead_letters") == 0
    return m.acked if through_proxy else 0


async def acked_in_status(observer, want):
    """`acked` of TABLE in writebehind.status, once it settles on `want` (proxies report each
    second)."""
    got = None
    for _ in range(100):
        got = await observer.fetchval(
            'SELECT acked FROM writebehind.status WHERE "table" = $1::regclass', table)
        if got == want:
            return got
        await asyncio.sleep(0.1)
    return got


async def main():
    conn = await connect(port)
    observer = await connect(direct_port)
    await pass_through(conn)
    want = await write_behind(conn, observer)
    acked = await acked_in_status(observer, want)
    assert acked == want, f"writebehind.status acked {acked}, expected {want}"
    await conn.close()
    await observer.close()
    print(f"ok: asyncpg {asyncpg.__version__}, {'proxy' if through_proxy else 'direct'}, acked {acked}")


asyncio.run(main())
