//! Which column defaults the apply worker may compute in place of the writing session: an
//! INSERT that leaves a column to its default is acknowledged only when the worker, in its own
//! session and later, computes the value PostgreSQL would have computed for the writer (or one
//! the documentation says differs: the time of the apply). Decided from the default's text as
//! `pg_get_expr` prints it on the proxy's own connection (search_path `pg_catalog, pg_temp`,
//! so a name printed unqualified is PostgreSQL's own).

use super::catalog::Column;
use super::lexer::{self, Token};
use super::literal::valid_text;

/// What computing a column's default needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultKind {
    /// The same value in any session: a constant PostgreSQL accepts for the column,
    /// `nextval` of a sequence (its privilege is checked with the table's), `gen_random_uuid()`,
    /// `random()`, or the current time into a `timestamptz` column.
    Worker,
    /// The current time or date in another type, or as text: the same value in a session whose
    /// TimeZone, DateStyle and IntervalStyle are the worker's.
    Formats,
    /// Anything else: a user-defined function (it may read settings, the user, …), a built-in
    /// that depends on the session, an expression that may fail (`1/0`), or a constant the
    /// column refuses (`'abc'` into `varchar(2)`). PostgreSQL computes it in the session.
    Session,
}

/// Classifies the default printed as `expr` for `col`; `domain` when the column's type is a
/// domain (whose constraints any default may fail: PostgreSQL checks them in the session).
///
/// The value must also be stored without a conversion that may fail or that depends on a
/// setting: `pg_get_expr` does not print the assignment to the column's type, so only values
/// already of that type (or numbers into a numeric column, checked) are the worker's.
pub fn classify(expr: &str, col: &Column, domain: bool) -> DefaultKind {
    use DefaultKind::{Formats, Session, Worker};
    if domain {
        return Session;
    }
    let Ok(tokens) = lexer::lex(expr, true) else {
        return Session;
    };
    let t = unwrap_parens(&tokens);
    let ty = col.type_name.as_str();
    if let Some((value, cast)) = constant(t) {
        return if constant_fits(value, cast, col) {
            Worker
        } else {
            Session
        };
    }
    let unconstrained = col.typmod < 0;
    if is_call(t, "gen_random_uuid") {
        return if ty == "uuid" { Worker } else { Session };
    }
    if is_call(t, "random") {
        return if ty == "double precision" && unconstrained {
            Worker
        } else {
            Session
        };
    }
    if is_nextval(t) {
        // A sequence beyond a narrower column's range fails there as PostgreSQL's own INSERT
        // would, only later (docs/semantics.md).
        return if matches!(ty, "bigint" | "integer" | "smallint") {
            Worker
        } else {
            Session
        };
    }
    let (base, cast) = split_cast(t);
    if let Some(instant) = clock(unwrap_parens(base)) {
        // Into a date/time type as the clock's own type or cast to the column's, or cast to
        // text into text.
        const TIMES: &[&str] = &[
            "timestamp with time zone",
            "timestamp without time zone",
            "date",
            "time without time zone",
            "time with time zone",
        ];
        let cast_ok = cast.is_none_or(|c| type_text(c) == ty);
        if !cast_ok || !(TIMES.contains(&ty) || (ty == "text" && cast.is_some())) {
            return Session;
        }
        // An instant needs no time zone until it is printed or converted.
        return if instant && cast.is_none() && ty == "timestamp with time zone" {
            Worker
        } else {
            Formats
        };
    }
    Session
}

