//! Prepared templates for the extended protocol: a recognized write with `$n` slots, their
//! inferred types (as PostgreSQL infers them from the target columns), and binding of text or
//! binary parameter values into validated changes.

use super::catalog::{Column, Table};
use super::encode::Change;
use super::recognize::{SetExpr, Value, Write};
use super::validate;
use std::borrow::Cow;

/// A prepared write: parse once (per statement text), bind many times.
#[derive(Debug, Clone)]
pub struct Template {
    write: Write,
    /// The type oid of `$1..$n`, for ParameterDescription.
    param_types: Vec<u32>,
}

const TEXT: u32 = 25;
const VARCHAR: u32 = 1043;

/// The built-in type oid of a column type the proxy can bind, or `None`.
fn type_oid(type_name: &str) -> Option<u32> {
    Some(match type_name {
        "boolean" => 16,
        "bigint" => 20,
        "smallint" => 21,
        "integer" => 23,
        "text" => TEXT,
        "character varying" => VARCHAR,
        "numeric" => 1700,
        "uuid" => 2950,
        _ => return None,
    })
}

impl Template {
    /// Builds the template of `write` on `table`; `declared` are the parameter type oids of the
    /// Parse message (0 = unspecified). `None` (pass through) when a parameter is cast, used for
    /// columns of different types, not numbered `$1..$n` without gaps, declared with another
    /// type than PostgreSQL would infer, or of a type the proxy cannot bind.
    pub fn prepare(write: Write, table: &Table, declared: &[u32]) -> Option<Self> {
        // Per occurrence of a `$n`: its number, its column, and whether it is compared with
        // the column (WHERE) rather than assigned to it.
        let mut slots: Vec<(u32, &Column, bool)> = Vec::new();
        let mut note = |v: &Value, col: &str, compared: bool| -> Option<()> {
            match v {
                Value::Param { cast: Some(_), .. } => None,
                Value::Param { n, cast: None } => {
                    slots.push((*n, table.column(col)?, compared));
                    Some(())
                }
                _ => Some(()),
            }
        };
        // In the order PostgreSQL's analysis meets them (it types a `$n` where it first
        // sees it): an UPDATE's WHERE comes before its SET list.
        match &write {
            Write::Insert { columns, rows, .. } => {
                for row in rows {
                    for (i, v) in row.iter().enumerate() {
                        let name = match columns {
                            Some(c) => c.get(i)?.as_str(),
                            None => table.columns.get(i)?.name.as_str(),
                        };
                        note(v, name, false)?;
                    }
                }
            }
            Write::Update { set, key, .. } => {
                for (c, v) in key {
                    note(v, c, true)?;
                }
                for (c, e) in set {
                    let (SetExpr::Assign(v) | SetExpr::Add(v) | SetExpr::Sub(v)) = e;
                    note(v, c, false)?;
                }
            }
            Write::Delete { key, .. } => {
                for (c, v) in key {
                    note(v, c, true)?;
                }
            }
        }
        let count = slots.iter().map(|(n, _, _)| *n).max().unwrap_or(0) as usize;
        // PostgreSQL allows at most 65535 parameters; a larger $n is its error to raise (and
        // must not size an allocation here).
        if count > u16::MAX as usize || declared.len() > count {
            return None; // extra declared parameters: PostgreSQL's own business
        }
        let mut param_types = vec![0u32; count];
        // Per `$n`: typed by a comparison (WHERE) rather than by an assignment.
        let mut typed_by_where = vec![false; count];
        for (n, col, compared) in &slots {
            let mut oid = type_oid(&col.type_name)?;
            // varchar has no `=` of its own: `k = $1` is text = text, and $1 is text.
            if *compared && oid == VARCHAR {
                oid = TEXT;
            }
            let i = (*n as usize).checked_sub(1)?;
            let slot = param_types.get_mut(i)?;
            // Typed text by the WHERE (analysed first), a `$n` assigned to a varchar column
            // stays text: an assignment cast converts it. Two assignments of different types
            // are 42P08 (SET s = $1, v = $1 on text and varchar), as is anything else:
            // PostgreSQL decides.
            let keeps =
                *slot == oid || (*slot == TEXT && oid == VARCHAR && !compared && typed_by_where[i]);
            if *slot != 0 && !keeps {
                return None; // the same $n for columns of different types
            }
            if *slot == 0 {
                *slot = oid;
                typed_by_where[i] = *compared;
            }
        }
        for (i, t) in param_types.iter_mut().enumerate() {
            let d = declared.get(i).copied().unwrap_or(0);
            if *t == 0 {
                return None;
            }
            if d != 0 && d != *t {
                // A declared type PostgreSQL converts to the column's type without changing
                // the value (or raising): another integer width, or text for a string column.
                if !(compatible(d, *t)) {
                    return None;
                }
                *t = d;
            }
        }
        Some(Self { write, param_types })
    }

