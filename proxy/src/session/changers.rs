//! Statements that change session state the write-behind path relies on. Name resolution
//! (search_path, SELECT … INTO) is followed: the session's table names are resolved again.
//! Identity (role), literal syntax, client encoding, temporary objects and the `writebehind.*`
//! settings are not: after such a statement a session's writes are no longer acknowledged
//! from memory. Decided
//! on tokens, so a column named `role` or `temperature` changes nothing.

use crate::writebehind::lexer::Token::{self, Punct, QuotedIdent, Word};

/// What a statement does to the write-behind path of its session, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    /// Nothing it relies on.
    None,
    /// Table names may resolve differently: resolve them again.
    Resolution,
    /// Acknowledging is uncertain from now on: the session passes through.
    Disable,
}

/// The setting that decides name resolution (followed, not disabling).
const SEARCH_PATH: &str = "search_path";

/// Settings whose change (SET, SET LOCAL, RESET) ends acknowledging for the session.
const SETTINGS: &[&str] = &[
    "characteristics",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "session_replication_role",
    "role",
    "session_authorization",
    "standard_conforming_strings",
    "backslash_quote",
    "client_encoding",
    "names",
    "writebehind",
    "all",
];

/// Words whose mere presence in text that could not be lexed ends acknowledging (the
/// conservative fallback).
const FALLBACK_WORDS: &[&str] = &[
    "search_path",
    "pg_settings",
    "read_only",
    "characteristics",
    "replication_role",
    "role",
    "authorization",
    "writebehind",
    "temp",
    "discard",
    "reset",
    "standard_conforming_strings",
    "backslash_quote",
    "encoding",
    "names",
    "set_config",
    "do",
];

