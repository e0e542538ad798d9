"""psycopg 3 writing to a write-behind table through writebehind-proxy, compared with the same
statements on a plain twin table straight to PostgreSQL: server-side binding, prepared
statements (after psycopg's prepare threshold), pipelines, and a pipeline with an error in the
middle. Outcomes (values and errors) must be the same.

Usage: psycopg_writebehind.py PROXY_PORT PG_PORT (exit 0 = pass)."""
import sys

import psycopg
from psycopg import errors

proxy_port, pg_port = int(sys.argv[1]), int(sys.argv[2])


def connect(port):
    return psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True)


def scenario(conn, table, observer=None):
    """Runs the writes on `table`; returns what happened, step by step. `observer`, a direct
    connection, checks that the proxy acknowledged from memory (nothing reached the table)."""
    seen = []
    inc = f"UPDATE {table} SET n = n + %s WHERE id = %s"
    for i in range(12):  # past psycopg's prepare_threshold (5): named prepared statements
        cur = conn.execute(inc, (1, 1))
        seen.append(("inc", cur.rowcount))
    if observer is not None:
        n = observer.execute(f"SELECT n FROM {table} WHERE id = 1").fetchone()[0]
        assert n == 0, f"expected nothing applied yet (acknowledged from memory), found n = {n}"
    conn.execute(f"INSERT INTO {table} (id, n, note) VALUES (%s, %s, %s)", (50, 5, "new"))
    conn.execute(f"DELETE FROM {table} WHERE id = %s", (19,))
    seen.append(("read", conn.execute(f"SELECT n FROM {table} WHERE id = 1").fetchone()))

    # A pipeline of good writes.
    with conn.pipeline():
        for i in range(40):
            conn.execute(inc, (2, i % 10 + 1))
    seen.append(("sum", conn.execute(f"SELECT sum(n) FROM {table}").fetchone()))

    # A pipeline of statements prepared at once (prepare=True): acknowledged from memory too.
    with conn.pipeline():
        for i in range(20):
            conn.execute(inc, (1, i % 10 + 1), prepare=True)
    if observer is not None:
        before = seen[-1][1][0]
        now = observer.execute(f"SELECT sum(n) FROM {table}").fetchone()[0]
        assert now == before, f"a prepared pipeline's writes passed through: sum {before} -> {now}"
    seen.append(("prepared pipeline", conn.execute(f"SELECT sum(n) FROM {table}").fetchone()))

    # A pipeline with an error in the middle: too long for varchar(5).
    try:
        with conn.pipeline():
            conn.execute(inc, (100, 2))
            conn.execute(f"UPDATE {table} SET note = %s WHERE id = %s", ("far too long", 2))
            conn.execute(inc, (100, 3))
        seen.append(("pipeline", "no error"))
    except errors.StringDataRightTruncation as e:
        seen.append(("pipeline", e.sqlstate))
    rows = conn.execute(f"SELECT id, n, note FROM {table} ORDER BY id").fetchall()
    seen.append(("rows", rows))

    # executemany (pipelined by psycopg).
    with conn.cursor() as cur:
        cur.executemany(inc, [(1, k) for k in range(1, 11)])
    seen.append(("after executemany", conn.execute(f"SELECT sum(n) FROM {table}").fetchone()))

    # A bad value for an integer parameter sent as text: PostgreSQL's 22P02 either way.
    try:
        conn.execute(f"UPDATE {table} SET n = n + %s::text::bigint WHERE id = %s", ("abc", 1))
        seen.append(("bad", "no error"))
    except errors.InvalidTextRepresentation as e:
        seen.append(("bad", e.sqlstate))
    return seen


with connect(pg_port) as direct:
    direct.execute("DROP TABLE IF EXISTS mirror")
    direct.execute("CREATE TABLE mirror (LIKE counters INCLUDING ALL)")
    direct.execute("INSERT INTO mirror SELECT g, 0, NULL FROM generate_series(1, 20) g")
    expected = scenario(direct, "mirror")

with connect(proxy_port) as conn, connect(pg_port) as observer:
    got = scenario(conn, "counters", observer)

if got != expected:
    for e, g in zip(expected, got):
        marker = "  " if e == g else "!!"
        print(marker, "postgres:", e, "\n", marker, "proxy:   ", g)
    sys.exit(1)

with connect(pg_port) as direct:
    dead = direct.execute("SELECT count(*) FROM writebehind.dead_letters").fetchone()[0]
    assert dead == 0, f"{dead} dead letters"
print("ok:", len(got), "steps equal")
