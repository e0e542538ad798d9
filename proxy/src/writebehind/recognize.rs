//! Statement recognition: exactly the single-row write forms of DESIGN §2, from lexer tokens.
//! Anything else — or anything not recognized with certainty — is `None` and passes through.
//! Names are resolved and values validated later, against the catalog.

use super::lexer::Token;
use super::reserved::is_reserved;

/// A possibly schema-qualified table name, as written (unquoted parts already folded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

/// A value in a recognized statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `NULL`.
    Null,
    /// `DEFAULT` (INSERT only).
    Default,
    /// A constant in its text form (`42`, `-1.5`, `it's`, `true`), with an optional cast type;
    /// `number` when it was written as a numeric literal (its text is then as written, which is
    /// not always the text PostgreSQL would produce from it: `1e3`, `.5`, `007`).
    Const {
        text: String,
        cast: Option<String>,
        number: bool,
    },
    /// `$n`, with an optional cast type.
    Param { n: u32, cast: Option<String> },
}

/// The right-hand side of `SET c = …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetExpr {
    /// `c = v`.
    Assign(Value),
    /// `c = c + v`.
    Add(Value),
    /// `c = c - v`.
    Sub(Value),
}

/// `ON CONFLICT (target) DO …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnConflict {
    /// `DO NOTHING`.
    Nothing { target: Vec<String> },
    /// `DO UPDATE SET c = EXCLUDED.c, …`: the columns set.
    Update {
        target: Vec<String>,
        set: Vec<String>,
    },
}

/// A write the proxy may acknowledge, once the catalog confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Insert {
        table: TableName,
        columns: Option<Vec<String>>,
        rows: Vec<Vec<Value>>,
        on_conflict: Option<OnConflict>,
    },
    Update {
        table: TableName,
        set: Vec<(String, SetExpr)>,
        key: Vec<(String, Value)>,
    },
    Delete {
        table: TableName,
        key: Vec<(String, Value)>,
    },
}

impl Write {
    /// Whether a value of the statement is cast (`::type`) to a type name `pick` chooses.
    pub fn any_cast(&self, pick: impl Fn(&str) -> bool) -> bool {
        let hit = |v: &Value| match v {
            Value::Const { cast, .. } | Value::Param { cast, .. } => {
                cast.as_deref().is_some_and(&pick)
            }
            Value::Null | Value::Default => false,
        };
        match self {
            Write::Insert { rows, .. } => rows.iter().flatten().any(hit),
            Write::Update { set, key, .. } => {
                set.iter()
                    .any(|(_, SetExpr::Assign(v) | SetExpr::Add(v) | SetExpr::Sub(v))| hit(v))
                    || key.iter().any(|(_, v)| hit(v))
            }
            Write::Delete { key, .. } => key.iter().any(|(_, v)| hit(v)),
        }
    }
}

/// Recognizes one statement (no trailing semicolon); `None` means: pass it through.
pub fn recognize(tokens: &[Token<'_>]) -> Option<Write> {
    let mut p = Parser { t: tokens, i: 0 };
    let w = match p.word()? {
        "insert" => p.insert(),
        "update" => p.update(),
        "delete" => p.delete(),
        _ => None,
    }?;
    p.at_end().then_some(w)
}

struct Parser<'t, 'a> {
    t: &'t [Token<'a>],
    i: usize,
}

impl<'t, 'a> Parser<'t, 'a> {
    fn peek(&self) -> Option<&'t Token<'a>> {
        self.t.get(self.i)
    }

    fn next(&mut self) -> Option<&'t Token<'a>> {
        let t = self.t.get(self.i);
        self.i += 1;
        t
    }

    fn at_end(&self) -> bool {
        self.i == self.t.len()
    }

