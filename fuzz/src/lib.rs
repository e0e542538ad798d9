//! Helpers shared by the fuzz targets (docs/FUZZING.md): a fixed catalog of write-behind
//! tables, the simple-protocol write path as the session runs it, and a bounds-checked reader
//! of Parse/Bind bodies for driving the extended-protocol templates.

use std::collections::HashMap;
use writebehind_proxy::writebehind::catalog::{
    Catalog, Column, Table, DEFAULT_FLUSH_INTERVAL, DEFAULT_MAX_BATCH_ROWS,
};
use writebehind_proxy::writebehind::encode::{self, Change, ColumnChange};
use writebehind_proxy::writebehind::recognize::Write;
use writebehind_proxy::writebehind::template::Template;
use writebehind_proxy::writebehind::{coalesce, journal, lexer, pack, recognize, validate};

fn col(name: &str, type_name: &str, typmod: i32) -> Column {
    let max_chars = (matches!(type_name, "character varying" | "character") && typmod >= 4)
        .then(|| (typmod - 4) as usize);
    Column {
        max_chars,
        typmod,
        ..Column::plain(name, type_name)
    }
}

/// Tables covering every type the validator and the binder know, a composite key, an append
/// table, defaulted / generated columns and a quoted name in another schema.
pub fn catalog() -> Catalog {
    let mut id = col("id", "integer", -1);
    id.not_null = true;
    let mut created = col("created", "timestamp with time zone", -1);
    created.has_default = true;
    let mut g = col("g", "bigint", -1);
    g.has_default = true;
    g.default_only = true;
    let t = Table {
        relid: 16384,
        schema: "public".into(),
        name: "t".into(),
        append: false,
        read_barrier: true,
        flush_interval: DEFAULT_FLUSH_INTERVAL,
        max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
        row_security: false,
        rules: false,
        children: false,
        referenced: Vec::new(),
        upsert: true,
        key: vec!["id".into()],
        columns: vec![
            id,
            col("n", "bigint", -1),
            col("s", "text", -1),
            col("u", "uuid", -1),
            col("v", "character varying", 9),       // varchar(5)
            col("c", "character", 7),               // char(3)
            col("d", "numeric", (5 << 16) + 2 + 4), // numeric(5,2)
            col("m", "numeric", -1),
            col("b", "boolean", -1),
            col("sm", "smallint", -1),
            created,
            g,
        ],
    };
    let mut k1 = col("a", "text", -1);
    k1.not_null = true;
    let mut k2 = col("b", "bigint", -1);
    k2.not_null = true;
    let pair = Table {
        relid: 16390,
        schema: "s".into(),
        name: "Pair".into(),
        append: false,
        read_barrier: true,
        flush_interval: DEFAULT_FLUSH_INTERVAL,
        max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
        row_security: false,
        rules: false,
        children: false,
        referenced: Vec::new(),
        upsert: true,
        key: vec!["a".into(), "b".into()],
        columns: vec![
            k1,
            k2,
            col("x", "integer", -1),
            col("y", "double precision", -1),
        ],
    };
    let log = Table {
        relid: 16400,
        schema: "public".into(),
        name: "log".into(),
        append: true,
        read_barrier: true,
        flush_interval: DEFAULT_FLUSH_INTERVAL,
        max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
        row_security: false,
        rules: false,
        children: false,
        referenced: Vec::new(),
        upsert: true,
        key: vec![],
        columns: vec![col("at", "bigint", -1), col("msg", "text", -1)],
    };
    Catalog::from_tables(vec![t, pair, log])
}

/// The registered table a recognized write names, resolved as the session does.
pub fn resolve<'c>(cat: &'c Catalog, w: &Write) -> Option<&'c Table> {
    let name = match w {
        Write::Insert { table, .. } | Write::Update { table, .. } | Write::Delete { table, .. } => {
            table
        }
    };
    cat.resolve(name.schema.as_deref(), &name.name)
}

