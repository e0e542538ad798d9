"""psycopg 3 through writebehind-proxy: server-side binding, prepared statements, pipeline mode,
COPY and an error inside a pipeline. Usage: psycopg_through_proxy.py PORT (exit 0 = pass)."""
import sys

import psycopg

port = int(sys.argv[1])
conninfo = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"

with psycopg.connect(conninfo, autocommit=True) as conn:
    conn.execute("DROP TABLE IF EXISTS py_t")
    conn.execute("CREATE TABLE py_t (id int PRIMARY KEY, v text, f float8)")

    # Server-side binding (extended protocol) with prepared statements.
    for i in range(20):
        conn.execute("INSERT INTO py_t VALUES (%s, %s, %s)", (i, f"v{i}", i / 2), prepare=True)
    row = conn.execute("SELECT v, f FROM py_t WHERE id = %s", (7,), prepare=True).fetchone()
    assert row == ("v7", 3.5), row

    # Binary results.
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT count(*), sum(id) FROM py_t")
        assert cur.fetchone() == (20, 190)

    # Pipeline mode: many statements before one Sync.
    with conn.pipeline():
        for i in range(20, 120):
            conn.execute("INSERT INTO py_t VALUES (%s, %s, %s)", (i, f"p{i}", 0.0))
        cur = conn.execute("SELECT count(*) FROM py_t")
    assert cur.fetchone() == (120,)

    # An error in the middle of a pipeline: what follows up to the Sync is not applied.
    try:
        with conn.pipeline():
            conn.execute("INSERT INTO py_t VALUES (%s, 'a', 0)", (500,))
            conn.execute("INSERT INTO py_t VALUES (%s, 'dup', 0)", (1,))
            conn.execute("INSERT INTO py_t VALUES (%s, 'b', 0)", (501,))
    except psycopg.errors.UniqueViolation:
        pass
    else:
        raise AssertionError("duplicate key not reported")
    n = conn.execute("SELECT count(*) FROM py_t WHERE id IN (500, 501)").fetchone()[0]
    assert n == 0, f"rows after the error were applied: {n}"

    # COPY in and out.
    with conn.cursor() as cur:
        with cur.copy("COPY py_t (id, v) FROM STDIN") as copy:
            for i in range(1000, 1500):
                copy.write_row((i, f"c{i}"))
        out = bytearray()
        with cur.copy("COPY (SELECT id FROM py_t WHERE id >= 1000 ORDER BY id) TO STDOUT") as copy:
            for data in copy:
                out += data
    assert out.decode().split() == [str(i) for i in range(1000, 1500)]

print("psycopg: all checks passed")
