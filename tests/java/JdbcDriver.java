// pgJDBC through writebehind-proxy: PreparedStatement (unnamed, then server-prepared named
// statements after prepareThreshold uses; also prepareThreshold=1, and -1 which prepares at once
// and sends every parameter it can in binary), addBatch/executeBatch, transactions with
// setAutoCommit(false), RETURNING/getGeneratedKeys, and SQLSTATEs from getSQLState(), on
// pass-through tables and on the write-behind table TABLE.
//
// Usage: java -cp postgresql.jar:. JdbcDriver PORT DIRECT_PORT TABLE (exit 0 = pass). With
// PORT = DIRECT_PORT the scenario runs straight against PostgreSQL (the reference: every
// expectation here is what PostgreSQL does); otherwise PORT is the proxy's and DIRECT_PORT
// observes PostgreSQL. TABLE must exist, be write-behind and empty:
//   (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note text, tag varchar(8))

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Random;
import java.util.TreeMap;

public class JdbcDriver {
    static String table;
    static boolean throughProxy;

    interface Body {
        void run() throws SQLException;
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    static void expectError(String sqlstate, Body body) {
        try {
            body.run();
        } catch (SQLException e) {
            check(sqlstate.equals(e.getSQLState()),
                    "expected " + sqlstate + ", got " + e.getSQLState() + ": " + e.getMessage());
            return;
        }
        throw new AssertionError("expected an error " + sqlstate + ", got none");
    }

    static Connection connect(int port, String options) throws SQLException {
        return DriverManager.getConnection(
                "jdbc:postgresql://127.0.0.1:" + port + "/postgres?user=postgres&sslmode=disable" + options);
    }