/// After validation: every change encodes as an inbox row and round-trips through the WAL
/// journal encoding unchanged.
pub fn check_changes(changes: &[Change]) {
    let mut out = Vec::new();
    for (seq, c) in changes.iter().enumerate() {
        out.clear();
        encode::copy_row(&mut out, "fuzz-proxy", seq as i64, c);
        // One COPY text row: 9 fields, every tab / newline / CR inside a value escaped.
        let count = |b: u8| out.iter().filter(|&&x| x == b).count();
        assert_eq!(out.last(), Some(&b'\n'), "COPY row not newline-terminated");
        assert_eq!(count(b'\n'), 1, "raw newline inside a COPY row for {c:?}");
        assert_eq!(count(b'\t'), 8, "raw tab inside a COPY row for {c:?}");
        assert_eq!(count(b'\r'), 0, "raw CR inside a COPY row for {c:?}");
    }
    // The whole batch, packed where it can be: every row still has 9 fields.
    out.clear();
    pack::encode_batch(&mut out, "fuzz-proxy", 1, changes);
    for row in out.split(|&b| b == b'\n').filter(|r| !r.is_empty()) {
        let tabs = row.iter().filter(|&&x| x == b'\t').count();
        assert_eq!(tabs, 8, "a packed batch row without 9 fields");
        assert!(!row.contains(&b'\r'), "raw CR inside a packed batch row");
    }
    let bytes = journal::encode("db", changes);
    match journal::decode(&bytes) {
        Ok((db, back)) => {
            assert_eq!(db, "db");
            assert_eq!(back, changes, "journal round trip changed the changes");
        }
        Err(e) => panic!("journal could not decode its own encoding: {e}"),
    }
}

/// The simple-protocol path for one Query text: lex (with the session's
/// standard_conforming_strings), split, recognize, resolve, validate, encode.
/// Returns the recognized writes.
pub fn simple_path(cat: &Catalog, sql: &str, scs: bool) -> Vec<Write> {
    let Ok(tokens) = lexer::lex(sql, scs) else {
        return Vec::new();
    };
    let mut writes = Vec::new();
    let mut all = Vec::new();
    for stmt in lexer::statements(&tokens) {
        assert!(!stmt.is_empty());
        assert!(!stmt.contains(&lexer::Token::Punct(';')));
        let Some(w) = recognize::recognize(stmt) else {
            continue;
        };
        if let Some(table) = resolve(cat, &w) {
            if let Some(changes) = validate::changes(&w, table) {
                assert!(!changes.is_empty(), "a validated write without changes");
                check_changes(&changes);
                all.extend(changes);
            }
            // With parameters, the extended protocol would prepare a template of it.
            if let Some(t) = Template::prepare(w.clone(), table, &[]) {
                assert!(t.param_types().iter().all(|&oid| oid != 0));
            }
        }
        writes.push(w);
    }
    check_fold(all);
    writes
}

/// Increments of a column after its last set value, consecutive integer ones summed.
type Adds = Vec<Result<i128, String>>;

/// What a list of changes leaves behind, per row key: how many times the row was inserted or
/// deleted (a fold must keep those), and per column the last value set and the increments
/// after it.
#[allow(clippy::type_complexity)]
fn effect(
    changes: &[Change],
) -> HashMap<(u32, Vec<String>), (usize, HashMap<String, (Option<Option<String>>, Adds)>)> {
    let mut rows: HashMap<_, (usize, HashMap<_, _>)> = HashMap::new();
    for c in changes {
        match c {
            Change::Insert {
                relid,
                key: Some(key),
                ..
            }
            | Change::Delete { relid, key } => {
                let row = rows.entry((*relid, key.clone())).or_default();
                row.0 += 1;
                row.1.clear();
            }
            Change::Insert { .. } => {}
            Change::Update {
                relid,
                key,
                columns,
            } => {
                let row = rows.entry((*relid, key.clone())).or_default();
                for (col, ch) in columns {
                    let slot: &mut (Option<Option<String>>, Adds) =
                        row.1.entry(col.clone()).or_default();
                    match ch {
                        ColumnChange::Set(v) => *slot = (Some(v.clone()), Vec::new()),
                        ColumnChange::Add(d) => match (d.parse::<i64>(), slot.1.last_mut()) {
                            (Ok(n), Some(Ok(sum))) => *sum += i128::from(n),
                            (Ok(n), _) => slot.1.push(Ok(i128::from(n))),
                            (Err(_), _) => slot.1.push(Err(d.clone())),
                        },
                    }
                }
            }
        }
    }
    rows
}