/// A cast's type as `format_type` prints it (`character varying`, `integer[]`,
/// `public.mood`, `"Mixed"`).
fn type_text(t: &[Token<'_>]) -> String {
    let mut out = String::new();
    let mut after_name = false;
    for tok in t {
        match tok {
            Token::Word(w) => {
                if after_name {
                    out.push(' ');
                }
                out.push_str(w);
                after_name = true;
            }
            Token::QuotedIdent(w) => {
                if after_name {
                    out.push(' ');
                }
                out.push('"');
                out.push_str(&w.replace('"', "\"\""));
                out.push('"');
                after_name = true;
            }
            Token::Number(n) => {
                out.push_str(n);
                after_name = false;
            }
            Token::Punct(c) => {
                out.push(*c);
                after_name = false;
            }
            _ => return String::new(),
        }
    }
    out
}

/// `t` without parentheses around all of it (`(5)`, `(now())`).
fn unwrap_parens<'t, 'a>(mut t: &'t [Token<'a>]) -> &'t [Token<'a>] {
    while let [Token::Punct('('), inner @ .., Token::Punct(')')] = t {
        if !balanced(inner) {
            break;
        }
        t = inner;
    }
    t
}

/// Whether the parentheses of `t` pair up (so `(a) + (b)` is not taken for `(a) + (b)` in one).
fn balanced(t: &[Token<'_>]) -> bool {
    let mut depth = 0i32;
    for tok in t {
        match tok {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// `t` split at a trailing `::type` (the type's tokens only: words, quoted names, dots,
/// a typmod, array brackets).
fn split_cast<'t, 'a>(t: &'t [Token<'a>]) -> (&'t [Token<'a>], Option<&'t [Token<'a>]>) {
    let Some(at) = t.iter().rposition(|x| matches!(x, Token::Op("::"))) else {
        return (t, None);
    };
    let ty = &t[at + 1..];
    let type_token = |x: &Token<'_>| {
        matches!(
            x,
            Token::Word(_)
                | Token::QuotedIdent(_)
                | Token::Number(_)
                | Token::Punct('.' | '(' | ')' | ',' | '[' | ']')
        )
    };
    if ty.is_empty() || !ty.iter().all(type_token) || !balanced(ty) {
        return (t, None);
    }
    (&t[..at], Some(ty))
}

