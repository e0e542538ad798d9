//! Turning a recognized write into inbox changes, after checking it against the table: column
//! names, the key, NOT NULL, and each value's text form for the column's type. Whatever the
//! proxy cannot be certain PostgreSQL would accept exactly as written is refused here, and the
//! statement passes through (PostgreSQL then raises its own error, synchronously).

use super::catalog::{Column, Table};
use super::encode::{negate, Change, ColumnChange};
use super::literal::{
    canonical_key, canonical_number, fits_numeric, is_decimal, same_type, valid_text, within_scale,
};
use super::recognize::{OnConflict, SetExpr, Value, Write};
use std::borrow::Cow;

/// Converts `write` on `table` into changes, or `None` to pass the statement through.
/// Only constant values are handled here (simple query protocol).
pub fn changes(write: &Write, table: &Table) -> Option<Vec<Change>> {
    bound_changes(write, &[], table)
}

/// As [`changes`], with `params` bound to `$1..$n` (text form, `None` for NULL; extended
/// protocol): a bound value counts as a string constant of that text, as an untyped literal
/// would. A `$n` with nothing bound to it, or with a cast, passes the statement through.
pub fn bound_changes(
    write: &Write,
    params: &[Option<Cow<'_, str>>],
    table: &Table,
) -> Option<Vec<Change>> {
    // Row-level security: the worker would bypass the writer's policies. A keyed table whose
    // primary key was dropped (`writebehind.tables.key_columns` emptied by the DDL trigger):
    // no key to coalesce or apply by.
    if table.row_security || (!table.append && table.key.is_empty()) {
        return None;
    }
    // Rules, inheritance children, rows other write-behind tables reference: see `Table`.
    if table.rules
        || (table.children && !matches!(write, Write::Insert { .. }))
        || frees_referenced(write, table)
    {
        return None;
    }
    match write {
        Write::Insert {
            columns,
            rows,
            on_conflict,
            ..
        } => {
            let names: Vec<&str> = match columns {
                Some(c) => c.iter().map(String::as_str).collect(),
                None => table.columns.iter().map(|c| c.name.as_str()).collect(),
            };
            let mut seen = Vec::new();
            for n in &names {
                if seen.contains(n) {
                    return None;
                }
                seen.push(*n);
            }
            // A default that depends on the session (the role, a custom setting) is computed
            // by PostgreSQL in the writer's session, not later by the worker.
            if leaves_default(write, table, |c| c.session_default) {
                return None;
            }
            let (op, conflict_set) = match on_conflict {
                None => (b'I', None),
                Some(OnConflict::Nothing { target }) if *target == table.key => (b'N', None),
                Some(OnConflict::Update { target, set }) if *target == table.key => {
                    (b'X', Some(set.clone()))
                }
                Some(_) => return None,
            };
            if table.append && op != b'I' {
                return None;
            }
            if let Some(set) = &conflict_set {
                // Each column of DO UPDATE SET must exist, be writable, appear once (else
                // 42703 / 428C9 / 42601), and be given a value in every row: EXCLUDED.c of a
                // defaulted column is its default, which only PostgreSQL can compute.
                for (i, c) in set.iter().enumerate() {
                    let col = table.column(c)?;
                    let pos = names.iter().position(|n| n == c)?;
                    let given = rows
                        .iter()
                        .all(|r| !matches!(r.get(pos), None | Some(Value::Default)));
                    if col.default_only || set[..i].contains(c) || !given {
                        return None;
                    }
                }
            }
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                // More values than columns is 42601; with a column list, fewer is 42601 too
                // ("INSERT has more target columns than expressions"); VALUES lists must all
                // have the same length.
                if row.len() > names.len()
                    || (columns.is_some() && row.len() != names.len())
                    || Some(row.len()) != rows.first().map(Vec::len)
                {
                    return None;
                }
                let mut values = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    let col = table.column(name)?;
                    match row.get(i) {
                        None | Some(Value::Default) => {
                            if table.key.iter().any(|k| k == name) {
                                return None;
                            }
                        }
                        Some(_) if col.default_only => return None, // 428C9
                        Some(v) => values.push((col.name.clone(), constant(val(v, params), col)?)),
                    }
                }
                // Every NOT NULL column without a default must have a value.
                for c in &table.columns {
                    let given = values.iter().find(|(n, _)| *n == c.name);
                    match given {
                        Some((_, None)) if c.not_null => return None,
                        None if c.not_null && !c.has_default => return None,
                        _ => {}
                    }
                }
                let key = if table.append {
                    None
                } else {
                    let mut k = Vec::new();
                    for name in &table.key {
                        let (_, v) = values.iter().find(|(n, _)| n == name)?;
                        k.push(canonical_key(v.clone()?, table.column(name)?)?);
                    }
                    // One key twice in one statement: PostgreSQL rejects it (23505, or 21000
                    // with ON CONFLICT DO UPDATE) or keeps the first (DO NOTHING).
                    if out
                        .iter()
                        .any(|c| matches!(c, Change::Insert { key: Some(o), .. } if *o == k))
                    {
                        return None;
                    }
                    Some(k)
                };
                let values: Vec<(String, Option<String>)> = if table.append {
                    values
                } else {
                    values
                        .into_iter()
                        .filter(|(n, _)| !table.key.contains(n))
                        .collect()
                };
                out.push(Change::Insert {
                    relid: table.relid,
                    key,
                    values,
                    op,
                    conflict_set: conflict_set.clone(),
                });
            }
            Some(out)
        }
        Write::Update { set, key, .. } => {
            if table.append {
                return None;
            }
            let key = key_values(key, params, table)?;
            let mut columns = Vec::new();
            for (name, expr) in set {
                let col = table.column(name)?;
                if table.key.contains(name)
                    || col.default_only
                    || columns.iter().any(|(n, _)| n == name)
                {
                    return None;
                }
                let change = match expr {
                    SetExpr::Assign(v) => {
                        let v = constant(val(v, params), col)?;
                        if v.is_none() && col.not_null {
                            return None;
                        }
                        ColumnChange::Set(v)
                    }
                    SetExpr::Add(v) => ColumnChange::Add(delta(val(v, params), col)?),
                    SetExpr::Sub(v) => {
                        ColumnChange::Add(negated(&delta(val(v, params), col)?, col)?)
                    }
                };
                columns.push((name.clone(), change));
            }
            Some(vec![Change::Update {
                relid: table.relid,
                key,
                columns,
            }])
        }
        Write::Delete { key, .. } => {
            if table.append {
                return None;
            }
            Some(vec![Change::Delete {
                relid: table.relid,
                key: key_values(key, params, table)?,
            }])
        }
    }
}