/// `coalesce::fold` (coalescing before shipping) keeps the effect of the changes, never grows the
/// list, and its output still encodes.
pub fn check_fold(changes: Vec<Change>) {
    if changes.len() < 2 {
        return;
    }
    let before = effect(&changes);
    let n = changes.len();
    let folded = coalesce::fold(changes.into_iter());
    assert!(folded.len() <= n, "fold grew the batch");
    assert_eq!(
        effect(&folded),
        before,
        "fold changed the effect: {folded:?}"
    );
    check_changes(&folded);
}

/// A bounds-checked reader of message bodies (big-endian, as on the wire), written separately
/// from `protocol::frontend`: the reference its decoder is compared with, and what drives the
/// templates with arbitrary parameter bytes.
pub struct Body<'a>(pub &'a [u8]);

impl<'a> Body<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    pub fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    pub fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&c| c == 0)?;
        let s = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Some(s)
    }
}

/// A Parse body: statement name, query text, declared parameter type oids.
pub fn parse_body(b: &[u8]) -> Option<(&[u8], &str, Vec<u32>)> {
    let mut r = Body(b);
    let name = r.cstr()?;
    let query = std::str::from_utf8(r.cstr()?).ok()?;
    let n = r.i16()?;
    let mut oids = Vec::new();
    for _ in 0..n.max(0) {
        oids.push(r.i32()? as u32);
    }
    Some((name, query, oids))
}

/// A Bind body: the statement name, parameter format codes and values (None = NULL).
#[allow(clippy::type_complexity)]
pub fn bind_body(b: &[u8]) -> Option<(&[u8], Vec<i16>, Vec<Option<&[u8]>>)> {
    let mut r = Body(b);
    let _portal = r.cstr()?;
    let stmt = r.cstr()?;
    let nf = r.i16()?;
    let mut formats = Vec::new();
    for _ in 0..nf.max(0) {
        formats.push(r.i16()?);
    }
    let np = r.i16()?;
    let mut params = Vec::new();
    for _ in 0..np.max(0) {
        let len = r.i32()?;
        params.push(if len < 0 {
            None
        } else {
            Some(r.take(len as usize)?)
        });
    }
    Some((stmt, formats, params))
}

