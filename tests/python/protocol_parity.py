"""Protocol parity: message sequences that must get exactly the same replies through the proxy as
from PostgreSQL directly, in a database with a write-behind table `wbt (id int PRIMARY KEY, n int)`
(interception on). Each scenario runs on a fresh connection against both ports; replies are
compared message by message (type, SQLSTATE or tag, data). Then psycopg 3 cases that used to hang.

Usage: protocol_parity.py PROXY_PORT DIRECT_PORT
"""
import select
import signal
import socket
import struct
import sys
import time

import psycopg


def message(kind, body=b""):
    return kind + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def query(sql):
    return message(b"Q", cstr(sql))


def parse(name, sql):
    return message(b"P", cstr(name) + cstr(sql) + struct.pack("!H", 0))


def bind(statement, params=(), portal=""):
    body = cstr(portal) + cstr(statement) + struct.pack("!HH", 0, len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p.encode()
    return message(b"B", body + struct.pack("!H", 0))


def execute(portal="", rows=0):
    return message(b"E", cstr(portal) + struct.pack("!I", rows))


def function_call(oid, *args):
    """A FunctionCall with text arguments and a text result."""
    body = struct.pack("!IHH", oid, 1, 0) + struct.pack("!H", len(args))
    for a in args:
        body += struct.pack("!i", len(a)) + a.encode()
    return message(b"F", body + struct.pack("!H", 0))


INT4PL = 177  # int4pl(int4, int4), by oid as FunctionCall wants it
SYNC = message(b"S")
INSERT = "INSERT INTO wbt (id, n) VALUES ($1, $2)"
UPSERT = INSERT + " ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n"
FLUSH = message(b"H")


def copy_data(text):
    return message(b"d", text.encode())


COPY_DONE = message(b"c")


def close(name):
    return message(b"C", b"S" + cstr(name))


class Session:
    """A raw protocol-3 session as user postgres (trust authentication)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        body = struct.pack("!I", 196608) + cstr("user") + cstr("postgres")
        body += cstr("database") + cstr("postgres") + b"\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        self.pid = None
        self.until_ready()

    def send(self, *msgs):
        self.sock.sendall(b"".join(msgs))

    def exchange(self, *msgs):
        """Sends `msgs` and returns the replies up to ReadyForQuery."""
        self.send(*msgs)
        return self.until_ready()

    def read(self, timeout):
        """One message as a comparable tuple, or None if none came within `timeout`."""
        deadline = time.time() + timeout
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= length + 1:
                    kind, body = self.buf[:1], self.buf[5:length + 1]
                    self.buf = self.buf[length + 1:]
                    if kind == b"K":
                        self.pid = struct.unpack("!i", body[:4])[0]
                    return summary(kind, body)
            left = deadline - time.time()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            data = self.sock.recv(1 << 16)
            if not data:
                return ("closed",)
            self.buf += data

    def until_ready(self, timeout=10):
        out = []
        while True:
            m = self.read(timeout)
            if m is None:
                return out + [("timed out",)]
            if m[0] in ("S", "K", "N"):  # settings, keys, notices: not compared
                continue
            out.append(m)
            if m[0] in ("Z", "closed"):
                return out

    def close(self):
        self.sock.close()


def summary(kind, body):
    kind = kind.decode()
    if kind == "E":
        fields = {chr(p[0]): p[1:].decode() for p in body.split(b"\0") if p}
        return (kind, fields.get("C"), fields.get("M"))
    if kind in ("C", "Z"):
        return (kind, body.rstrip(b"\0").decode())
    if kind in ("D", "V"):
        return (kind, body.hex())
    return (kind,)


def scenarios(s, key):
    """Yields (name, replies) for each scenario, run on session `s`; `key` keeps rows apart."""
    # BackendKeyData carries the backend's pid (drivers compare it with notifications' sender).
    r = s.exchange(query("SELECT pg_backend_pid()"))
    yield "backend pid", [m for m in r if m[0] != "D"] + [("pid matches", any(
        m[0] == "D" and bytes.fromhex(m[1])[6:].decode() == str(s.pid) for m in r))]

    # A Parse PostgreSQL skipped after an earlier error of its group does not exist: its Bind
    # gets 26000, and nothing is written.
    r = s.exchange(parse("bad", "selec 1"), parse("w1", INSERT), SYNC)
    r += s.exchange(bind("w1", [str(key), "1"]), execute(), SYNC)
    yield "skipped Parse", r + s.exchange(query(f"SELECT count(*) FROM wbt WHERE id = {key}"))

    # A statement prepared locally, first used in a failed transaction, works after it.
    r = s.exchange(parse("w2", UPSERT), SYNC)
    for sql in ("BEGIN", "SELECT 1/0"):
        r += s.exchange(query(sql))
    r += s.exchange(bind("w2", [str(key + 1), "1"]), execute(), SYNC)
    r += s.exchange(query("ROLLBACK"))
    r += s.exchange(bind("w2", [str(key + 1), "2"]), execute(), SYNC)
    r += s.exchange(query(f"SELECT n FROM wbt WHERE id = {key + 1}"))
    yield "local statement after a failed transaction", r

    # SQL sees statements prepared through the protocol: pg_prepared_statements, EXECUTE,
    # DEALLOCATE (then the statement is gone), and a second Parse of the name is 42P05.
    r = s.exchange(parse("w3", UPSERT), SYNC)
    r += s.exchange(parse("w3", "SELECT 1"), SYNC)
    r += s.exchange(bind("w3", [str(key + 2), "1"]), execute(), SYNC)
    for sql in ("SELECT name FROM pg_prepared_statements WHERE name = 'w3'",
                f"EXECUTE w3({key + 2}, 2)", "DEALLOCATE w3"):
        r += s.exchange(query(sql))
    r += s.exchange(bind("w3", [str(key + 2), "3"]), execute(), SYNC)
    r += s.exchange(query(f"SELECT n FROM wbt WHERE id = {key + 2}"))
    yield "SQL-level prepared statements", r

    # A group binding the unnamed statement, then preparing a write on a table name the proxy
    # has not resolved yet (its own lookup query must not replace the unnamed statement).
    r = s.exchange(parse("", "SELECT 'unnamed'"), SYNC)
    r += s.exchange(bind(""), execute(),
                    parse("w4", "INSERT INTO public.wbt (id, n) VALUES ($1, $2)"),
                    bind("w4", [str(key + 3), "1"]), execute(), SYNC)
    yield "unnamed statement and name resolution", r

    # An error answers a Flush at once (no Sync yet).
    s.send(parse("", "selec 1"), FLUSH)
    r = [s.read(5) or ("nothing before Sync",)]
    yield "error after Flush", r + s.exchange(SYNC)

    # COPY FROM STDIN after DDL in the same Query, and in a transaction block.
    s.send(query(f"CREATE TABLE copy_{key} (a int); COPY copy_{key} FROM STDIN"))
    r = []
    for _ in range(2):  # CommandComplete of CREATE TABLE, CopyInResponse
        r.append(s.read(10))
    r += s.exchange(copy_data("1\n2\n"), COPY_DONE)
    for sql in ("BEGIN", f"TRUNCATE copy_{key}"):
        r += s.exchange(query(sql))
    s.send(query(f"COPY copy_{key} FROM STDIN"))
    r.append(s.read(10))
    r += s.exchange(copy_data("3\n"), COPY_DONE)
    for sql in ("COMMIT", f"SELECT sum(a) FROM copy_{key}", f"DROP TABLE copy_{key}"):
        r += s.exchange(query(sql))
    yield "COPY after DDL", r


def terminated_while_busy(port, direct):
    """What a session running a query gets when its backend is terminated: PostgreSQL's FATAL,
    then the end of the connection (and nothing of the proxy's own after it)."""
    s = Session(port)
    try:
        s.send(query("SELECT pg_sleep(30)"))
        time.sleep(0.3)
        with psycopg.connect(f"host=127.0.0.1 port={direct} user=postgres dbname=postgres",
                             autocommit=True) as k:
            k.execute("SELECT pg_terminate_backend(%s)", (s.pid,))
        out = []
        while True:
            m = s.read(10)
            if m is None or m[0] == "closed":
                return out + [m or ("timed out",)]
            if m[0] not in ("S", "N"):
                out.append(m)
    finally:
        s.close()


def review_scenarios(s, key):
    """Sequences a review of the proxy's statement bookkeeping found answered differently."""
    # A Query drops the unnamed statement: a later Bind of it is 26000, nothing written.
    r = s.exchange(parse("", INSERT), SYNC)
    r += s.exchange(query("SELECT 1"))
    r += s.exchange(bind("", [str(key), "1"]), execute(), SYNC)
    r += s.exchange(query(f"SELECT count(*) FROM wbt WHERE id = {key}"))
    yield "unnamed statement after a Query", r

    # DEALLOCATE through the extended protocol (psycopg's pipeline mode sends it so).
    r = s.exchange(parse("wa", INSERT), SYNC)
    r += s.exchange(parse("", "DEALLOCATE wa"), bind(""), execute(), SYNC)
    r += s.exchange(parse("wb", INSERT), SYNC)
    r += s.exchange(query("SELECT 1"))
    r += s.exchange(parse("", "DEALLOCATE ALL"), bind(""), execute(), SYNC)
    r += s.exchange(bind("wb", [str(key + 1), "1"]), execute(), SYNC)
    r += s.exchange(query(f"SELECT count(*) FROM wbt WHERE id = {key + 1}"))
    yield "extended DEALLOCATE", r

    # After a Flush the group streams; a Bind of a local statement then sends its Parse:
    # only that ParseComplete is the proxy's.
    r = s.exchange(parse("wf", INSERT), SYNC)
    r += s.exchange(parse("", "SELECT 1"), bind(""), execute(), FLUSH,
                    bind("wf", [str(key + 2), "1"]), execute(), SYNC)
    yield "Flush, then a local statement", r

    # A write Query after extended messages sent without a Sync: replies in order.
    r = s.exchange(query(f"INSERT INTO wbt (id, n) VALUES ({key + 3}, 1)"))
    r += s.exchange(parse("", "SELECT pg_sleep(0.2)"), bind(""), execute(),
                    query(f"INSERT INTO wbt (id, n) VALUES ({key + 4}, 1)"))
    yield "write Query in an unsynced group", r + s.exchange(SYNC)

    # A Flush in the middle of COPY FROM STDIN after DDL.
    s.send(query(f"CREATE TABLE fc_{key} (a int); COPY fc_{key} FROM STDIN"))
    r = [s.read(10), s.read(10)]
    r += s.exchange(FLUSH, copy_data("1\n"), COPY_DONE)
    yield "Flush during COPY after DDL", r + s.exchange(query(f"DROP TABLE fc_{key}"))

    # A local statement PostgreSQL would refuse (the table no longer resolves) is not sent on
    # the client's behalf inside its transaction block.
    r = s.exchange(parse("wm", INSERT), SYNC)
    r += s.exchange(parse("", "SET search_path TO pg_catalog"), bind(""), execute(), SYNC)
    for sql in ("BEGIN", "SELECT 1", "COMMIT"):
        r += s.exchange(query(sql))
    yield "local statement and a transaction block", r

    # Closes of statements PostgreSQL has (one of its own, one whose Parse an error skipped,
    # an unknown name) in a group of writes, as pgJDBC piggy-backs them; then the closed one.
    r = s.exchange(parse("wsel", "SELECT 1"), SYNC)
    r += s.exchange(parse("", "SELECT 1/0"), bind(""), execute(), parse("wskip", INSERT), SYNC)
    r += s.exchange(close("wsel"), close("wskip"), close("nosuch"), parse("wc", INSERT),
                    bind("wc", [str(key + 5), "1"]), execute(), SYNC)
    r += s.exchange(bind("wsel"), execute(), SYNC)
    r += s.exchange(query(f"SELECT count(*) FROM wbt WHERE id = {key + 5}"))
    yield "Closes in a group of writes", r

    # A read that waits at the barrier (the write before it is pending) asks the session for
    # its timeouts (SHOWs under names of the proxy's own, in and out of a transaction block):
    # the client's unnamed statement must outlive them. (search_path is pg_catalog since the
    # scenario above, hence public.wbt.)
    for k, block in ((key + 6, False), (key + 7, True)):
        r = s.exchange(query(f"INSERT INTO public.wbt (id, n) VALUES ({k}, 5)"))
        if block:
            r += s.exchange(query("BEGIN"))
        r += s.exchange(parse("", "SELECT 'kept'"), SYNC)
        r += s.exchange(parse(f"rd{k}", f"SELECT n FROM public.wbt WHERE id = {k}"), bind(f"rd{k}"),
                        execute(), SYNC)
        r += s.exchange(bind(""), execute(), SYNC)
        if block:
            r += s.exchange(query("COMMIT"))
        yield f"unnamed statement across a waiting barrier (transaction block: {block})", r

    # Inside a transaction block: an unnamed portal left suspended, then a read that waits at
    # the barrier (through a named portal), then the portal's rest; and a group that binds the
    # unnamed statement an earlier group parsed, waiting at the barrier for another session's
    # write.
    k = key + 8
    r = s.exchange(query(f"INSERT INTO public.wbt (id, n) VALUES ({k}, 5)"))
    r += s.exchange(query("BEGIN"))
    r += s.exchange(parse("", "SELECT generate_series(1, 3)"), bind(""), execute(rows=1), SYNC)
    r += s.exchange(parse(f"rd{k}", f"SELECT n FROM public.wbt WHERE id = {k}"),
                    bind(f"rd{k}", portal="named"), execute("named"), SYNC)
    r += s.exchange(execute(), SYNC)
    r += s.exchange(parse("", f"SELECT n FROM public.wbt WHERE id = {k + 1}"), SYNC)
    other = Session(s.sock.getpeername()[1])
    r += other.exchange(query(f"INSERT INTO public.wbt (id, n) VALUES ({k + 1}, 6)"))
    other.close()
    r += s.exchange(bind(""), execute(), SYNC)
    r += s.exchange(query("COMMIT"))
    yield "suspended unnamed portal and earlier unnamed statement across waiting barriers", r


def skip_scenarios(s, key):
    """After an error in an extended-protocol message PostgreSQL skips everything up to Sync,
    Queries included: they get no reply, and writes among them are not run."""
    count = query(f"SELECT count(*) FROM wbt WHERE id BETWEEN {key} AND {key + 9}")
    # A Query after a failed Parse, then the Sync: one ReadyForQuery.
    r = s.exchange(parse("", "selec 1"), query("SELECT 42"), SYNC)
    yield "Query after an error in an unsynced group", r + s.exchange(query("SELECT 7"))

    # Writes after the skipped Query are skipped too, whether a Query or a group of writes
    # the proxy could answer locally.
    r = s.exchange(parse("", "selec 1"), query("SELECT 42"),
                   parse("ws", INSERT), bind("ws", [str(key), "1"]), execute(), SYNC)
    r += s.exchange(parse("", "selec 1"),
                    query(f"INSERT INTO wbt (id, n) VALUES ({key + 1}, 1)"), SYNC)
    r += s.exchange(bind("ws", [str(key + 2), "1"]), execute(), SYNC)
    yield "writes skipped after an error", r + s.exchange(count)

    # The error already answered at a Flush before the Query is sent.
    s.send(parse("", "selec 1"), FLUSH)
    r = [s.read(5) or ("nothing at Flush",)]
    s.send(query(f"INSERT INTO wbt (id, n) VALUES ({key + 3}, 1)"))
    r.append(s.read(0.5) or ("no reply to a skipped Query",))
    r += s.exchange(SYNC)
    yield "Query after an error answered at a Flush", r + s.exchange(count)

    # Afterwards writes are acknowledged and read back as usual.
    r = s.exchange(parse("wt", INSERT), bind("wt", [str(key + 4), "1"]), execute(), SYNC)
    r += s.exchange(query(f"INSERT INTO wbt (id, n) VALUES ({key + 5}, 1)"))
    yield "writes after the skipped group", r + s.exchange(count)

    # A FunctionCall is skipped the same way (last: it ends acknowledging in this session).
    r = s.exchange(parse("", "selec 1"), function_call(INT4PL, "1", "2"), SYNC)
    yield "FunctionCall after an error", r + s.exchange(function_call(INT4PL, "2", "2"))


def run_raw(port, key):
    out = {}
    for make, offset in ((scenarios, 0), (review_scenarios, 10), (skip_scenarios, 20)):
        s = Session(port)
        try:
            out.update(make(s, key + offset))
        finally:
            s.close()
    return out


def timed_out(*_):
    raise TimeoutError("hung for 20 s")


def listener_told(port, direct):
    """Whether a client idle after LISTEN learns at once that its backend was terminated."""
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("LISTEN parity")
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(f"host=127.0.0.1 port={direct} user=postgres dbname=postgres",
                             autocommit=True) as k:
            k.execute("SELECT pg_terminate_backend(%s)", (pid,))
        try:
            for _ in c.notifies(timeout=5):
                pass
            return "not told within 5 s"
        except psycopg.OperationalError:
            return "told"


def psycopg_cases(port, direct):
    """What psycopg reports for a failing pipeline, a COPY after TRUNCATE in a transaction, and a
    listening client whose backend is terminated."""
    out = [("listen", listener_told(port, direct))]
    signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(20)
    try:
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as c:
            try:
                with c.pipeline():
                    c.execute("SELECT 1/0").fetchall()
            except psycopg.Error as e:
                out.append(("pipeline", e.sqlstate))
            c.execute("CREATE TABLE IF NOT EXISTS copy_stage (a int, b text)")
        with psycopg.connect(dsn) as c:  # a transaction block, as psycopg opens by default
            c.execute("TRUNCATE copy_stage")
            with c.cursor().copy("COPY copy_stage FROM STDIN") as cp:
                for i in range(1000):
                    cp.write_row((i, "x"))
            out.append(("copy", c.execute("SELECT count(*) FROM copy_stage").fetchone()[0]))
    finally:
        signal.alarm(0)
    return out


def main():
    proxy, direct = int(sys.argv[1]), int(sys.argv[2])
    failures = []
    expected = run_raw(direct, 100_000)
    got = run_raw(proxy, 200_000)
    for name, replies in expected.items():
        # Keys differ between the two runs only inside the CREATE/DROP names and rows written.
        if got.get(name) != replies:
            failures.append(f"{name}:\n  direct {replies}\n  proxy  {got.get(name)}")
    busy = terminated_while_busy(direct, direct)
    busy_proxy = terminated_while_busy(proxy, direct)
    if busy_proxy != busy:
        failures.append(f"terminated while busy:\n  direct {busy}\n  proxy  {busy_proxy}")
    expected_pg = psycopg_cases(direct, direct)
    got_pg = psycopg_cases(proxy, direct)
    if got_pg != expected_pg:
        failures.append(f"psycopg:\n  direct {expected_pg}\n  proxy  {got_pg}")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"{len(expected) + 2} scenarios: the proxy answered as PostgreSQL did")


if __name__ == "__main__":
    main()
