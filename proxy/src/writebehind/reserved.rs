//! The words PostgreSQL 15's grammar never takes as a name where the recognized forms expect one.

/// Whether `word` (lower case, unquoted) is one of [`RESERVED`].
pub fn is_reserved(word: &str) -> bool {
    RESERVED.binary_search(&word).is_ok()
}

/// Words never taken as names where the grammar expects one, sorted (binary search): every
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
}