    /// The recognized write.
    pub fn write(&self) -> &Write {
        &self.write
    }

    /// The parameter type oids, in order, for a locally answered Describe.
    pub fn param_types(&self) -> &[u32] {
        &self.param_types
    }

    /// Binds parameter values (`None` = NULL) in the given formats (Bind's format codes: none =
    /// all text, one = for all, else one per parameter; 0 text, 1 binary) and validates the
    /// result into changes. `None`: pass the statement through (PostgreSQL then answers).
    pub fn bind(
        &self,
        params: &[Option<&[u8]>],
        formats: &[i16],
        table: &Table,
    ) -> Option<Vec<Change>> {
        if params.len() != self.param_types.len() {
            return None;
        }
        let mut texts = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let format = match formats {
                [] => 0,
                [f] => *f,
                fs => *fs.get(i)?,
            };
            texts.push(match p {
                None => None,
                Some(bytes) => Some(decode(bytes, format, *self.param_types.get(i)?)?),
            });
        }
        validate::bound_changes(&self.write, &texts, table)
    }
}

/// Whether a parameter declared as `declared` may stand for a column whose own type is
/// `column`: integers of any width into integer or numeric columns (the value is checked
/// against the declared width when bound, and against the column by validation), text into
/// string columns.
fn compatible(declared: u32, column: u32) -> bool {
    const INTS: [u32; 3] = [20, 21, 23];
    (INTS.contains(&declared) && (INTS.contains(&column) || column == 1700))
        || (matches!(declared, 25 | 1043) && matches!(column, 25 | 1043))
}

/// A parameter value's PostgreSQL text form, from text or binary format, for a parameter of
/// type `oid` (integers are checked against their width, as PostgreSQL's input function
/// would).
fn decode(bytes: &[u8], format: i16, oid: u32) -> Option<Cow<'_, str>> {
    match format {
        0 => {
            let text = std::str::from_utf8(bytes).ok()?;
            let fits = match oid {
                21 => text.trim().parse::<i16>().is_ok(),
                23 => text.trim().parse::<i32>().is_ok(),
                20 => text.trim().parse::<i64>().is_ok(),
                _ => true,
            };
            fits.then_some(Cow::Borrowed(text))
        }
        1 => decode_binary(bytes, oid),
        _ => None,
    }
}