/// The key's values in key-column order; `None` unless the WHERE names exactly the key.
fn key_values(
    key: &[(String, Value)],
    params: &[Option<Cow<'_, str>>],
    table: &Table,
) -> Option<Vec<String>> {
    if key.len() != table.key.len() {
        return None;
    }
    table
        .key
        .iter()
        .map(|k| {
            let (_, v) = key.iter().find(|(n, _)| n == k)?;
            let v = val(v, params);
            let col = table.column(k)?;
            // A comparison, not an assignment: a bare number against a string column is an
            // error in PostgreSQL (42883, text = integer), not the number's text.
            let string_column = matches!(col.type_name.as_str(), "text" | "character varying");
            if string_column && matches!(v, Val::Const { number: true, .. }) {
                return None;
            }
            canonical_key(constant(v, col)??, col)
        })
        .collect()
}

/// A value as validation sees it: a `$n` replaced by what was bound to it.
#[derive(Clone, Copy)]
enum Val<'a> {
    Null,
    Default,
    Const {
        text: &'a str,
        cast: Option<&'a str>,
        number: bool,
    },
    /// A `$n` with nothing bound to it (or a cast, which binding does not handle).
    Unbound,
}

fn val<'a>(v: &'a Value, params: &'a [Option<Cow<'_, str>>]) -> Val<'a> {
    match v {
        Value::Null => Val::Null,
        Value::Default => Val::Default,
        Value::Const { text, cast, number } => Val::Const {
            text,
            cast: cast.as_deref(),
            number: *number,
        },
        Value::Param { n, cast: None } => {
            match (*n as usize).checked_sub(1).and_then(|i| params.get(i)) {
                Some(None) => Val::Null,
                Some(Some(text)) => Val::Const {
                    text,
                    cast: None,
                    number: false,
                },
                None => Val::Unbound,
            }
        }
        Value::Param { cast: Some(_), .. } => Val::Unbound,
    }
}