/// A constant as printed: a string or a number, with at most one cast, or `true`/`false`.
/// Returns its text and the cast's tokens.
fn constant<'t, 'a>(t: &'t [Token<'a>]) -> Option<(&'t str, Option<&'t [Token<'a>]>)> {
    let (base, cast) = split_cast(t);
    match unwrap_parens(base) {
        [Token::Str(s)] => Some((s, cast)),
        [Token::Number(n)] => Some((n, cast)),
        [Token::Word(w)] if cast.is_none() && (w == "true" || w == "false") => Some((w, None)),
        _ => None,
    }
}

/// Whether the constant `text` (cast to `cast`, as printed) is stored into `col` as it is,
/// without an error or a conversion that depends on a setting. Cast: only to the column's
/// own type, then checked as the proxy checks a value written for the column when it knows
/// the type, or taken as it is when the column has no length or precision to coerce to. No
/// cast (a number, `true`, `false`): into a column of a type the proxy checks, or a small
/// enough number into a floating-point column.
fn constant_fits(text: &str, cast: Option<&[Token<'_>]>, col: &Column) -> bool {
    let ty = col.type_name.as_str();
    let known = matches!(
        ty,
        "smallint"
            | "integer"
            | "bigint"
            | "numeric"
            | "boolean"
            | "text"
            | "character varying"
            | "uuid"
    );
    match cast {
        Some(c) if type_text(c) != ty => false,
        Some(_) if known => valid_text(text, col),
        Some(_) => col.typmod < 0,
        None if known => valid_text(text, col),
        None => {
            // Neither overflowing nor underflowing the type (both are errors).
            let (least, most) = match ty {
                "real" => (1e-37, 1e38),
                "double precision" => (1e-307, 1e308),
                _ => return false,
            };
            col.typmod < 0
                && text
                    .parse::<f64>()
                    .is_ok_and(|v| v == 0.0 || (least..most).contains(&v.abs()))
        }
    }
}

/// `name()`, PostgreSQL's own (printed unqualified).
fn is_call(t: &[Token<'_>], name: &str) -> bool {
    matches!(t, [Token::Word(w), Token::Punct('('), Token::Punct(')')] if w == name)
}

/// `nextval('sequence'::regclass)`.
fn is_nextval(t: &[Token<'_>]) -> bool {
    matches!(
        t,
        [Token::Word(f), Token::Punct('('), Token::Str(_), Token::Op("::"), Token::Word(r), Token::Punct(')')]
            if f == "nextval" && r == "regclass"
    )
}

/// The current time or date (`now()`, `CURRENT_TIMESTAMP[(p)]`, `LOCALTIME`, …): `Some(true)`
/// for an instant (a `timestamptz`), `Some(false)` for a local date or time.
fn clock(t: &[Token<'_>]) -> Option<bool> {
    const CALLS: &[&str] = &[
        "now",
        "transaction_timestamp",
        "statement_timestamp",
        "clock_timestamp",
    ];
    const KEYWORDS: &[&str] = &[
        "current_timestamp",
        "current_date",
        "current_time",
        "localtimestamp",
        "localtime",
    ];
    let (w, precision) = match t {
        [Token::Word(w), Token::Punct('('), Token::Punct(')')] if CALLS.contains(&&**w) => {
            return Some(true)
        }
        [Token::Word(w)] => (w, false),
        [Token::Word(w), Token::Punct('('), Token::Number(_), Token::Punct(')')] => (w, true),
        _ => return None,
    };
    if !KEYWORDS.contains(&&**w) || (precision && w == "current_date") {
        return None;
    }
    Some(w == "current_timestamp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(type_name: &str, typmod: i32) -> Column {
        let mut c = Column::plain("c", type_name);
        c.typmod = typmod;
        if matches!(type_name, "character varying" | "character") && typmod >= 4 {
            c.max_chars = Some((typmod - 4) as usize);
        }
        c
    }

    fn kind(expr: &str, type_name: &str, typmod: i32) -> DefaultKind {
        classify(expr, &col(type_name, typmod), false)
    }

    const NUMERIC_3_1: i32 = (3 << 16 | 1) + 4;

    #[test]
    fn constants_the_column_takes_are_the_workers() {
        use DefaultKind::Worker;
        assert_eq!(kind("'-5'::integer", "integer", -1), Worker);
        assert_eq!(kind("5", "text", -1), Worker);
        assert_eq!(kind("5", "bigint", -1), Worker);
        assert_eq!(kind("(5)", "integer", -1), Worker);
        assert_eq!(
            kind("'abc'::character varying", "character varying", 7),
            Worker
        );
        assert_eq!(kind("true", "boolean", -1), Worker);
        assert_eq!(
            kind("'ab'::character varying", "character varying", 6),
            Worker
        );
        assert_eq!(kind("'{}'::jsonb", "jsonb", -1), Worker);
        assert_eq!(kind("'{1}'::integer[]", "integer[]", -1), Worker);
        assert_eq!(kind("'x'::public.mood", "public.mood", -1), Worker);
        assert_eq!(kind("'2020-01-01'::date", "date", -1), Worker);
        assert_eq!(kind("0", "double precision", -1), Worker);
        assert_eq!(kind("1e-50", "double precision", -1), Worker);
        assert_eq!(kind("1.5", "real", -1), Worker);
        assert_eq!(kind("12.5", "numeric", NUMERIC_3_1), Worker);
    }

    #[test]
    fn constants_the_column_refuses_are_postgres_to_raise() {
        use DefaultKind::Session;
        assert_eq!(
            kind("'abc'::character varying", "character varying", 6),
            Session
        );
        assert_eq!(kind("40000", "smallint", -1), Session);
        assert_eq!(kind("123.45", "numeric", NUMERIC_3_1), Session);
        assert_eq!(kind("'1.5'::numeric", "bigint", -1), Session);
        // A length or precision the proxy does not check, or a domain's constraints.
        assert_eq!(kind("'abc'::bpchar", "character", 6), Session);
        let c = col("integer", -1);
        assert_eq!(classify("5", &c, true), Session);
        // A cast to another type than the column's: converted (and maybe refused, or
        // printed by the session's settings) when the row is inserted.
        assert_eq!(kind("'1000'::numeric", "double precision", -1), Session);
        assert_eq!(kind("'1e+300'::double precision", "real", -1), Session);
        assert_eq!(kind("'{5000000000}'::bigint[]", "integer[]", -1), Session);
        assert_eq!(kind("(70000)::smallint", "text", -1), Session);
        assert_eq!(
            kind(
                "'2020-01-01 00:00:00'::timestamp without time zone",
                "timestamp with time zone",
                -1
            ),
            Session
        );
        assert_eq!(kind("'x'::character varying(1)", "text", -1), Session);
        assert_eq!(kind("'3000000000'::bigint", "integer", -1), Session);
        assert_eq!(kind("1e400", "double precision", -1), Session);
        assert_eq!(kind("1e-50", "real", -1), Session);
    }

    #[test]
    fn volatile_but_session_independent_built_ins_are_the_workers() {
        use DefaultKind::{Session, Worker};
        assert_eq!(kind("nextval('public.s1'::regclass)", "bigint", -1), Worker);
        assert_eq!(
            kind("nextval('public.s1'::regclass)", "integer", -1),
            Worker
        );
        assert_eq!(kind("gen_random_uuid()", "uuid", -1), Worker);
        assert_eq!(kind("random()", "double precision", -1), Worker);
        assert_eq!(kind("now()", "timestamp with time zone", -1), Worker);
        assert_eq!(
            kind("CURRENT_TIMESTAMP(3)", "timestamp with time zone", -1),
            Worker
        );
        // Into other types the assignment may fail or depend on settings.
        assert_eq!(kind("random()", "numeric", (2 << 16 | 2) + 4), Session);
        assert_eq!(kind("gen_random_uuid()", "text", -1), Session);
        assert_eq!(kind("nextval('public.s1'::regclass)", "text", -1), Session);
        // A domain's constraints may refuse any of them.
        let c = col("bigint", -1);
        assert_eq!(
            classify("nextval('public.s1'::regclass)", &c, true),
            Session
        );
    }

    #[test]
    fn the_time_in_another_type_depends_on_the_formats() {
        use DefaultKind::{Formats, Session};
        assert_eq!(kind("now()", "timestamp without time zone", -1), Formats);
        assert_eq!(kind("CURRENT_DATE", "date", -1), Formats);
        assert_eq!(
            kind("CURRENT_DATE", "timestamp with time zone", -1),
            Formats
        );
        assert_eq!(kind("(now())::date", "date", -1), Formats);
        assert_eq!(kind("(now())::text", "text", -1), Formats);
        assert_eq!(kind("LOCALTIME(0)", "time without time zone", -1), Formats);
        // A local time made an instant with the session's time zone.
        assert_eq!(
            kind("LOCALTIMESTAMP", "timestamp with time zone", -1),
            Formats
        );
        // Text of a length the column may refuse, or converted by assignment.
        assert_eq!(kind("(now())::text", "character varying", 23), Session);
        assert_eq!(kind("now()", "text", -1), Session);
        assert_eq!(
            kind("(now())::date", "timestamp with time zone", -1),
            Session
        );
    }

    #[test]
    fn everything_else_is_the_sessions() {
        use DefaultKind::Session;
        for expr in [
            "public.app_tenant()",
            "app_tenant()",
            "CURRENT_USER",
            "current_setting('app.tenant'::text, true)",
            "getpgusername()",
            "has_table_privilege('t'::text, 'DELETE'::text)",
            "((0.1)::double precision * (3)::double precision)::text",
            "('\\x01'::bytea)::text",
            "(txid_current_if_assigned())::text",
            "(1 / 0)",
            "(now() + '1 day'::interval)",
            "timezone('UTC'::text, now())",
            "('a'::text || 'b'::text)",
            "public.now()",
            "(5) + (6)",
        ] {
            assert_eq!(kind(expr, "text", -1), Session, "{expr}");
        }
    }
}
