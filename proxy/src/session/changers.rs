//! Statements that change session state the write-behind path relies on — name resolution
//! (search_path, temporary tables), identity (role), literal syntax, client encoding, the
//! `writebehind.*` settings —, after which a session's writes are no longer acknowledged from
//! memory. Decided on tokens, so a column named `role` or `temperature` changes nothing.

use crate::writebehind::lexer::Token::{self, Punct, QuotedIdent, Word};

/// Settings whose change (SET, SET LOCAL, RESET) ends acknowledging for the session.
const SETTINGS: &[&str] = &[
    "search_path",
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

/// Whether `sql` changes session state the write-behind path relies on. `stmts` are its
/// statements' tokens, or `None` when it could not be lexed (then any suspicious word counts).
pub fn changes_session(stmts: Option<&[&[Token]]>, sql: &str) -> bool {
    match stmts {
        Some(stmts) => stmts.iter().any(|s| statement_changes(s)),
        None => {
            let lower = sql.to_ascii_lowercase();
            FALLBACK_WORDS.iter().any(|w| lower.contains(w))
        }
    }
}

/// Whether the startup packet's parameters set what the write-behind path relies on: a
/// setting of [`SETTINGS`] given directly or inside `options` (`-c search_path=…`), or a
/// client encoding other than UTF-8.
pub fn startup_changes(params: &[(String, String)]) -> bool {
    params.iter().any(|(name, value)| {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "client_encoding" => {
                let enc: String = value
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect::<String>()
                    .to_ascii_uppercase();
                enc != "UTF8" && enc != "UNICODE"
            }
            "options" => {
                let v = value.to_ascii_lowercase().replace('-', "_");
                SETTINGS.iter().any(|s| v.contains(s)) || v.contains("encoding")
            }
            other => SETTINGS.contains(&other) || other.starts_with("writebehind."),
        }
    })
}

fn statement_changes(t: &[Token]) -> bool {
    let word = |i: usize, w: &str| matches!(t.get(i), Some(Word(x)) if x == w);
    // Anywhere: set_config(…) changes any setting; pg_temp names a temporary schema that can
    // shadow a write-behind table.
    let anywhere = t.iter().enumerate().any(|(i, tok)| match tok {
        Word(w) if w == "set_config" => t.get(i + 1) == Some(&Punct('(')),
        Word(w) | QuotedIdent(w) => w == "pg_temp" || w.starts_with("pg_temp_"),
        _ => false,
    });
    if anywhere {
        return true;
    }
    match t.first() {
        Some(Word(w)) if w == "set" || w == "reset" => {
            if word(1, "session") && word(2, "authorization") {
                return true;
            }
            let at = if word(1, "local") || word(1, "session") {
                2
            } else {
                1
            };
            match t.get(at) {
                Some(Word(name)) => SETTINGS.contains(&name.as_str()),
                // A quoted or unexpected setting name: be conservative.
                _ => true,
            }
        }
        // DISCARD ALL/TEMP/PLANS/SEQUENCES, and DO blocks (their body may SET anything).
        Some(Word(w)) if w == "discard" || w == "do" => true,
        // CREATE [GLOBAL | LOCAL] TEMP[ORARY] …, CREATE OR REPLACE TEMP VIEW …
        Some(Word(w)) if w == "create" => (1..=4).any(|i| word(i, "temp") || word(i, "temporary")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writebehind::lexer;

    fn changes(sql: &str) -> bool {
        match lexer::lex(sql, true) {
            Ok(tokens) => changes_session(Some(&lexer::statements(&tokens)), sql),
            Err(_) => changes_session(None, sql),
        }
    }

    #[test]
    fn session_changes_are_recognized() {
        for sql in [
            "SET search_path = other, public",
            "set search_path to \"$user\"",
            "SET LOCAL search_path = x",
            "SET SESSION search_path = x",
            "RESET search_path",
            "RESET ALL",
            "SET ROLE reader",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION bob",
            "SET standard_conforming_strings = off",
            "SET client_encoding = 'LATIN1'",
            "SET NAMES 'LATIN1'",
            "SET writebehind.sync = on",
            "DISCARD ALL",
            "DISCARD TEMP",
            "CREATE TEMP TABLE counters (id int)",
            "CREATE LOCAL TEMPORARY TABLE t (id int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "CREATE TABLE pg_temp.counters (id int)",
            "SELECT set_config('search_path', 'x', false)",
            "SELECT pg_catalog.set_config('role', 'x', false)",
            "DO $$ BEGIN PERFORM 1; END $$",
            "SELECT 1; SET search_path = x",
            "SET \"search_path\" = x",
            "SET ROLE x; SELECT 'unterminated",
        ] {
            assert!(changes(sql), "{sql}");
        }
    }

    #[test]
    fn startup_parameters_that_change_resolution_or_encoding() {
        let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(startup_changes(&p("options", "-c search_path=app")));
        assert!(startup_changes(&p("options", "--search-path=app")));
        assert!(startup_changes(&p("search_path", "app")));
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
            "CREATE TABLE temperatures (id int)",
            "SELECT * FROM \"do\"",
            "BEGIN",
            "COMMIT",
        ] {
            assert!(!changes(sql), "{sql}");
        }
    }
}