/// A constant's text form if PostgreSQL would accept it for `col` exactly as the worker will
/// cast it; `Some(None)` for NULL; `None` when not certain.
fn constant(v: Val<'_>, col: &Column) -> Option<Option<String>> {
    match v {
        Val::Null => Some(None),
        Val::Const { text, cast, number } => {
            if let Some(c) = cast {
                if !same_type(c, &col.type_name) {
                    return None;
                }
            }
            // A numeric literal stored into a string column becomes PostgreSQL's output text of
            // the number (`1e3` → `1000`, `.5` → `0.5`, `007` → `7`): only accept spellings
            // that are already that text.
            let string_column = matches!(col.type_name.as_str(), "text" | "character varying");
            if number && string_column && !canonical_number(text) {
                return None;
            }
            valid_text(text, col).then(|| Some(text.to_string()))
        }
        Val::Default | Val::Unbound => None,
    }
}

/// Whether `write` is an INSERT that leaves a column `which` picks to its default (omitted,
/// or `DEFAULT` in some row).
pub fn leaves_default(write: &Write, table: &Table, which: impl Fn(&Column) -> bool) -> bool {
    let Write::Insert { columns, rows, .. } = write else {
        return false;
    };
    table.columns.iter().filter(|c| which(c)).any(|col| {
        let pos = match columns {
            Some(cols) => cols.iter().position(|n| *n == col.name),
            None => table.columns.iter().position(|c| c.name == col.name),
        };
        match pos {
            None => true,
            Some(pos) => rows
                .iter()
                .any(|r| matches!(r.get(pos), None | Some(Value::Default))),
        }
    })
}

/// Whether `write` deletes a row of `table` that another write-behind table may reference,
/// or changes a column such a reference uses (a key column of an INSERT is a new row's).
fn frees_referenced(write: &Write, table: &Table) -> bool {
    if table.referenced.is_empty() {
        return false;
    }
    let referenced = |c: &String| table.referenced.contains(c) && !table.key.contains(c);
    match write {
        Write::Delete { .. } => true,
        Write::Update { set, .. } => set.iter().any(|(c, _)| table.referenced.contains(c)),
        Write::Insert {
            columns,
            on_conflict,
            ..
        } => {
            let named = match columns {
                Some(cols) => cols.iter().any(referenced),
                None => table.columns.iter().any(|c| referenced(&c.name)),
            };
            let updated = match on_conflict {
                Some(OnConflict::Update { set, .. }) => set.iter().any(referenced),
                _ => false,
            };
            named || updated
        }
    }
}

/// The increment's text if it is an exact numeric literal and the column is numeric. A quoted
/// literal (or a bound parameter) is of the column's own type for PostgreSQL, so it must fit
/// that type (`n + '3000000000'` on an `integer` is 22003); a bare number is typed by its size
/// and only the sum is assigned to the column.
/// `n - d` as the increment `-d`, when the worker can hold it: the negation of bigint's
/// minimum is not a bigint (PostgreSQL subtracts it in one step and may well succeed).
fn negated(d: &str, col: &Column) -> Option<String> {
    let n = negate(d);
    let integral = matches!(col.type_name.as_str(), "smallint" | "integer" | "bigint");
    (!integral || n.parse::<i64>().is_ok()).then_some(n)
}

