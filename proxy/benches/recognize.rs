//! Median cost of lexing + recognizing statements, and of the whole simple-protocol path up to
//! the inbox row (bench/recognize prints both).

use std::time::Instant;
use writebehind_proxy::writebehind::catalog::{
    Catalog, Column, Table, DEFAULT_FLUSH_INTERVAL, DEFAULT_MAX_BATCH_ROWS,
};
use writebehind_proxy::writebehind::template::Template;
use writebehind_proxy::writebehind::{coalesce, encode, lexer, recognize, validate};

fn median_ns(mut f: impl FnMut() -> bool, rounds: usize, per_round: usize) -> f64 {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..per_round {
            assert!(f());
        }
        samples.push(start.elapsed().as_nanos() as f64 / per_round as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn main() {
    let cases = [
        ("simple INSERT, 4 columns", "INSERT INTO events (id, kind, payload, at) VALUES (42, 'click', 'some payload text', '2024-01-01 10:00:00+00')"),
        ("simple UPDATE increment", "UPDATE counters SET n = n + 1 WHERE id = 12345"),
        ("simple DELETE", "DELETE FROM sessions WHERE id = 'b1a2c3d4-0000-4000-8000-000000000001'"),
        ("prepared UPDATE text", "UPDATE counters SET n = n + $1 WHERE id = $2"),
        ("multi-row INSERT, 10 rows", "INSERT INTO t (id, v) VALUES (1,'a'),(2,'b'),(3,'c'),(4,'d'),(5,'e'),(6,'f'),(7,'g'),(8,'h'),(9,'i'),(10,'j')"),
    ];
    println!("{:<28}{:>14}", "statement", "median ns");
    for (name, sql) in cases {
        let ns = median_ns(
            || {
                lexer::lex(sql, true)
                    .ok()
                    .and_then(|t| recognize::recognize(&t))
                    .is_some()
            },
            51,
            2000,
        );
        println!("{name:<28}{ns:>14.0}");
    }

    // The whole path of a fresh simple-protocol write: lex, split, recognize, resolve, validate,
    // coalesce (fold) and encode the inbox COPY row.
    let catalog = catalog();
    let full = [
        ("simple INSERT, 4 columns", "INSERT INTO events (id, kind, payload, n) VALUES (42, 'click', 'some payload text', 7)"),
        ("simple UPDATE increment", "UPDATE counters SET n = n + 1 WHERE id = 12345"),
        ("simple DELETE", "DELETE FROM sessions WHERE id = 'b1a2c3d4-0000-4000-8000-000000000001'"),
        ("multi-row INSERT, 10 rows", "INSERT INTO events (id, kind) VALUES (1,'a'),(2,'b'),(3,'c'),(4,'d'),(5,'e'),(6,'f'),(7,'g'),(8,'h'),(9,'i'),(10,'j')"),
    ];
    println!();
    println!("{:<28}{:>14}", "full path (to COPY row)", "median ns");
    let mut out = Vec::with_capacity(4096);
    for (name, sql) in full {
        let ns = median_ns(
            || {
                out.clear();
                let Ok(tokens) = lexer::lex(sql, true) else {
                    return false;
                };
                let stmts = lexer::statements(&tokens);
                let [stmt] = stmts.as_slice() else {
                    return false;
                };
                let Some(write) = recognize::recognize(stmt) else {
                    return false;
                };
                let (recognize::Write::Insert { table, .. }
                | recognize::Write::Update { table, .. }
                | recognize::Write::Delete { table, .. }) = &write;
                let Some(t) = catalog.resolve(table.schema.as_deref(), &table.name) else {
                    return false;
                };
                let Some(changes) = validate::changes(&write, t) else {
                    return false;
                };
                for c in coalesce::fold(changes.into_iter()) {
                    encode::copy_row(&mut out, "proxy-1", 1, &c);
                }
                !out.is_empty()
            },
            51,
            2000,
        );
        println!("{name:<28}{ns:>14.0}");
    }
    prepared(&catalog);
}

/// Bind+Execute of a prepared write: template lookup by statement text, bind (binary int8
/// delta, text key), validate, fold, encode.
fn prepared(catalog: &Catalog) {
    let sql = "UPDATE counters SET n = n + $1 WHERE id = $2";
    let Some(table) = catalog.resolve(None, "counters") else {
        return;
    };
    let mut templates = std::collections::HashMap::new();
    if let Some(t) = lexer::lex(sql, true)
        .ok()
        .and_then(|t| recognize::recognize(&t))
        .and_then(|w| Template::prepare(w, table, &[]))
    {
        templates.insert(sql.to_string(), t);
    }
    let delta = 1i64.to_be_bytes();
    let mut out = Vec::with_capacity(256);
    let ns = median_ns(
        || {
            out.clear();
            let Some(t) = templates.get(sql) else {
                return false;
            };
            let Some(changes) = t.bind(&[Some(&delta), Some(b"12345")], &[1, 0], table) else {
                return false;
            };
            for c in coalesce::fold(changes.into_iter()) {
                encode::copy_row(&mut out, "proxy-1", 1, &c);
            }
            !out.is_empty()
        },
        51,
        2000,
    );
    println!("{:<28}{ns:>14.0}", "prepared UPDATE, Bind+Exec");
}

fn catalog() -> Catalog {
    let col = |name: &str, ty: &str, not_null: bool| Column {
        not_null,
        ..Column::plain(name, ty)
    };
    let table = |relid: u32, name: &str, columns: Vec<Column>| Table {
        relid,
        schema: "public".into(),
        name: name.into(),
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
        columns,
    };
    Catalog::from_tables(vec![
        table(
            1,
            "events",
            vec![
                col("id", "bigint", true),
                col("kind", "text", false),
                col("payload", "text", false),
                col("n", "integer", false),
            ],
        ),
        table(
            2,
            "counters",
            vec![col("id", "integer", true), col("n", "bigint", true)],
        ),
        table(
            3,
            "sessions",
            vec![col("id", "uuid", true), col("v", "text", false)],
        ),
    ])
}