/// A binary-format parameter value's text form (see [`decode`]).
fn decode_binary(bytes: &[u8], oid: u32) -> Option<Cow<'_, str>> {
    Some(match (oid, bytes) {
        (16, [b]) => Cow::Borrowed(if *b != 0 { "true" } else { "false" }),
        (21, b) => i16::from_be_bytes(b.try_into().ok()?).to_string().into(),
        (23, b) => i32::from_be_bytes(b.try_into().ok()?).to_string().into(),
        (20, b) => i64::from_be_bytes(b.try_into().ok()?).to_string().into(),
        (25 | 1043, b) => Cow::Borrowed(std::str::from_utf8(b).ok()?),
        (2950, b) if b.len() == 16 => {
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
            .into()
        }
        // numeric's binary form and anything else: not decoded here.
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writebehind::encode::ColumnChange;
    use crate::writebehind::{lexer, recognize};

    fn table() -> Table {
        let col = Column::plain;
        Table::keyed(
            "public",
            "t",
            &["id"],
            vec![
                col("id", "integer"),
                col("n", "bigint"),
                col("s", "text"),
                col("u", "uuid"),
                col("at", "timestamp with time zone"),
            ],
        )
    }

    fn prepare(sql: &str, declared: &[u32]) -> Option<Template> {
        let toks = lexer::lex(sql, true).ok()?;
        Template::prepare(recognize::recognize(&toks)?, &table(), declared)
    }

    #[test]
    fn parameter_types_follow_the_columns() {
        let t = prepare("UPDATE t SET n = n + $1 WHERE id = $2", &[]);
        assert_eq!(
            t.as_ref().map(Template::param_types),
            Some(&[20u32, 23][..])
        );
        let t = prepare(
            "INSERT INTO t (id, s, u) VALUES ($1, $2, $3)",
            &[23, 0, 2950],
        );
        assert_eq!(
            t.as_ref().map(Template::param_types),
            Some(&[23u32, 25, 2950][..])
        );
        for (sql, declared) in [
            ("INSERT INTO t (id, s) VALUES ($1, $1)", &[][..]), // 42P08: inconsistent types
            ("INSERT INTO t (id, s) VALUES ($1, $3)", &[]),     // $2 untyped
            ("INSERT INTO t (id, s) VALUES ($1::int, $2)", &[]), // cast
            ("INSERT INTO t (id, at) VALUES ($1, $2)", &[]),    // a type not bound here
            ("DELETE FROM t WHERE id = $1", &[25]),             // declared as text
        ] {
            assert!(prepare(sql, declared).is_none(), "{sql} must pass through");
        }
        assert!(prepare("INSERT INTO t (id, s) VALUES ($1, $1)", &[]).is_none());
        // Another integer width is what PostgreSQL converts from: Describe reports it.
        let t = prepare("UPDATE t SET n = n + $1 WHERE id = $2", &[21, 20]);
        assert_eq!(
            t.as_ref().map(Template::param_types),
            Some(&[21u32, 20][..])
        );
        let Some(t) = t else { panic!("not prepared") };
        assert!(t
            .bind(&[Some(b"40000"), Some(b"1")], &[], &table())
            .is_none()); // 22003
        assert!(t.bind(&[Some(b"4"), Some(b"1")], &[], &table()).is_some());
        assert!(prepare("DELETE FROM t WHERE id = $1 AND id = $1", &[]).is_none());
    }

    #[test]
    fn a_varchar_compared_is_text_as_postgres_infers() {
        let col = Column::plain;
        let pv = Table::keyed(
            "public",
            "pv",
            &["k"],
            vec![col("k", "character varying"), col("v", "character varying")],
        );
        let types = |sql: &str| {
            let toks = lexer::lex(sql, true).ok()?;
            Template::prepare(recognize::recognize(&toks)?, &pv, &[])
                .map(|t| t.param_types().to_vec())
        };
        // What PostgreSQL 15 infers for each (`PREPARE`, then pg_prepared_statements'
        // parameter_types): varchar has no `=`, so a compared $n is text.
        assert_eq!(types("DELETE FROM pv WHERE k = $1"), Some(vec![TEXT]));
        assert_eq!(
            types("UPDATE pv SET v = $1 WHERE k = $2"),
            Some(vec![VARCHAR, TEXT])
        );
        assert_eq!(types("UPDATE pv SET v = $1 WHERE k = $1"), Some(vec![TEXT]));
        // 42P08 in PostgreSQL: one $n assigned to text, then to varchar.
        let pt = Table::keyed(
            "public",
            "pt",
            &["k"],
            vec![
                col("k", "integer"),
                col("s", "text"),
                col("v", "character varying"),
            ],
        );
        let on_pt = |sql: &str| {
            let toks = lexer::lex(sql, true).ok()?;
            Template::prepare(recognize::recognize(&toks)?, &pt, &[])
        };
        assert!(on_pt("UPDATE pt SET s = $1, v = $1 WHERE k = $2").is_none());
        assert!(on_pt("INSERT INTO pt (k, s, v) VALUES ($2, $1, $1)").is_none());
        assert_eq!(
            types("INSERT INTO pv (k, v) VALUES ($1, $2)"),
            Some(vec![VARCHAR, VARCHAR])
        );
    }

    #[test]
    fn text_and_binary_values_bind_into_changes() {
        let Some(t) = prepare("UPDATE t SET n = n + $1, s = $2 WHERE id = $3", &[]) else {
            panic!("not prepared");
        };
        let five = 5i64.to_be_bytes();
        let id = 7i32.to_be_bytes();
        let got = t.bind(&[Some(&five), None, Some(&id)], &[1, 0, 1], &table());
        assert_eq!(
            got,
            Some(vec![Change::Update {
                relid: 1,
                key: vec!["7".into()],
                columns: vec![
                    ("n".into(), ColumnChange::Add("5".into())),
                    ("s".into(), ColumnChange::Set(None)),
                ],
            }])
        );
        let text = t.bind(&[Some(b"5"), Some(b"x"), Some(b"007")], &[], &table());
        assert!(matches!(text.as_deref(), Some([Change::Update { key, .. }]) if key == &["7"]));
        // Bad input passes through so PostgreSQL raises its own error.
        assert!(t
            .bind(&[Some(b"1.5"), None, Some(b"7")], &[0], &table())
            .is_none());
        assert!(t
            .bind(&[Some(&id), None, Some(&id)], &[1], &table())
            .is_none()); // int4 bytes for int8
        assert!(t.bind(&[None, None], &[], &table()).is_none());

        let Some(d) = prepare("DELETE FROM t WHERE id = $1", &[]) else {
            panic!("not prepared");
        };
        let Some(u) = prepare("INSERT INTO t (id, u) VALUES ($1, $2)", &[]) else {
            panic!("not prepared");
        };
        assert!(d.bind(&[Some(b"abc")], &[0], &table()).is_none());
        let uuid = [
            0xA0u8, 0xEE, 0xBC, 0x99, 0x9C, 0x0B, 0x4E, 0xF8, 0xBB, 0x6D, 0x6B, 0xB9, 0xBD, 0x38,
            0x0A, 0x11,
        ];
        let got = u.bind(&[Some(b"1"), Some(&uuid)], &[0, 1], &table());
        let Some([Change::Insert { values, .. }]) = got.as_deref() else {
            panic!("not bound: {got:?}");
        };
        assert_eq!(
            values,
            &[(
                "u".to_string(),
                Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_string())
            )]
        );
    }
}