/// What `sql` does to session state the write-behind path relies on. `stmts` are its
/// statements' tokens, or `None` when it could not be lexed (then any suspicious word
/// disables).
pub fn effect(stmts: Option<&[&[Token<'_>]]>, sql: &str) -> Effect {
    match stmts {
        Some(stmts) => stmts
            .iter()
            .map(|s| statement_effect(s))
            .max()
            .unwrap_or(Effect::None),
        None => {
            let lower = sql.to_ascii_lowercase();
            if FALLBACK_WORDS.iter().any(|w| lower.contains(w)) {
                Effect::Disable
            } else {
                Effect::None
            }
        }
    }
}

/// Whether `sql` (its statements' tokens, or `None` when it could not be lexed) runs LISTEN.
pub fn listens(stmts: Option<&[&[Token<'_>]]>, sql: &str) -> bool {
    match stmts {
        Some(stmts) => stmts
            .iter()
            .any(|t| matches!(t.first(), Some(Word(w)) if w == "listen")),
        None => sql.to_ascii_lowercase().contains("listen"),
    }
}

/// Prepared statements a Query drops by SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deallocated {
    /// `DEALLOCATE ALL` (or what could not be told apart from it).
    All,
    /// `DEALLOCATE [PREPARE] name`, per statement.
    Names(Vec<String>),
}

/// What the statements of `sql` deallocate (`None`: nothing). `stmts` are its statements'
/// tokens, or `None` when it could not be lexed (then a mention of `deallocate` counts as
/// `ALL`).
pub fn deallocated(stmts: Option<&[&[Token<'_>]]>, sql: &str) -> Option<Deallocated> {
    let Some(stmts) = stmts else {
        return sql
            .to_ascii_lowercase()
            .contains("deallocate")
            .then_some(Deallocated::All);
    };
    let mut names = Vec::new();
    for t in stmts {
        if !matches!(t.first(), Some(Word(w)) if w == "deallocate") {
            continue;
        }
        let at = if matches!(t.get(1), Some(Word(w)) if w == "prepare") {
            2
        } else {
            1
        };
        match t.get(at) {
            Some(Word(w)) if w == "all" => return Some(Deallocated::All),
            Some(Word(name) | QuotedIdent(name)) => names.push(name.to_string()),
            _ => return Some(Deallocated::All),
        }
    }
    (!names.is_empty()).then_some(Deallocated::Names(names))
}

/// Whether the startup packet's parameters set what the write-behind path relies on and does
/// not follow: a setting of [`SETTINGS`] given directly or inside `options` (`-c role=…`), or
/// a client encoding other than UTF-8. A startup search_path is followed like any other.
pub fn startup_changes(params: &[(String, String)]) -> bool {
    params.iter().any(|(name, value)| {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "client_encoding" => !is_utf8(value),
            "options" => {
                let v = value.to_ascii_lowercase().replace('-', "_");
                SETTINGS.iter().any(|s| v.contains(s)) || v.contains("encoding")
            }
            other => SETTINGS.contains(&other) || other.starts_with("writebehind."),
        }
    })
}

/// Whether a setting PostgreSQL reported (ParameterStatus: at startup, after SET, after
/// `set_config()` or an UPDATE of `pg_settings`, from role and database defaults) is one the
/// write-behind path cannot follow: an encoding other than UTF-8 (the proxy validates and
/// ships text as UTF-8), `standard_conforming_strings` off (the lexer reads literals the
/// standard way), a read-only default for transactions, or a standby.
pub fn reported_setting_unsafe(name: &str, value: &str) -> bool {
    match name {
        "server_encoding" | "client_encoding" => !is_utf8(value),
        "standard_conforming_strings" => value != "on",
        "default_transaction_read_only" | "in_hot_standby" => value == "on",
        _ => false,
    }
}

/// Whether an encoding name is UTF-8 however it is spelled (`UTF8`, `utf-8`, `Unicode`).
fn is_utf8(name: &str) -> bool {
    let enc: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_uppercase();
    enc == "UTF8" || enc == "UNICODE"
}

/// The name and value of a ParameterStatus message (whole, type byte included).
pub fn parameter_status(msg: &[u8]) -> Option<(&str, &str)> {
    let body = msg.get(5..)?;
    let mut parts = body.split(|b| *b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

fn statement_effect(t: &[Token<'_>]) -> Effect {
    let word = |i: usize, w: &str| matches!(t.get(i), Some(Word(x)) if x == w);
    // Anywhere: set_config(…) changes the setting it names, also written "set_config"(…).
    let set_config = t
        .iter()
        .enumerate()
        .filter(|(i, tok)| tok.is_name("set_config") && t.get(i + 1) == Some(&Punct('(')))
        .any(|(i, _)| set_config_effect(t.get(i + 2..).unwrap_or_default()) == Effect::Disable);
    // UPDATE pg_settings SET setting = … runs set_config() through the view's rule.
    let pg_settings_update =
        t.iter().any(|tok| tok.is_name("update")) && t.iter().any(|tok| tok.is_name("pg_settings"));
    if set_config || pg_settings_update {
        return Effect::Disable;
    }
    let own = match t.first() {
        Some(Word(w)) if w == "set" || w == "reset" => {
            if word(1, "session") && word(2, "authorization") {
                return Effect::Disable;
            }
            let at = if word(1, "local") || word(1, "session") {
                2
            } else {
                1
            };
            match t.get(at) {
                Some(Word(name)) if name == SEARCH_PATH => Effect::Resolution,
                Some(Word(name)) if SETTINGS.contains(&&**name) => Effect::Disable,
                Some(Word(_)) => Effect::None,
                // A quoted or unexpected setting name: be conservative.
                _ => Effect::Disable,
            }
        }
        // DISCARD TEMP drops temporary tables; DISCARD ALL resets every setting and the role.
        Some(Word(w)) if w == "discard" => {
            if word(1, "temp") || word(1, "temporary") {
                Effect::Resolution
            } else if word(1, "plans") || word(1, "sequences") {
                Effect::None
            } else {
                Effect::Disable
            }
        }
        // DO blocks: their body may SET anything.
        Some(Word(w)) if w == "do" => Effect::Disable,
        // EXPLAIN ANALYZE runs a CREATE TABLE … AS or SELECT … INTO as they are (with no
        // event trigger): a temporary table, or one that may shadow a table by name.
        Some(Word(w)) if w == "explain" => {
            let any = |words: &[&str]| {
                t.iter()
                    .any(|tok| matches!(tok, Word(x) if words.contains(&&**x)))
            };
            if !any(&["create", "into"]) {
                Effect::None
            } else if any(&["temp", "temporary"]) {
                Effect::Disable
            } else {
                Effect::Resolution
            }
        }
        // CREATE [GLOBAL | LOCAL] TEMP[ORARY] …, CREATE OR REPLACE TEMP VIEW …: temporary
        // objects shadow tables and are unknown to the catalog the barrier's scope is read
        // from (a temporary view may read a write-behind table).
        Some(Word(w))
            if w == "create" && (1..=4).any(|i| word(i, "temp") || word(i, "temporary")) =>
        {
            Effect::Disable
        }
        // SELECT … INTO [TEMP] t: creates a table (a temporary one as above; a plain one may
        // shadow a table of the same name further down the search_path).
        Some(Word(w)) if ["select", "with", "table", "values"].contains(&&**w) => match t
            .iter()
            .position(|tok| matches!(tok, Word(x) if x == "into"))
        {
            Some(at) if (1..=2).any(|i| word(at + i, "temp") || word(at + i, "temporary")) => {
                Effect::Disable
            }
            Some(_) => Effect::Resolution,
            None => Effect::None,
        },
        _ => Effect::None,
    };
    // pg_temp names the temporary schema: what is made there is temporary (as above).
    let temp_schema = t.iter().any(|tok| match tok {
        Word(w) | QuotedIdent(w) => w == "pg_temp" || w.starts_with("pg_temp_"),
        _ => false,
    });
    if temp_schema {
        Effect::Disable
    } else {
        own
    }
}

/// What a `set_config(` call does, from the tokens after its parenthesis: a setting named by
/// a string constant the path does not rely on changes nothing (asyncpg calls
/// `set_config('jit', 'off', false)` around its type introspection); `search_path`, the
/// settings of [`SETTINGS`], `writebehind.*`, or a name computed any other way disable.
fn set_config_effect(args: &[Token<'_>]) -> Effect {
    let [Token::Str(name), Punct(','), ..] = args else {
        return Effect::Disable;
    };
    let name = name.to_ascii_lowercase();
    let relied_on = match name.split_once('.') {
        Some((prefix, _)) => prefix == "writebehind",
        None => name == SEARCH_PATH || SETTINGS.contains(&name.as_str()),
    };
    if relied_on {
        Effect::Disable
    } else {
        Effect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writebehind::lexer;

    fn deallocated_by(sql: &str) -> Option<Deallocated> {
        match lexer::lex(sql, true) {
            Ok(tokens) => deallocated(Some(&lexer::statements(&tokens)), sql),
            Err(_) => deallocated(None, sql),
        }
    }

    #[test]
    fn listen_is_recognized() {
        let listens_in = |sql: &str| match lexer::lex(sql, true) {
            Ok(tokens) => listens(Some(&lexer::statements(&tokens)), sql),
            Err(_) => listens(None, sql),
        };
        assert!(listens_in("LISTEN wake"));
        assert!(listens_in("SELECT 1; listen \"Wake\""));
        assert!(!listens_in("SELECT 'listen'"));
        assert!(!listens_in("UNLISTEN *"));
    }

    #[test]
    fn deallocations_are_recognized() {
        let names = |n: &[&str]| {
            Some(Deallocated::Names(
                n.iter().map(|s| s.to_string()).collect(),
            ))
        };
        assert_eq!(deallocated_by("DEALLOCATE w"), names(&["w"]));
        assert_eq!(deallocated_by("deallocate prepare \"W\""), names(&["W"]));
        assert_eq!(
            deallocated_by("DEALLOCATE W; SELECT 1; DEALLOCATE x"),
            names(&["w", "x"])
        );
        assert_eq!(deallocated_by("DEALLOCATE ALL"), Some(Deallocated::All));
        assert_eq!(
            deallocated_by("DEALLOCATE PREPARE ALL"),
            Some(Deallocated::All)
        );
        assert_eq!(deallocated_by("SELECT 'deallocate w'"), None);
        assert_eq!(deallocated_by("SELECT 1"), None);
        // Not lexed with certainty: any mention counts as all.
        assert_eq!(
            deallocated_by("DEALLOCATE w; SELECT $$"),
            Some(Deallocated::All)
        );
    }

    fn effect_of(sql: &str) -> Effect {
        match lexer::lex(sql, true) {
            Ok(tokens) => effect(Some(&lexer::statements(&tokens)), sql),
            Err(_) => effect(None, sql),
        }
    }

    #[test]
    fn name_resolution_changes_are_followed() {
        for sql in [
            "SET search_path = other, public",
            "set search_path to \"$user\"",
            "SET LOCAL search_path = x",
            "SET SESSION search_path = x",
            "RESET search_path",
            "DISCARD TEMP",
            "SELECT 1 AS id INTO counters",
            "WITH x AS (SELECT 1) SELECT * INTO app.counters FROM x",
            "SELECT 1; SET search_path = x",
        ] {
            assert_eq!(effect_of(sql), Effect::Resolution, "{sql}");
        }
    }

    #[test]
    fn session_changes_are_recognized() {
        for sql in [
            "RESET ALL",
            "SET ROLE reader",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION bob",
            "SET standard_conforming_strings = off",
            "SET client_encoding = 'LATIN1'",
            "SET NAMES 'LATIN1'",
            "SET writebehind.sync = on",
            "DISCARD ALL",
            "DISCARD",
            "CREATE TEMP TABLE counters (id int)",
            "CREATE LOCAL TEMPORARY TABLE t (id int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "CREATE TABLE pg_temp.counters (id int)",
            "SELECT 1 AS id, 0 AS n INTO TEMP counters",
            "SELECT 1 AS id INTO TEMPORARY TABLE counters",
            "EXPLAIN (ANALYZE) CREATE TEMP TABLE wb AS SELECT 1 AS id",
            "EXPLAIN ANALYZE SELECT 1 AS id INTO TEMP wb",
            "SELECT set_config('search_path', 'x', false)",
            "SELECT pg_catalog.set_config('role', 'x', false)",
            "DO $$ BEGIN PERFORM 1; END $$",
            "SET search_path = x; SET ROLE y",
            "SET \"search_path\" = x",
            "SET ROLE x; SELECT 'unterminated",
            "SELECT \"set_config\"('search_path', 'x', false)",
            "UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'",
            "update pg_catalog.\"pg_settings\" set setting = 'off' where name = 'standard_conforming_strings'",
            "SET default_transaction_read_only = on",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET session_replication_role = replica",
            "SELECT set_config('ROLE', 'x', false)",
            "SELECT set_config('writebehind.sync', 'on', false)",
            "SELECT set_config($1, 'x', false)",
            "SELECT set_config('search' || '_path', 'x', false)",
            "SELECT set_config('jit', 'off', false), set_config('role', 'x', false)",
            "SELECT set_config(name, 'x', false) FROM t",
        ] {
            assert_eq!(effect_of(sql), Effect::Disable, "{sql}");
        }
        // Settings the path does not rely on, named by a constant (asyncpg's introspection).
        for sql in [
            "SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new",
            "SELECT set_config('jit', $1, false)",
            "SELECT set_config('myapp.user_id', '42', true)",
            "SELECT set_config('statement_timeout', '5s', false)",
        ] {
            assert_eq!(effect_of(sql), Effect::None, "{sql}");
        }
        assert_eq!(
            effect_of("SELECT name, setting FROM pg_settings WHERE name = 'search_path'"),
            Effect::None,
            "reading pg_settings changes nothing"
        );
        // A table made by EXPLAIN ANALYZE may shadow one by name; a plain EXPLAIN makes none.
        assert_eq!(
            effect_of("EXPLAIN (ANALYZE) SELECT id INTO s1.wb FROM public.wb"),
            Effect::Resolution
        );
        assert_eq!(effect_of("EXPLAIN SELECT * FROM wb"), Effect::None);
    }

    #[test]
    fn reported_settings_the_path_cannot_follow() {
        for (name, value) in [
            ("server_encoding", "LATIN1"),
            ("server_encoding", "SQL_ASCII"),
            ("client_encoding", "WIN1252"),
            ("standard_conforming_strings", "off"),
            ("default_transaction_read_only", "on"),
            ("in_hot_standby", "on"),
        ] {
            assert!(reported_setting_unsafe(name, value), "{name} = {value}");
        }
        for (name, value) in [
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("standard_conforming_strings", "on"),
            ("default_transaction_read_only", "off"),
            ("application_name", "x"),
            ("TimeZone", "UTC"),
        ] {
            assert!(!reported_setting_unsafe(name, value), "{name} = {value}");
        }
        assert_eq!(
            parameter_status(b"S\0\0\0\x1bclient_encoding\0UTF8\0"),
            Some(("client_encoding", "UTF8"))
        );
    }

    #[test]
    fn startup_parameters_that_change_resolution_or_encoding() {
        let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(!startup_changes(&p("options", "-c search_path=app")));
        assert!(!startup_changes(&p("options", "--search-path=app")));
        assert!(!startup_changes(&p("search_path", "app")));
        assert!(startup_changes(&p("options", "-c role=app")));
        assert!(startup_changes(&p("client_encoding", "LATIN1")));
        assert!(startup_changes(&p("writebehind.sync", "on")));
        assert!(!startup_changes(&p("client_encoding", "UTF8")));
        assert!(!startup_changes(&p("client_encoding", "utf-8")));
        assert!(!startup_changes(&p("options", "-c statement_timeout=5s")));
        assert!(!startup_changes(&p("application_name", "role-service")));
    }

    #[test]
    fn ordinary_statements_change_nothing() {
        for sql in [
            "SELECT role, temperature, reset_at FROM readings WHERE role = 'admin'",
            "UPDATE users SET role = 'admin' WHERE id = 1",
            "INSERT INTO t (names, encoding) VALUES ('a', 'b')",
            "SELECT 'SET search_path = x'",
            "SET TIME ZONE 'UTC'",
            "SET statement_timeout = '5s'",
            "SET application_name = 'app'",
            "DISCARD PLANS",
            "CREATE TABLE temperatures (id int)",
            "SELECT * FROM \"do\"",
            "BEGIN",
            "COMMIT",
        ] {
            assert_eq!(effect_of(sql), Effect::None, "{sql}");
        }
    }
}
