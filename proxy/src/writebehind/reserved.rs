//! Keyword tables: the words PostgreSQL 15's grammar never takes as a name where the recognized
//! forms expect one, and the lower-case spellings the lexer borrows when it folds a keyword.

use std::sync::LazyLock;

/// Whether `word` (lower case, unquoted) is one of [`RESERVED`].
pub fn is_reserved(word: &str) -> bool {
    candidates(word).any(|(w, reserved)| reserved && w == word)
}

/// `word` (ASCII) folded to lower case, when that is one of [`RESERVED`] or [`COMMON`]: a
/// statement written with upper-case keywords is then lexed without allocating their folding.
pub fn folded_keyword(word: &str) -> Option<&'static str> {
    candidates(word)
        .map(|(w, _)| w)
        .find(|w| w.eq_ignore_ascii_case(word))
}

/// The table words of `word`'s length and first letter (either case), each with whether it
/// is reserved: a lookup compares `word` with one to three words.
fn candidates(word: &str) -> impl Iterator<Item = (&'static str, bool)> {
    static BUCKETS: LazyLock<Vec<Vec<(&'static str, bool)>>> = LazyLock::new(|| {
        let mut buckets = vec![Vec::new(); (LONGEST + 1) * 26];
        for (list, reserved) in [(RESERVED, true), (COMMON, false)] {
            for w in list {
                if let Some(i) = bucket(w) {
                    buckets[i].push((*w, reserved));
                }
            }
        }
        buckets
    });
    bucket(word)
        .and_then(|i| BUCKETS.get(i))
        .into_iter()
        .flatten()
        .copied()
}

/// The bucket of words of `word`'s length and first letter; `None` if no table word can have
/// them.
fn bucket(word: &str) -> Option<usize> {
    let first = word.as_bytes().first()?.to_ascii_lowercase();
    (word.len() <= LONGEST && first.is_ascii_lowercase())
        .then(|| word.len() * 26 + usize::from(first - b'a'))
}

/// No word of the tables is longer.
const LONGEST: usize = 24;

/// Words not in [`RESERVED`] that statements often spell in upper case (what applications and
/// drivers send, pass-through included), sorted.
const COMMON: &[&str] = &[
    "abort",
    "begin",
    "bigint",
    "boolean",
    "by",
    "commit",
    "committed",
    "copy",
    "deallocate",
    "delete",
    "discard",
    "execute",
    "exists",
    "explain",
    "first",
    "if",
    "insert",
    "integer",
    "interval",
    "isolation",
    "last",
    "level",
    "listen",
    "local",
    "notify",
    "nulls",
    "prepare",
    "read",
    "release",
    "repeatable",
    "reset",
    "rollback",
    "savepoint",
    "serializable",
    "session",
    "show",
    "start",
    "text",
    "timestamp",
    "transaction",
    "unlisten",
    "vacuum",
    "varchar",
    "write",
];

/// Words never taken as names where the grammar expects one, sorted: every
/// keyword PostgreSQL 15 reserves (`pg_get_keywords()`, category R) or allows only as a type or
/// function name (T) — `user` is `CURRENT_USER`, `order` a syntax error — and the words that
/// end or change the forms recognized here.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "conflict",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "excluded",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "nothing",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "set",
    "similar",
    "some",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "update",
    "user",
    "using",
    "values",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_words_are_sorted() {
        assert!(RESERVED.windows(2).all(|w| w[0] < w[1]));
        assert!(COMMON.windows(2).all(|w| w[0] < w[1]));
        assert!(COMMON.iter().all(|w| !is_reserved(w)));
        assert!(RESERVED.iter().all(|w| is_reserved(w)));
        assert!(RESERVED
            .iter()
            .chain(COMMON)
            .all(|w| folded_keyword(&w.to_ascii_uppercase()) == Some(*w)));
        assert!(RESERVED
            .iter()
            .chain(COMMON)
            .all(|w| w.len() <= LONGEST && w.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')));
        for word in [
            "user",
            "order",
            "limit",
            "current_user",
            "left",
            "verbose",
            "select",
        ] {
            assert!(is_reserved(word), "{word}");
        }
        // Unreserved and column-name keywords are names PostgreSQL accepts anywhere here.
        for word in ["name", "key", "value", "type", "position", "time", "int"] {
            assert!(!is_reserved(word), "{word}");
        }
    }

    #[test]
    fn keywords_fold_to_their_table_spelling() {
        assert_eq!(folded_keyword("INSERT"), Some("insert"));
        assert_eq!(folded_keyword("Excluded"), Some("excluded"));
        assert_eq!(
            folded_keyword("CURRENT_TIMESTAMP"),
            Some("current_timestamp")
        );
        // Not a keyword of the tables, or longer than any: the lexer allocates the folding.
        assert_eq!(folded_keyword("Counters"), None);
        assert_eq!(folded_keyword(&"X".repeat(LONGEST + 1)), None);
        assert_eq!(folded_keyword(""), None);
    }
}