fn delta(v: Val<'_>, col: &Column) -> Option<String> {
    let Val::Const {
        text,
        cast: None,
        number,
    } = v
    else {
        return None;
    };
    let integral = matches!(col.type_name.as_str(), "smallint" | "integer" | "bigint");
    let ok = if integral {
        let range = match col.type_name.as_str() {
            "smallint" => i64::from(i16::MIN)..=i64::from(i16::MAX),
            "integer" => i64::from(i32::MIN)..=i64::from(i32::MAX),
            _ => i64::MIN..=i64::MAX,
        };
        text.trim_start_matches('-')
            .bytes()
            .all(|c| c.is_ascii_digit())
            && text
                .parse::<i64>()
                .is_ok_and(|d| number || range.contains(&d))
    } else {
        matches!(col.type_name.as_str(), "numeric")
            && is_decimal(text)
            && within_scale(text, col.typmod)
            && fits_numeric(text, -1)
    };
    ok.then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writebehind::{lexer, recognize};

    fn table() -> Table {
        let col =
            |name: &str, ty: &str, not_null: bool, has_default: bool, max: Option<usize>| Column {
                max_chars: max,
                not_null,
                has_default,
                ..Column::plain(name, ty)
            };
        Table::keyed(
            "public",
            "t",
            &["id"],
            vec![
                col("id", "integer", true, false, None),
                col("n", "bigint", true, true, None),
                col("s", "character varying", false, false, Some(3)),
                col("at", "timestamp with time zone", false, false, None),
                Column {
                    typmod: (5 << 16 | 2) + 4,
                    ..col("amount", "numeric", false, false, None)
                },
                Column {
                    default_only: true,
                    ..col("g", "integer", false, true, None)
                },
            ],
        )
    }

    fn check(sql: &str) -> Option<Vec<Change>> {
        let toks = lexer::lex(sql, true).ok()?;
        changes(&recognize::recognize(&toks)?, &table())
    }

    #[test]
    fn accepts_what_postgres_accepts_and_refuses_the_rest() {
        assert!(check("INSERT INTO t (id, n, s) VALUES (1, 2, 'abc')").is_some());
        assert!(
            check("INSERT INTO t (id) VALUES (1)").is_some(),
            "n has a default"
        );
        assert!(check("UPDATE t SET n = n - 3, s = NULL WHERE id = 1").is_some());
        assert!(check("DELETE FROM t WHERE id = 1").is_some());
        for sql in [
            "INSERT INTO t (id, s) VALUES (1, 'abcd')", // 22001: too long
            "INSERT INTO t (id, n) VALUES (1, 'x')",    // 22P02
            "INSERT INTO t (id, n) VALUES (1, NULL)",   // 23502
            "INSERT INTO t (n) VALUES (1)",             // no key
            "INSERT INTO t (id, nope) VALUES (1, 1)",   // 42703
            "INSERT INTO t (id, at) VALUES (1, '2024-01-01')", // a type the proxy does not check
            "INSERT INTO t (id, id) VALUES (1, 2)",     // 42701
            "INSERT INTO t (id) VALUES (99999999999)",  // 22003
            "UPDATE t SET id = 2 WHERE id = 1",         // key change
            "UPDATE t SET n = n + 1.5 WHERE id = 1",    // not an integer delta
            "UPDATE t SET n = 1 WHERE s = 'a'",         // not the key
            "UPDATE t SET n = NULL WHERE id = 1",       // 23502
            "DELETE FROM t WHERE id = 'one'",
        ] {
            assert_eq!(check(sql), None, "{sql} must pass through");
        }
    }

    #[test]
    fn numbers_into_string_columns_only_in_their_printed_form() {
        assert!(check("INSERT INTO t (id, s) VALUES (1, 12)").is_some());
        assert!(check("INSERT INTO t (id, s) VALUES (1, 1.5)").is_some());
        for sql in [
            "INSERT INTO t (id, s) VALUES (1, 1e3)", // stored as '1000'
            "INSERT INTO t (id, s) VALUES (1, .5)",  // stored as '0.5'
            "INSERT INTO t (id, s) VALUES (1, 007)", // stored as '7'
            "INSERT INTO t (id, s) VALUES (1, -0)",  // stored as '0'
            "INSERT INTO t (id, s) VALUES (1, 5.)",  // stored as '5'
        ] {
            assert_eq!(check(sql), None, "{sql} must pass through");
        }
    }

    #[test]
    fn keys_written_differently_name_the_same_row() {
        let key = |sql: &str| match check(sql).as_deref() {
            Some([Change::Delete { key, .. }]) => Some(key.clone()),
            Some([Change::Update { key, .. }]) => Some(key.clone()),
            Some([Change::Insert { key, .. }]) => key.clone(),
            _ => None,
        };
        let seven = Some(vec!["7".to_string()]);
        assert_eq!(key("DELETE FROM t WHERE id = 007"), seven);
        assert_eq!(key("DELETE FROM t WHERE id = '+7'"), seven);
        assert_eq!(key("UPDATE t SET n = 1 WHERE id = '07'"), seven);
        assert_eq!(key("INSERT INTO t (id) VALUES (0007)"), seven);
    }

    #[test]
    fn equal_keys_spelled_differently_are_one_key_or_pass_through() {
        let numeric_key = |typmod: i32, nondeterministic: bool, ty: &str| {
            Table::keyed(
                "public",
                "m",
                &["id"],
                vec![
                    Column {
                        typmod,
                        nondeterministic,
                        not_null: true,
                        ..Column::plain("id", ty)
                    },
                    Column::plain("v", "integer"),
                ],
            )
        };
        let key = |sql: &str, table: &Table| {
            let toks = lexer::lex(sql, true).ok()?;
            match changes(&recognize::recognize(&toks)?, table)?.as_slice() {
                [Change::Update { key, .. }] => Some(key.clone()),
                [Change::Insert { key, .. }] => key.clone(),
                _ => None,
            }
        };
        let free = numeric_key(-1, false, "numeric");
        let scaled = numeric_key((10 << 16 | 2) + 4, false, "numeric");
        for (sql, table) in [
            ("UPDATE m SET v = 1 WHERE id = 5", &free),
            ("UPDATE m SET v = 1 WHERE id = -5.25", &free),
            ("INSERT INTO m (id, v) VALUES (0.5, 1)", &free),
            ("UPDATE m SET v = 1 WHERE id = 5.25", &scaled),
        ] {
            assert!(key(sql, table).is_some(), "{sql} is acknowledged");
        }
        // PostgreSQL finds each of these equal to a key spelled otherwise (5.0 = 5; 5.555 and
        // 5.556 are both 5.56 in numeric(10,2)): their changes would be ordered apart.
        for (sql, table) in [
            ("UPDATE m SET v = 1 WHERE id = 5.0", &free),
            ("UPDATE m SET v = 1 WHERE id = 05", &free),
            ("UPDATE m SET v = 1 WHERE id = .5", &free),
            ("UPDATE m SET v = 1 WHERE id = -0", &free),
            ("INSERT INTO m (id, v) VALUES (5.50, 1)", &free),
            ("UPDATE m SET v = 1 WHERE id = 5.555", &scaled),
        ] {
            assert_eq!(key(sql, table), None, "{sql} must pass through");
        }
        let folded = numeric_key(-1, true, "text");
        assert_eq!(
            key("UPDATE m SET v = 1 WHERE id = 'A'", &folded),
            None,
            "a nondeterministic collation may find 'A' equal to 'a'"
        );
        assert!(key(
            "UPDATE m SET v = 1 WHERE id = 'A'",
            &numeric_key(-1, false, "text")
        )
        .is_some());
    }

    #[test]
    fn row_shapes_typmods_and_generated_columns() {
        assert!(check("INSERT INTO t (id, n) VALUES (1, 2), (3, DEFAULT)").is_some());
        assert!(
            check("INSERT INTO t VALUES (1, 2)").is_some(),
            "the rest default"
        );
        assert!(check("INSERT INTO t (id, amount) VALUES (1, 999.99)").is_some());
        assert!(check("INSERT INTO t (id, amount) VALUES (1, -0.5)").is_some());
        assert!(check("INSERT INTO t (id, g) VALUES (1, DEFAULT)").is_some());
        for sql in [
            "INSERT INTO t (id, n) VALUES (1)", // 42601: more target columns
            "INSERT INTO t (id, n) VALUES (1, 2), (3)", // 42601: VALUES lengths differ
            "INSERT INTO t VALUES (1, 2), (3)", // 42601
            "INSERT INTO t (id, amount) VALUES (1, 1000)", // 22003: numeric field overflow
            "INSERT INTO t (id, amount) VALUES (1, 999.999)", // rounds to 1000.00: 22003
            "INSERT INTO t (id, g) VALUES (1, 5)", // 428C9: generated column
            "UPDATE t SET g = 5 WHERE id = 1",  // 428C9
        ] {
            assert_eq!(check(sql), None, "{sql} must pass through");
        }
    }

    #[test]
    fn on_conflict_update_sets_only_given_columns() {
        assert!(check(
            "INSERT INTO t (id, n) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n"
        )
        .is_some());
        for sql in [
            "INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n",
            "INSERT INTO t (id, n) VALUES (1, DEFAULT) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n",
            "INSERT INTO t (id, n) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET nope = EXCLUDED.nope",
            "INSERT INTO t (id, n) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n, n = EXCLUDED.n",
            "INSERT INTO t (id, g) VALUES (1, DEFAULT) ON CONFLICT (id) DO UPDATE SET g = EXCLUDED.g",
            "INSERT INTO t (id, n) VALUES (1, 2) ON CONFLICT (n) DO NOTHING",
        ] {
            assert_eq!(check(sql), None, "{sql} must pass through");
        }
    }
}
