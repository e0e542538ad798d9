//! `SET`/`RESET writebehind.sync`: the per-session switch to synchronous writes the proxy
//! tracks (only the exact forms; any other way ends acknowledging for the session).

use crate::writebehind::lexer;

/// A change of `writebehind.sync` the proxy tracks.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SyncSetting {
    /// `SET [SESSION] writebehind.sync {=|TO} v` or `RESET writebehind.sync` (= off).
    Session(bool),
    /// `SET LOCAL writebehind.sync …`.
    Local,
}

/// Recognizes the statements of a Query as exactly one change of `writebehind.sync`.
pub(super) fn sync_setting(stmts: &[&[lexer::Token<'_>]]) -> Option<SyncSetting> {
    use lexer::Token::{Number, Op, Punct, Str, Word};
    let [t] = stmts else {
        return None;
    };
    let word = |i: usize, w: &str| matches!(t.get(i), Some(Word(x)) if x == w);
    if word(0, "reset") && t.len() == 4 {
        let name = word(1, "writebehind") && t.get(2) == Some(&Punct('.')) && word(3, "sync");
        return name.then_some(SyncSetting::Session(false));
    }
    if !word(0, "set") {
        return None;
    }
    let (local, at) = match t.get(1) {
        Some(Word(w)) if w == "local" => (true, 2),
        Some(Word(w)) if w == "session" => (false, 2),
        _ => (false, 1),
    };
    let name =
        word(at, "writebehind") && t.get(at + 1) == Some(&Punct('.')) && word(at + 2, "sync");
    let assign = matches!(t.get(at + 3), Some(Op(o)) if *o == "=") || word(at + 3, "to");
    if !name || !assign || t.len() != at + 5 {
        return None;
    }
    if local {
        return Some(SyncSetting::Local);
    }
    let value = match t.get(at + 4)? {
        Word(v) | Str(v) => v.to_ascii_lowercase(),
        Number(v) => v.to_ascii_lowercase(),
        _ => return None,
    };
    // PostgreSQL's boolean spellings (parse_bool), and DEFAULT (off).
    match value.as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(SyncSetting::Session(true)),
        "off" | "false" | "no" | "0" | "f" | "n" | "default" => Some(SyncSetting::Session(false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync_setting(sql: &str) -> Option<SyncSetting> {
        let tokens = lexer::lex(sql, true).ok()?;
        super::sync_setting(&lexer::statements(&tokens))
    }

    #[test]
    fn sync_settings_are_recognized_exactly() {
        let on = Some(SyncSetting::Session(true));
        let off = Some(SyncSetting::Session(false));
        assert_eq!(sync_setting("SET writebehind.sync = on"), on);
        assert_eq!(sync_setting("set session WriteBehind.Sync to 'true';"), on);
        assert_eq!(sync_setting("SET writebehind.sync TO off"), off);
        assert_eq!(sync_setting("SET writebehind.sync = 0"), off);
        assert_eq!(sync_setting("RESET writebehind.sync"), off);
        assert_eq!(sync_setting("SET writebehind.sync = DEFAULT"), off);
        assert_eq!(
            sync_setting("SET LOCAL writebehind.sync = on"),
            Some(SyncSetting::Local)
        );
        for other in [
            "SET writebehind.sync = maybe",
            "SET writebehind.sync = on; SELECT 1",
            "SET \"writebehind.sync\" = on",
            "SET search_path = x",
            "RESET ALL",
        ] {
            assert_eq!(sync_setting(other), None, "{other}");
        }
    }
}