    static long count(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    static void passThrough(Connection c) throws SQLException {
        String kinds = table + "_kinds";
        try (Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS " + kinds + ", " + table + "_log");
            s.execute("CREATE TABLE " + kinds + " (id int PRIMARY KEY, i int, t text, num numeric(12,3),"
                    + " ts timestamptz, b bytea, flag bool)");
            s.execute("CREATE TABLE " + table + "_log (id bigserial PRIMARY KEY, v text)");
        }
        OffsetDateTime ts = OffsetDateTime.of(2024, 2, 29, 23, 59, 58, 123456000, ZoneOffset.UTC);
        byte[] bytes = {0, (byte) 255, 98};
        try (PreparedStatement ins = c.prepareStatement(
                "INSERT INTO " + kinds + " VALUES (?, ?, ?, ?, ?, ?, ?)")) {
            ins.setInt(1, 1);
            ins.setInt(2, 42);
            ins.setString(3, "héllo");
            ins.setBigDecimal(4, new BigDecimal("12345.678"));
            ins.setObject(5, ts);
            ins.setBytes(6, bytes);
            ins.setBoolean(7, true);
            check(ins.executeUpdate() == 1, "insert kinds");
            ins.setInt(1, 2);
            ins.setNull(2, Types.INTEGER);
            ins.setNull(3, Types.VARCHAR);
            ins.setNull(4, Types.NUMERIC);
            ins.setNull(5, Types.TIMESTAMP_WITH_TIMEZONE);
            ins.setNull(6, Types.BINARY);
            ins.setNull(7, Types.BOOLEAN);
            check(ins.executeUpdate() == 1, "insert nulls");
        }
        // The same query many times: unnamed, then a named server-prepared statement.
        try (PreparedStatement sel = c.prepareStatement("SELECT * FROM " + kinds
                + " WHERE i = ? AND t = ? AND num = ? AND ts = ? AND b = ? AND flag = ?")) {
            for (int k = 0; k < 8; k++) {
                sel.setInt(1, 42);
                sel.setString(2, "héllo");
                sel.setBigDecimal(3, new BigDecimal("12345.678"));
                sel.setObject(4, ts);
                sel.setBytes(5, bytes);
                sel.setBoolean(6, true);
                try (ResultSet rs = sel.executeQuery()) {
                    check(rs.next(), "row 1");
                    check(rs.getInt("id") == 1 && rs.getString("t").equals("héllo")
                            && rs.getBigDecimal("num").equals(new BigDecimal("12345.678"))
                            && rs.getObject("ts", OffsetDateTime.class).isEqual(ts)
                            && Arrays.equals(rs.getBytes("b"), bytes) && rs.getBoolean("flag"),
                            "values of row 1");
                    check(!rs.next(), "one row");
                }
            }
        }
        try (PreparedStatement sel = c.prepareStatement("SELECT i, t, num, ts, b, flag FROM " + kinds + " WHERE id = ?")) {
            sel.setInt(1, 2);
            try (ResultSet rs = sel.executeQuery()) {
                check(rs.next(), "row 2");
                for (int col = 1; col <= 6; col++) {
                    check(rs.getObject(col) == null, "NULL in column " + col);
                }
            }
        }
        // Errors with their SQLSTATE; the connection goes on.
        expectError("23505", () -> {
            try (PreparedStatement p = c.prepareStatement("INSERT INTO " + kinds + " (id) VALUES (?)")) {
                p.setInt(1, 1);
                p.executeUpdate();
            }
        });
        expectError("22012", () -> count(c, "SELECT 1 / 0"));
        expectError("42P01", () -> count(c, "SELECT count(*) FROM no_such_table"));
        // RETURNING and getGeneratedKeys.
        try (PreparedStatement p = c.prepareStatement("INSERT INTO " + table + "_log (v) VALUES (?)",
                Statement.RETURN_GENERATED_KEYS)) {
            for (int k = 1; k <= 3; k++) {
                p.setString(1, "v" + k);
                check(p.executeUpdate() == 1, "log insert");
                try (ResultSet keys = p.getGeneratedKeys()) {
                    check(keys.next() && keys.getLong("id") == k, "generated key " + k);
                }
            }
        }
        // Transactions: rolled back leaves nothing, committed stays.
        c.setAutoCommit(false);
        try (PreparedStatement p = c.prepareStatement("INSERT INTO " + kinds + " (id, t) VALUES (?, ?)")) {
            p.setInt(1, 10);
            p.setString(2, "gone");
            p.executeUpdate();
            check(count(c, "SELECT count(*) FROM " + kinds + " WHERE id = 10") == 1, "seen in its transaction");
            c.rollback();
            expectError("23505", () -> {
                p.setInt(1, 1);
                p.executeUpdate();
            });
            expectError("25P02", () -> count(c, "SELECT 1"));
            c.rollback();
            p.setInt(1, 12);
            p.executeUpdate();
            c.commit();
        }
        c.setAutoCommit(true);
        check(count(c, "SELECT count(*) FROM " + kinds + " WHERE id IN (10, 12)") == 1, "rollback and commit");
        // A batch on an ordinary table, and one with a failing row (no row of it stays,
        // with autocommit off).
        try (PreparedStatement p = c.prepareStatement("INSERT INTO " + kinds + " (id, i) VALUES (?, ?)")) {
            for (int k = 0; k < 300; k++) {
                p.setInt(1, 100 + k);
                p.setInt(2, k);
                p.addBatch();
            }
            check(p.executeBatch().length == 300, "batch");
            c.setAutoCommit(false);
            p.setInt(1, 1000);
            p.setInt(2, 0);
            p.addBatch();
            p.setInt(1, 1);
            p.setInt(2, 0);
            p.addBatch();
            try {
                p.executeBatch();
                throw new AssertionError("batch with a duplicate key succeeded");
            } catch (SQLException e) {
                SQLException cause = e.getNextException() != null ? e.getNextException() : e;
                check("23505".equals(cause.getSQLState()), "batch error " + cause.getSQLState());
            }
            c.rollback();
            c.setAutoCommit(true);
        }
        check(count(c, "SELECT count(*) FROM " + kinds + " WHERE id >= 100") == 300, "batch rows");
    }

    /** What TABLE must hold (id -> n, note, tag) and how many changes were acknowledged. */
    static final class Model {
        final TreeMap<Integer, Object[]> rows = new TreeMap<>();
        long acked;
    }

    static Object[] read(PreparedStatement sel, int id) throws SQLException {
        sel.setInt(1, id);
        try (ResultSet rs = sel.executeQuery()) {
            if (!rs.next()) {
                return null;
            }
            return new Object[] {rs.getLong(1), rs.getString(2), rs.getString(3)};
        }
    }

    static Map<Integer, List<Object>> snapshot(Connection c) throws SQLException {
        Map<Integer, List<Object>> m = new HashMap<>();
        try (Statement s = c.createStatement();
                ResultSet rs = s.executeQuery("SELECT id, n, note, tag FROM " + table)) {
            while (rs.next()) {
                m.put(rs.getInt(1), Arrays.asList(rs.getLong(2), rs.getString(3), rs.getString(4)));
            }
        }
        return m;
    }

    static Map<Integer, List<Object>> asMap(Model m) {
        Map<Integer, List<Object>> out = new HashMap<>();
        m.rows.forEach((k, v) -> out.put(k, Arrays.asList(v)));
        return out;
    }

    /** Writes on keys from `base` on, with `c` in whatever mode it was opened. */
    static void writeBehind(Connection c, Connection observer, Model m, int base, boolean firstRound)
            throws SQLException {
        Random rng = new Random(base + 7);
        String t = table;
        try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + t + " (id, n, note) VALUES (?, ?, ?)");
                PreparedStatement inc = c.prepareStatement("UPDATE " + t + " SET n = n + ? WHERE id = ?");
                PreparedStatement note = c.prepareStatement("UPDATE " + t + " SET note = ?, tag = ? WHERE id = ?");
                PreparedStatement del = c.prepareStatement("DELETE FROM " + t + " WHERE id = ?");
                PreparedStatement sel = c.prepareStatement("SELECT n, note, tag FROM " + t + " WHERE id = ?")) {
            for (int k = base + 1; k <= base + 100; k++) {
                ins.setInt(1, k);
                ins.setLong(2, 0);
                ins.setString(3, "k" + k);
                check(ins.executeUpdate() == 1, "insert");
                m.rows.put(k, new Object[] {0L, "k" + k, null});
                m.acked++;
            }
            for (int i = 0; i < 10; i++) {
                inc.setLong(1, 5);
                inc.setInt(2, base + 1);
                check(inc.executeUpdate() == 1, "increment");
            }
            m.rows.get(base + 1)[0] = 50L;
            m.acked += 10;
            if (throughProxy && firstRound) {
                check(count(observer, "SELECT count(*) FROM " + t) == 0,
                        "acknowledged writes must not have reached PostgreSQL yet");
            }
            check(Arrays.equals(read(sel, base + 1), new Object[] {50L, "k" + (base + 1), null}), "read-your-writes");

            int next = base + 101;
            for (int step = 0; step < 1500; step++) {
                List<Integer> live = new ArrayList<>(m.rows.keySet());
                double r = rng.nextDouble();
                if (r < 0.6) {
                    int k = live.get(rng.nextInt(live.size()));
                    long d = rng.nextInt(26) - 5;
                    inc.setLong(1, d);
                    inc.setInt(2, k);
                    check(inc.executeUpdate() == 1, "UPDATE 1");
                    m.rows.get(k)[0] = (Long) m.rows.get(k)[0] + d;
                } else if (r < 0.75) {
                    int k = live.get(rng.nextInt(live.size()));
                    String n = "s" + step;
                    String[] tags = {null, "t", "eight888"};
                    String tag = tags[rng.nextInt(3)];
                    note.setString(1, n);
                    if (tag == null) {
                        note.setNull(2, Types.VARCHAR);
                    } else {
                        note.setString(2, tag);
                    }
                    note.setInt(3, k);
                    check(note.executeUpdate() == 1, "UPDATE 1 (note)");
                    m.rows.get(k)[1] = n;
                    m.rows.get(k)[2] = tag;
                } else if (r < 0.85) {
                    int k = live.get(rng.nextInt(live.size()));
                    del.setInt(1, k);
                    check(del.executeUpdate() == 1, "DELETE 1");
                    m.rows.remove(k);
                } else {
                    int k = next++;
                    long n = rng.nextInt(1000);
                    ins.setInt(1, k);
                    ins.setLong(2, n);
                    ins.setNull(3, Types.VARCHAR);
                    check(ins.executeUpdate() == 1, "INSERT 0 1");
                    m.rows.put(k, new Object[] {n, null, null});
                }
                m.acked++;
                if (step % 300 == 299) {
                    int k = new ArrayList<>(m.rows.keySet()).get(rng.nextInt(m.rows.size()));
                    check(Arrays.equals(read(sel, k), m.rows.get(k)), "key " + k + " read back");
                    check(read(sel, next + 5) == null, "absent key");
                }
            }

            // A batch of increments (pipelined Bind/Execute, one Sync), autocommit on.
            List<Integer> keys = new ArrayList<>(m.rows.keySet()).subList(0, 50);
            for (int k : keys) {
                inc.setLong(1, 3);
                inc.setInt(2, k);
                inc.addBatch();
            }
            int[] counts = inc.executeBatch();
            check(counts.length == 50 && Arrays.stream(counts).allMatch(x -> x == 1), "batch counts");
            for (int k : keys) {
                m.rows.get(k)[0] = (Long) m.rows.get(k)[0] + 3;
            }
            m.acked += keys.size();
            long sum = m.rows.values().stream().mapToLong(v -> (Long) v[0]).sum();
            check(count(c, "SELECT sum(n) FROM " + t) == sum, "sum after the batch");

            // Validation errors with PostgreSQL's SQLSTATE; nothing of them applies.
            int k = keys.get(0);
            expectError("23502", () -> {
                ins.setInt(1, base + 99999);
                ins.setNull(2, Types.BIGINT);
                ins.setString(3, "x");
                ins.executeUpdate();
            });
            expectError("22001", () -> {
                note.setString(1, "x");
                note.setString(2, "ninechars");
                note.setInt(3, k);
                note.executeUpdate();
            });
            // Text parameters of unspecified type (Types.OTHER): PostgreSQL's input functions.
            expectError("22P02", () -> {
                inc.setObject(1, "abc", Types.OTHER);
                inc.setInt(2, k);
                inc.executeUpdate();
            });
            expectError("22003", () -> {
                inc.setLong(1, 1);
                inc.setObject(2, "2147483648", Types.OTHER);
                inc.executeUpdate();
            });
            expectError("42703", () -> {
                try (PreparedStatement p = c.prepareStatement("UPDATE " + t + " SET nope = ? WHERE id = ?")) {
                    p.setInt(1, 1);
                    p.setInt(2, k);
                    p.executeUpdate();
                }
            });
            // A batch with a bad row in the middle: with autocommit on, pgJDBC runs it as one
            // implicit transaction (one Sync), so none of it applies.
            inc.setLong(1, 1);
            inc.setInt(2, keys.get(1));
            inc.addBatch();
            inc.setObject(1, "abc", Types.OTHER);
            inc.setInt(2, keys.get(2));
            inc.addBatch();
            inc.setLong(1, 1);
            inc.setInt(2, keys.get(3));
            inc.addBatch();
            try {
                inc.executeBatch();
                throw new AssertionError("a batch with a bad value succeeded");
            } catch (SQLException e) {
                SQLException cause = e.getNextException() != null ? e.getNextException() : e;
                check("22P02".equals(cause.getSQLState()), "batch error " + cause.getSQLState());
            }
            // The statements still work after their errors.
            inc.setLong(1, 1);
            inc.setInt(2, k);
            check(inc.executeUpdate() == 1, "after errors");
            m.rows.get(k)[0] = (Long) m.rows.get(k)[0] + 1;
            m.acked++;
            try (Statement s = c.createStatement()) {
                check(s.executeUpdate("UPDATE " + t + " SET n = n + 1 WHERE id = " + k) == 1, "simple protocol");
            }
            m.rows.get(k)[0] = (Long) m.rows.get(k)[0] + 1;
            m.acked++;

            // RETURNING passes through (PostgreSQL's row), not acknowledged.
            try (PreparedStatement p = c.prepareStatement("INSERT INTO " + t + " (id, n) VALUES (?, ?)",
                    Statement.RETURN_GENERATED_KEYS)) {
                p.setInt(1, base + 50000);
                p.setLong(2, 9);
                check(p.executeUpdate() == 1, "insert returning");
                try (ResultSet rs = p.getGeneratedKeys()) {
                    check(rs.next() && rs.getInt("id") == base + 50000 && rs.getLong("n") == 9, "returned row");
                }
            }
            m.rows.put(base + 50000, new Object[] {9L, null, null});

            // A transaction: its writes pass through, a rollback undoes them, a commit keeps them.
            c.setAutoCommit(false);
            inc.setLong(1, 1000);
            inc.setInt(2, k);
            inc.executeUpdate();
            Object[] inside = read(sel, k);
            check(Objects.equals(inside[0], (Long) m.rows.get(k)[0] + 1000), "seen in its transaction");
            c.rollback();
            inc.setLong(1, 7);
            inc.setInt(2, k);
            inc.executeUpdate();
            c.commit();
            c.setAutoCommit(true);
            m.rows.get(k)[0] = (Long) m.rows.get(k)[0] + 7;
            check(Arrays.equals(read(sel, k), m.rows.get(k)), "after commit");
        }
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        int directPort = Integer.parseInt(args[1]);
        table = args[2];
        throughProxy = port != directPort;
        Model m = new Model();
        try (Connection observer = connect(directPort, "")) {
            try (Connection c = connect(port, "")) {
                passThrough(c);
                writeBehind(c, observer, m, 0, true);
            }
            try (Connection c = connect(port, "&prepareThreshold=1")) {
                writeBehind(c, observer, m, 100000, false);
            }
            try (Connection c = connect(port, "&prepareThreshold=-1")) {
                passThrough(c);
                writeBehind(c, observer, m, 200000, false);
            }
            try (Connection c = connect(port, "")) {
                check(snapshot(c).equals(asMap(m)), "table (through the session) differs from the model");
                try (Statement s = c.createStatement()) {
                    s.execute("SELECT writebehind.flush()");
                }
            }
            check(snapshot(observer).equals(asMap(m)), "table (direct) differs from the model");
            check(count(observer, "SELECT count(*) FROM writebehind.dead_letters") == 0, "dead letters");
            long want = throughProxy ? m.acked : 0;
            long acked = -1;
            for (int i = 0; i < 100 && acked != want; i++) {
                acked = count(observer, "SELECT acked FROM writebehind.status WHERE \"table\" = '" + table + "'::regclass");
                if (acked != want) {
                    Thread.sleep(100);
                }
            }
            check(acked == want, "writebehind.status acked " + acked + ", expected " + want);
            String version = observer.getMetaData().getDriverVersion();
            System.out.println("ok: pgJDBC " + version + ", " + (throughProxy ? "proxy" : "direct") + ", acked " + acked);
        }
    }
}