/// Appends a frontend message (type byte, length, body).
pub fn message(out: &mut Vec<u8>, ty: u8, body: &[u8]) {
    out.push(ty);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Writes the committed seed corpora under `fuzz/corpus/` (run once after changing it:
/// `cargo test --lib -- --ignored write_seed_corpus`).
#[cfg(test)]
mod seeds {
    use super::message;
    use writebehind_proxy::protocol::startup::cancel_packet;
    use writebehind_proxy::wal::record;
    use writebehind_proxy::writebehind::encode::{Change, ColumnChange};
    use writebehind_proxy::writebehind::journal;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196_608i32.to_be_bytes().to_vec(); // protocol 3.0
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn query(out: &mut Vec<u8>, sql: &str) {
        let mut b = Vec::new();
        cstr(&mut b, sql);
        message(out, b'Q', &b);
    }

    fn parse(out: &mut Vec<u8>, name: &str, sql: &str, oids: &[u32]) {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, sql);
        b.extend_from_slice(&(oids.len() as i16).to_be_bytes());
        for o in oids {
            b.extend_from_slice(&o.to_be_bytes());
        }
        message(out, b'P', &b);
    }

    fn bind(out: &mut Vec<u8>, stmt: &str, formats: &[i16], params: &[Option<&[u8]>]) {
        let mut b = Vec::new();
        cstr(&mut b, "");
        cstr(&mut b, stmt);
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes()); // result formats
        message(out, b'B', &b);
    }

    fn execute_sync(out: &mut Vec<u8>) {
        let mut d = vec![b'P'];
        cstr(&mut d, "");
        message(out, b'D', &d);
        let mut e = Vec::new();
        cstr(&mut e, "");
        e.extend_from_slice(&0i32.to_be_bytes());
        message(out, b'E', &e);
        message(out, b'S', &[]);
    }

    fn changes() -> Vec<Change> {
        vec![
            Change::Insert {
                relid: 16384,
                key: Some(vec!["1".into()]),
                values: vec![("s".into(), Some("a\tb\\c".into())), ("n".into(), None)],
                op: b'X',
                conflict_set: Some(vec!["s".into()]),
            },
            Change::Insert {
                relid: 16400,
                key: None,
                values: vec![("msg".into(), Some("é".into()))],
                op: b'I',
                conflict_set: None,
            },
            Change::Update {
                relid: 16384,
                key: vec!["7".into()],
                columns: vec![
                    ("n".into(), ColumnChange::Add("-2.5".into())),
                    ("s".into(), ColumnChange::Set(None)),
                ],
            },
            Change::Delete {
                relid: 16390,
                key: vec!["k".into(), "2".into()],
            },
        ]
    }

    fn write(target: &str, name: &str, bytes: &[u8]) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("corpus file");
    }

    const SQL: &[(&str, &str)] = &[
        ("insert_cols", "INSERT INTO t (id, n, s) VALUES (1, 2, 'x')"),
        (
            "insert_all_types",
            "insert into T values (1, 9223372036854775807, 'a''b', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 'abc', 'xyz', 123.45, -1e3, TRUE, -32768) on conflict (id) do nothing",
        ),
        (
            "upsert_escapes",
            "INSERT INTO t (id, s) VALUES (1, E'tab\\there\\\\ \\x41 \\u00e9 \\101 \\'q') ON CONFLICT (id) DO UPDATE SET s = EXCLUDED.s",
        ),
        ("update_dollar", "UPDATE t SET n = n + 5, s = $tag$it's $ \\ body$tag$ WHERE id = 3"),
        ("update_sub_cast", "UPDATE public.t SET n = n - 2.5, m = m + .5 WHERE id = '4'::integer"),
        ("delete_pair", "DELETE FROM s.\"Pair\" WHERE b = 2 AND a = 'k'"),
        (
            "multi",
            "INSERT INTO log VALUES (1, 'a'); INSERT INTO log (msg, at) VALUES ('b', 2);; DELETE FROM t WHERE id = 1;",
        ),
        (
            "comments",
            "/* outer /* nested */ still */ INSERT -- line\n INTO t (id) VALUES (1) -- trailing",
        ),
        ("unicode_escape", "INSERT INTO t (id, s) VALUES (1, U&'d\\0061t\\+000061')"),
        ("continuation", "INSERT INTO t (id, s) VALUES (1, 'a'\n  'b'), (2, 'c' /* x */\n 'd')"),
        ("backslash_plain", "INSERT INTO t (id, s) VALUES (1, 'back\\\\slash\\'q')"),
        ("params", "INSERT INTO t (id, s, u) VALUES ($1, $2, $3)"),
        ("not_a_write", "SELECT 1; SET search_path = x; BEGIN"),
        ("null_default", "INSERT INTO t (id, s, created) VALUES (1, NULL::text, DEFAULT), (2, 'x', DEFAULT)"),
        ("non_ascii", "INSERT INTO t (id, s, v) VALUES (1, 'héllo ☃', 'ß') RETURNING id"),
        ("operators", "UPDATE t SET n = n+-1, sm = -5::smallint WHERE id = 1 AND b <> true"),
        ("quoted_ident", "UPDATE \"t\" SET \"S\" = 'x', \"n\"\"q\" = 1 WHERE \"id\" = 1"),
        ("numbers", "INSERT INTO t (id, d, m, n) VALUES (007, 999.99, 1.5e-3, 0x1F)"),
        (
            "fold",
            "UPDATE t SET n = n + 1 WHERE id = 1; UPDATE t SET n = n - 3, s = 'a' WHERE id = 1; UPDATE t SET m = m + 1.5 WHERE id = 2; DELETE FROM t WHERE id = 1; UPDATE t SET n = n + 9223372036854775807 WHERE id = 1; UPDATE t SET n = n + 1 WHERE id = 1",
        ),
    ];

    #[test]
    #[ignore = "writes fuzz/corpus; run by hand"]
    fn write_seed_corpus() {
        for (name, sql) in SQL {
            write("recognizer", name, sql.as_bytes());
        }

        // frontend_messages: control byte, then the client's bytes.
        let user = startup(&[
            ("user", "app"),
            ("database", "db"),
            ("application_name", "fuzz"),
        ]);
        let mut s = vec![0x05];
        s.extend(&user);
        query(&mut s, "INSERT INTO t (id, n, s) VALUES (1, 2, 'x')");
        query(&mut s, "UPDATE t SET n = n + 1 WHERE id = 1; SELECT 1");
        message(&mut s, b'X', &[]);
        write("frontend_messages", "startup_query", &s);

        let mut s = vec![0x21];
        s.extend(&user);
        parse(
            &mut s,
            "s1",
            "INSERT INTO t (id, n, s) VALUES ($1, $2, $3)",
            &[23, 0, 0],
        );
        bind(&mut s, "s1", &[], &[Some(b"1"), Some(b"42"), Some(b"text")]);
        execute_sync(&mut s);
        bind(
            &mut s,
            "s1",
            &[1, 1, 0],
            &[
                Some(&7i32.to_be_bytes()),
                Some(&(-3i64).to_be_bytes()),
                None,
            ],
        );
        execute_sync(&mut s);
        write("frontend_messages", "parse_bind_text_binary", &s);

        let mut s = vec![0x33];
        s.extend(&user);
        parse(
            &mut s,
            "",
            "UPDATE t SET n = n + $1, s = $2 WHERE id = $3",
            &[],
        );
        bind(
            &mut s,
            "",
            &[1],
            &[
                Some(&5i64.to_be_bytes()),
                Some(b"x"),
                Some(&9i32.to_be_bytes()),
            ],
        );
        execute_sync(&mut s);
        parse(
            &mut s,
            "d",
            "DELETE FROM s.\"Pair\" WHERE a = $1 AND b = $2",
            &[25, 20],
        );
        bind(&mut s, "d", &[0], &[Some(b"k"), Some(b"2")]);
        execute_sync(&mut s);
        message(&mut s, b'X', &[]);
        write("frontend_messages", "parse_bind_update_delete", &s);

        let uuid = [
            0xA0u8, 0xEE, 0xBC, 0x99, 0x9C, 0x0B, 0x4E, 0xF8, 0xBB, 0x6D, 0x6B, 0xB9, 0xBD, 0x38,
            0x0A, 0x11,
        ];
        let mut s = vec![0x47];
        s.extend(&user);
        parse(
            &mut s,
            "u",
            "INSERT INTO t (id, u, b, sm, v) VALUES ($1, $2, $3, $4, $5)",
            &[],
        );
        bind(
            &mut s,
            "u",
            &[1, 1, 1, 1, 0],
            &[
                Some(&1i32.to_be_bytes()),
                Some(&uuid),
                Some(&[1]),
                Some(&(-2i16).to_be_bytes()),
                Some("héllo".as_bytes()),
            ],
        );
        execute_sync(&mut s);
        write("frontend_messages", "parse_bind_uuid_bool", &s);

        let mut s = vec![0x00];
        s.extend_from_slice(&8i32.to_be_bytes());
        s.extend_from_slice(&80_877_103i32.to_be_bytes());
        write("frontend_messages", "ssl_request", &s);

        let mut s = vec![0x00];
        s.extend_from_slice(&cancel_packet(1234, -5678));
        write("frontend_messages", "cancel_request", &s);

        // No startup packet: the message stream alone, small size limit (bit 7).
        let mut s = vec![0x85];
        query(&mut s, "DELETE FROM t WHERE id = 1");
        message(&mut s, b'H', &[]);
        message(&mut s, b'd', b"copy data\n");
        message(&mut s, b'c', &[]);
        query(&mut s, &"x".repeat(80));
        write("frontend_messages", "stream_oversized", &s);

        let mut s = vec![0x0b];
        s.extend(&user);
        query(&mut s, "INSERT INTO log VALUES (1, 'torn')");
        s.truncate(s.len() - 7);
        write("frontend_messages", "torn_query", &s);

        let mut s = vec![0x0d];
        query(&mut s, "SELECT 1");
        s.extend_from_slice(b"\x01\x00\x00\x00\x05");
        write("frontend_messages", "invalid_type", &s);

        // wal_reader. Raw mode (byte 0 even): byte 1 splits into two segments (bit 4).
        let payload = journal::encode("db", &changes());
        let mut seg = Vec::new();
        record::encode(&mut seg, journal::KIND_CHANGES, 1, &payload);
        record::encode(
            &mut seg,
            journal::KIND_CHANGES,
            2,
            &journal::encode("other db", &[]),
        );
        record::encode(&mut seg, 2, 3, b"not a journal record");
        let first_len = {
            let mut v = Vec::new();
            record::encode(&mut v, journal::KIND_CHANGES, 1, &payload);
            v.len()
        };
        let raw = |mode: u8, split: u8, seg: &[u8]| {
            let mut v = vec![mode, split];
            v.extend_from_slice(seg);
            v
        };
        write("wal_reader", "raw_valid", &raw(0x00, 0, &seg));
        write(
            "wal_reader",
            "raw_two_segments",
            &raw(0x10, first_len as u8, &seg),
        );
        write(
            "wal_reader",
            "raw_torn_tail",
            &raw(0x00, 0, &seg[..seg.len() - 5]),
        );
        let mut mid = seg.clone();
        mid[first_len + 12] ^= 0x20;
        write("wal_reader", "raw_corrupt_middle", &raw(0x00, 0, &mid));
        let mut zeros = seg.clone();
        zeros.extend_from_slice(&[0; 64]);
        write("wal_reader", "raw_zero_tail", &raw(0x02, 0, &zeros));
        write("wal_reader", "journal_payload", &payload);

        // Structured mode (byte 0 odd): ctl[5], then (kind, len, payload) records.
        let structured = |ctl: [u8; 5], recs: &[(u8, &[u8])]| {
            let mut v = vec![0x01];
            v.extend_from_slice(&ctl);
            for (k, p) in recs {
                v.push(*k);
                v.push(p.len() as u8);
                v.extend_from_slice(p);
            }
            v
        };
        let recs: &[(u8, &[u8])] = &[
            (1, b"first"),
            (0x81, b"db"),
            (3, b""),
            (1, b"fourth record"),
        ];
        write(
            "wal_reader",
            "structured_clean",
            &structured([0, 0, 0, 0, 0], recs),
        );
        write(
            "wal_reader",
            "structured_two_cut",
            &structured([0x0a, 2, 9, 0, 0], recs),
        );
        write(
            "wal_reader",
            "structured_flip",
            &structured([0x08, 2, 0, 0x85, 0x10], recs),
        );
    }
}