    fn word(&mut self) -> Option<&'t str> {
        match self.next()? {
            Token::Word(w) => Some(w),
            _ => None,
        }
    }

    fn keyword(&mut self, k: &str) -> Option<()> {
        (self.word()? == k).then_some(())
    }

    fn punct(&mut self, c: char) -> Option<()> {
        (self.next()? == &Token::Punct(c)).then_some(())
    }

    fn is_punct(&self, c: char) -> bool {
        self.peek() == Some(&Token::Punct(c))
    }

    fn is_word(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w == k)
    }

    fn op(&mut self, o: &str) -> Option<()> {
        matches!(self.next()?, Token::Op(x) if *x == o).then_some(())
    }

    fn ident(&mut self) -> Option<String> {
        match self.next()? {
            Token::Word(w) if !is_reserved(w) => Some(w.to_string()),
            Token::QuotedIdent(q) => Some(q.to_string()),
            _ => None,
        }
    }

    fn table(&mut self) -> Option<TableName> {
        let first = self.ident()?;
        if self.is_punct('.') {
            self.i += 1;
            let name = self.ident()?;
            if self.is_punct('.') {
                return None; // database-qualified names pass through
            }
            return Some(TableName {
                schema: Some(first),
                name,
            });
        }
        Some(TableName {
            schema: None,
            name: first,
        })
    }

    fn ident_list(&mut self) -> Option<Vec<String>> {
        self.punct('(')?;
        let mut out = vec![self.ident()?];
        while self.is_punct(',') {
            self.i += 1;
            out.push(self.ident()?);
        }
        self.punct(')')?;
        Some(out)
    }

    /// An optional `::type` (a single type word, e.g. `int`, `text`, `jsonb`, `timestamptz`).
    fn cast(&mut self) -> Option<Option<String>> {
        if matches!(self.peek(), Some(Token::Op(o)) if *o == "::") {
            self.i += 1;
            let ty = match self.next()? {
                Token::Word(w) if !is_reserved(w) => w.to_string(),
                // Quoted, a name is only pg_type's own: `"int4"` is a type, `"integer"` is
                // not (42704), as the grammar's keyword type names are unquoted only.
                Token::QuotedIdent(q)
                    if matches!(
                        q.as_ref(),
                        "int2" | "int4" | "int8" | "bool" | "numeric" | "text" | "uuid"
                    ) =>
                {
                    q.to_string()
                }
                _ => return None,
            };
            if self.is_punct('(') || self.is_punct('[') || self.is_punct('.') {
                return None; // typmods, arrays and qualified types pass through
            }
            return Some(Some(ty));
        }
        Some(None)
    }

    fn value(&mut self, allow_default: bool) -> Option<Value> {
        let signed = matches!(self.peek(), Some(Token::Op(o)) if *o == "-" || *o == "+");
        let v = match self.next()? {
            Token::Word(w) if w == "null" => Value::Null,
            Token::Word(w) if w == "default" && allow_default => return Some(Value::Default),
            // A boolean constant is typed (unlike a quoted string): `k = true` on a text
            // column is an error in PostgreSQL (42883), so it is recognized as a cast.
            Token::Word(w) if w == "true" || w == "false" => Value::Const {
                text: w.to_string(),
                cast: Some("boolean".into()),
                number: false,
            },
            Token::Number(n) => Value::Const {
                text: n.to_string(),
                cast: None,
                number: true,
            },
            Token::Op(o) if *o == "-" || *o == "+" => match self.next()? {
                Token::Number(n) if *o == "-" => Value::Const {
                    text: format!("-{n}"),
                    cast: None,
                    number: true,
                },
                Token::Number(n) => Value::Const {
                    text: n.to_string(),
                    cast: None,
                    number: true,
                },
                _ => return None,
            },
            Token::Str(s) => Value::Const {
                text: s.to_string(),
                cast: None,
                number: false,
            },
            Token::Param(n) => Value::Param { n: *n, cast: None },
            _ => return None,
        };
        let cast = self.cast()?;
        if signed && cast.is_some() {
            // `-5::int` is `-(5::int)`: the cast applies before the sign (`-32768::smallint`
            // is out of range, `-5::text` has no operator). Pass it through.
            return None;
        }
        Some(match (v, cast) {
            (v, None) => v,
            (Value::Const { text, number, .. }, Some(c)) => Value::Const {
                text,
                cast: Some(c),
                number,
            },
            (Value::Param { n, .. }, Some(c)) => Value::Param { n, cast: Some(c) },
            // NULL::type is a NULL *of that type*: `NULL::uuid` into an integer column is an
            // error (42804). Pass it through rather than compare type names here.
            (Value::Null, Some(_)) => return None,
            (Value::Default, Some(_)) => return None,
        })
    }

    fn insert(&mut self) -> Option<Write> {
        self.keyword("into")?;
        let table = self.table()?;
        let columns = if self.is_punct('(') {
            Some(self.ident_list()?)
        } else {
            None
        };
        self.keyword("values")?;
        let mut rows = Vec::new();
        loop {
            self.punct('(')?;
            let mut row = vec![self.value(true)?];
            while self.is_punct(',') {
                self.i += 1;
                row.push(self.value(true)?);
            }
            self.punct(')')?;
            rows.push(row);
            if !self.is_punct(',') {
                break;
            }
            self.i += 1;
        }
        let on_conflict = if self.is_word("on") {
            self.i += 1;
            self.keyword("conflict")?;
            let target = self.ident_list()?;
            self.keyword("do")?;
            match self.word()? {
                "nothing" => Some(OnConflict::Nothing { target }),
                "update" => {
                    self.keyword("set")?;
                    let mut set = Vec::new();
                    loop {
                        let col = self.ident()?;
                        self.op("=")?;
                        self.keyword("excluded")?;
                        self.punct('.')?;
                        if self.ident()? != col {
                            return None; // c = EXCLUDED.other is not a plain upsert
                        }
                        set.push(col);
                        if !self.is_punct(',') {
                            break;
                        }
                        self.i += 1;
                    }
                    Some(OnConflict::Update { target, set })
                }
                _ => return None,
            }
        } else {
            None
        };
        Some(Write::Insert {
            table,
            columns,
            rows,
            on_conflict,
        })
    }

    fn update(&mut self) -> Option<Write> {
        let table = self.table()?;
        self.keyword("set")?;
        let mut set = Vec::new();
        loop {
            let col = self.ident()?;
            self.op("=")?;
            let expr = match self.peek()? {
                Token::Word(w) if *w == col => {
                    self.i += 1;
                    let add = match self.next()? {
                        Token::Op(o) if *o == "+" => true,
                        Token::Op(o) if *o == "-" => false,
                        _ => return None,
                    };
                    let v = self.value(false)?;
                    if v == Value::Null {
                        return None;
                    }
                    if add {
                        SetExpr::Add(v)
                    } else {
                        SetExpr::Sub(v)
                    }
                }
                Token::QuotedIdent(q) if *q == col => return None, // keep it simple: pass through
                _ => SetExpr::Assign(self.value(false)?),
            };
            set.push((col, expr));
            if !self.is_punct(',') {
                break;
            }
            self.i += 1;
        }
        let key = self.where_key()?;
        Some(Write::Update { table, set, key })
    }

    fn delete(&mut self) -> Option<Write> {
        self.keyword("from")?;
        let table = self.table()?;
        let key = self.where_key()?;
        Some(Write::Delete { table, key })
    }

    /// `WHERE a = v [AND b = w]…` — equality on plain columns only.
    fn where_key(&mut self) -> Option<Vec<(String, Value)>> {
        self.keyword("where")?;
        let mut key = Vec::new();
        loop {
            let col = self.ident()?;
            self.op("=")?;
            let v = self.value(false)?;
            if v == Value::Null || key.iter().any(|(c, _)| *c == col) {
                return None; // `k = NULL` matches nothing; a column twice is not a key lookup
            }
            key.push((col, v));
            if !self.is_word("and") {
                break;
            }
            self.i += 1;
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writebehind::lexer::lex;

    fn rec(sql: &str) -> Option<Write> {
        let toks = lex(sql, true).ok()?;
        let stmts = crate::writebehind::lexer::statements(&toks);
        (stmts.len() == 1).then(|| recognize(stmts[0])).flatten()
    }

    fn c(text: &str) -> Value {
        Value::Const {
            text: text.into(),
            cast: None,
            number: text.bytes().all(|b| b.is_ascii_digit() || b == b'-'),
        }
    }

    fn t(name: &str) -> TableName {
        TableName {
            schema: None,
            name: name.into(),
        }
    }

    #[test]
    fn the_acknowledged_forms() {
        assert_eq!(
            rec("INSERT INTO counters (id, n) VALUES (1, -5), ($1, DEFAULT);"),
            Some(Write::Insert {
                table: t("counters"),
                columns: Some(vec!["id".into(), "n".into()]),
                rows: vec![
                    vec![c("1"), c("-5")],
                    vec![Value::Param { n: 1, cast: None }, Value::Default]
                ],
                on_conflict: None,
            })
        );
        assert_eq!(
            rec("update public.\"Counters\" set n = n + 1, note = 'x''y'::text where id = 7"),
            Some(Write::Update {
                table: TableName {
                    schema: Some("public".into()),
                    name: "Counters".into()
                },
                set: vec![
                    ("n".into(), SetExpr::Add(c("1"))),
                    (
                        "note".into(),
                        SetExpr::Assign(Value::Const {
                            text: "x'y".into(),
                            cast: Some("text".into()),
                            number: false,
                        })
                    ),
                ],
                key: vec![("id".into(), c("7"))],
            })
        );
        assert_eq!(
            rec("DELETE FROM t WHERE region = 'eu' AND id = $2"),
            Some(Write::Delete {
                table: t("t"),
                key: vec![
                    ("region".into(), c("eu")),
                    ("id".into(), Value::Param { n: 2, cast: None })
                ],
            })
        );
        assert_eq!(
            rec("INSERT INTO t VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v"),
            Some(Write::Insert {
                table: t("t"),
                columns: None,
                rows: vec![vec![c("1"), c("a")]],
                on_conflict: Some(OnConflict::Update {
                    target: vec!["id".into()],
                    set: vec!["v".into()]
                }),
            })
        );
        assert!(matches!(
            rec("INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO NOTHING"),
            Some(Write::Insert {
                on_conflict: Some(OnConflict::Nothing { .. }),
                ..
            })
        ));
        assert!(matches!(
            rec("UPDATE t SET n = n - $1 WHERE id = $2"),
            Some(Write::Update { .. })
        ));
    }

    #[test]
    fn everything_else_passes_through() {
        for sql in [
            "SELECT * FROM t",
            "INSERT INTO t SELECT * FROM u",
            "INSERT INTO t VALUES (1) RETURNING id",
            "INSERT INTO t VALUES (now())",
            "INSERT INTO t VALUES (nextval('s'))",
            "INSERT INTO t VALUES ((SELECT 1))",
            "INSERT INTO t DEFAULT VALUES",
            "INSERT INTO ONLY t VALUES (1)",
            "INSERT INTO t AS x VALUES (1)",
            "INSERT INTO db.s.t VALUES (1)",
            "INSERT INTO t VALUES (1::numeric(10,2))",
            "INSERT INTO t VALUES (1 + 1)",
            "INSERT INTO t VALUES (1::int + 1)",
            "INSERT INTO t VALUES (1, NULL::uuid)",
            // PostgreSQL continues 'a' -- c<newline> 'b' and 'a'<CR>'b' as 'ab'; the lexer
            // does not, and two adjacent strings are no value: conservative, not wrong.
            "INSERT INTO t VALUES ('a' -- c\n'b')",
            "INSERT INTO t VALUES ('a'\r'b')",
            // A block comment is no continuation whitespace: a syntax error in PostgreSQL.
            "INSERT INTO t VALUES ('a' /* c */\n'b')",
            "INSERT INTO t VALUES (-5::text)",
            "INSERT INTO t VALUES (-32768::smallint)",
            "INSERT INTO t VALUES ('a'::varchar(3))",
            "INSERT INTO t VALUES (U&'\\0041')",
            "INSERT INTO t VALUES (0x1F)",
            "INSERT INTO t VALUES (1_000)",
            "UPDATE t SET n = n + 1 + 1 WHERE id = 1",
            "UPDATE t SET n = \"N\" + 1 WHERE id = 1",
            "UPDATE t SET n = 1 WHERE id = 1 -- c\n OR id = 2",
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.w",
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 5",
            "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
            "UPDATE t SET n = m + 1 WHERE id = 1",
            "UPDATE t SET n = n * 2 WHERE id = 1",
            "UPDATE t SET n = n + NULL WHERE id = 1",
            "UPDATE t SET n = 1 WHERE id = 1 OR id = 2",
            "UPDATE t SET n = 1 WHERE id = 1 AND id = 2",
            "UPDATE t SET n = 1 WHERE id > 1",
            "UPDATE t SET n = 1 WHERE id = NULL",
            "UPDATE t SET n = 1",
            "UPDATE t SET n = 1 WHERE id = 1 RETURNING *",
            "UPDATE t SET n = 1 FROM u WHERE id = 1",
            "UPDATE ONLY t SET n = 1 WHERE id = 1",
            "DELETE FROM t",
            "DELETE FROM t WHERE id IN (1, 2)",
            "DELETE FROM t USING u WHERE id = 1",
            "WITH x AS (SELECT 1) DELETE FROM t WHERE id = 1",
            "DELETE FROM t WHERE id = 1; DELETE FROM t WHERE id = 2",
            "TRUNCATE t",
            "COPY t FROM STDIN",
            // Reserved words are no names: `order` is a syntax error, `user` is CURRENT_USER
            // (this DELETE deletes every row when the session's user is 'postgres').
            "INSERT INTO order VALUES (1)",
            "INSERT INTO \"order\" (id, limit) VALUES (2, 3)",
            "UPDATE \"order\" SET desc = 'y' WHERE id = 1",
            "DELETE FROM u WHERE user = 'postgres'",
            "UPDATE u SET v = 10 WHERE current_user = 'alice'",
            "INSERT INTO u (\"user\", v) VALUES ('c', 1) ON CONFLICT (user) DO NOTHING",
            "UPDATE t SET n = n + 1 WHERE left = 1",
        ] {
            assert_eq!(rec(sql), None, "{sql} must pass through");
        }
    }

    #[test]
    fn quoted_reserved_words_are_names() {
        assert!(rec("DELETE FROM u WHERE \"user\" = 'postgres'").is_some());
        assert!(rec("UPDATE \"order\" SET \"desc\" = 'y', name = 'n' WHERE id = 1").is_some());
    }

    #[test]
    fn literal_spellings_that_mean_the_same_value() {
        let expect = Some(Write::Delete {
            table: t("t"),
            key: vec![("v".into(), c("a\nb"))],
        });
        assert_eq!(rec("DELETE FROM t WHERE v = E'a\\nb'"), expect);
        assert_eq!(rec("DELETE FROM t WHERE v = $$a\nb$$"), expect);
        assert_eq!(rec("DELETE FROM t WHERE v = 'a'\n'\nb'"), expect);
        assert_eq!(rec("DELETE /* c */ FROM t -- x\n WHERE v = 'a\nb'"), expect);
        // standard_conforming_strings off changes what '\n' means.
        let off = lex("DELETE FROM t WHERE v = 'a\\nb'", false)
            .ok()
            .and_then(|t| recognize(&t));
        assert_eq!(off, expect);
    }
}
