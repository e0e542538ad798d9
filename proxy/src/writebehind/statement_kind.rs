//! What a statement's kind says about the session around it: whether it starts a transaction
//! that keeps its first snapshot, may change the schema or privileges, or only reads.

use super::lexer::Token;

/// Statement kinds analysed by their names; every other kind (DDL, DO, CALL, EXECUTE, FETCH,
/// MOVE, VACUUM, ANALYZE, …) may read anything.
pub(super) const SCOPED_KINDS: &[&str] = &[
    "select",
    "with",
    "insert",
    "update",
    "delete",
    "merge",
    "values",
    "table",
    "explain",
    "declare",
    "prepare",
    "lock",
    "copy",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "set",
    "show",
    "reset",
    "discard",
    "deallocate",
    "listen",
    "unlisten",
    "notify",
];

/// Whether `t` starts a transaction (or sets one) whose snapshot, taken by its first
/// statement, is kept to its end: BEGIN, START TRANSACTION or SET with REPEATABLE READ or
/// SERIALIZABLE (or `transaction_isolation`).
pub(super) fn snapshot_kept(t: &[Token<'_>]) -> bool {
    let any_word = |w: &str| t.iter().any(|x| matches!(x, Token::Word(y) if y == w));
    matches!(t.first(), Some(Token::Word(k)) if k == "begin" || k == "start" || k == "set")
        && (any_word("repeatable") || any_word("serializable") || any_word("transaction_isolation"))
}

/// Whether one of `stmts` starts (or sets) a transaction that keeps its first snapshot: the
/// session's next statement takes it, and waits for everything acknowledged before it.
pub fn keeps_snapshot(stmts: &[&[Token<'_>]]) -> bool {
    stmts.iter().any(|t| snapshot_kept(t))
}

/// Whether one of `stmts` may change the schema (any kind the analysis does not scope: DDL,
/// DO, CALL, …): the names the catalog classified may be out of date after it.
pub fn may_change_schema(stmts: &[&[Token<'_>]]) -> bool {
    stmts.iter().any(|t| {
        changes_registry(t)
            || match t.first() {
                // EXPLAIN ANALYZE CREATE TABLE … AS, … SELECT … INTO: a table made with no event
                // trigger (so no notification) that may shadow a write-behind table.
                Some(Token::Word(w)) if w == "explain" => t
                    .iter()
                    .any(|x| matches!(x, Token::Word(y) if y == "create" || y == "into")),
                Some(Token::Word(w)) => !SCOPED_KINDS.contains(&&**w),
                Some(Token::Punct('(')) => false,
                _ => true,
            }
    })
}

/// Whether `t` calls `writebehind.enable`, `alter` or `disable`: the catalog changes with
/// the registry, and the session's next write must be checked against the new one.
fn changes_registry(t: &[Token<'_>]) -> bool {
    t.windows(3).any(|w| {
        w[0].is_name("writebehind")
            && w[1] == Token::Punct('.')
            && ["enable", "alter", "disable"]
                .iter()
                .any(|f| w[2].is_name(f))
    })
}

/// Whether one of `stmts` may change who may write a table: GRANT, REVOKE, REASSIGN OWNED,
/// ALTER (an owner, a role) or DROP (OWNED, a role).
pub fn may_change_privileges(stmts: &[&[Token<'_>]]) -> bool {
    const KINDS: &[&str] = &["grant", "revoke", "reassign", "alter", "drop"];
    stmts
        .iter()
        .any(|t| matches!(t.first(), Some(Token::Word(w)) if KINDS.contains(&&**w)))
}

/// Whether every one of `stmts` only reads: it starts with SELECT, TABLE, VALUES or SHOW (or
/// a parenthesis) and names none of the words that write, lock for update or create
/// (INSERT, UPDATE, DELETE, MERGE, INTO, TRUNCATE, COPY). Only such statements skip the wait
/// for tables enabled with `read_barrier => false`: anything that may write such a table
/// waits for its pending changes, which come first in each key's order. (A function called
/// by a SELECT that writes one is not seen.)
pub fn reads_only(stmts: &[&[Token<'_>]]) -> bool {
    const READS: &[&str] = &["select", "table", "values", "show"];
    const WRITES: &[&str] = &[
        "insert", "update", "delete", "merge", "into", "truncate", "copy",
    ];
    !stmts.is_empty()
        && stmts.iter().all(|t| {
            let starts = match t.first() {
                Some(Token::Word(w)) => READS.contains(&&**w),
                Some(Token::Punct('(')) => true,
                _ => false,
            };
            starts
                && !t
                    .iter()
                    .any(|x| matches!(x, Token::Word(w) if WRITES.contains(&&**w)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writebehind::lexer;

    #[test]
    fn schema_changes_are_noticed() {
        let changes = |sql: &str| {
            let tokens = lexer::lex(sql, true).expect("lexes");
            may_change_schema(&lexer::statements(&tokens))
        };
        assert!(changes("CREATE VIEW v AS SELECT 1"));
        assert!(changes("SELECT 1; DROP TABLE x"));
        assert!(changes("DO $$ BEGIN END $$"));
        assert!(!changes("SELECT 1; INSERT INTO t VALUES (1)"));
        assert!(!changes("BEGIN; COMMIT"));
        // EXPLAIN ANALYZE runs these (with no event trigger): tables made.
        assert!(changes(
            "EXPLAIN (ANALYZE) CREATE TEMP TABLE wb AS SELECT 1"
        ));
        assert!(changes("EXPLAIN ANALYZE SELECT 1 INTO s1.wb"));
        assert!(!changes("EXPLAIN SELECT * FROM wb"));
        // The registry: the catalog changes with it.
        assert!(changes("SELECT writebehind.disable('w')"));
        assert!(changes(
            "SELECT \"writebehind\".alter('w', flush_interval => '1 s')"
        ));
        assert!(!changes("SELECT writebehind.flush()"));
    }

    #[test]
    fn a_kept_snapshot_is_noticed() {
        let keeps = |sql: &str| {
            let tokens = lexer::lex(sql, true).expect("lexes");
            keeps_snapshot(&lexer::statements(&tokens))
        };
        assert!(keeps("BEGIN ISOLATION LEVEL REPEATABLE READ"));
        assert!(keeps("BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"));
        assert!(!keeps("BEGIN"));
        assert!(!keeps("SELECT 'repeatable'"));
    }

    #[test]
    fn only_plain_reads_skip_tables_without_a_read_barrier() {
        let reads = |sql: &str| {
            let tokens = lexer::lex(sql, true).expect("lexes");
            reads_only(&lexer::statements(&tokens))
        };
        for sql in [
            "SELECT n FROM c WHERE id = 1",
            "select * from c; show search_path",
            "(SELECT 1) UNION (SELECT 2)",
            "TABLE c",
            "VALUES (1)",
            "SELECT 'update' FROM c",
        ] {
            assert!(reads(sql), "{sql}");
        }
        for sql in [
            "UPDATE c SET n = 100 WHERE id = 1",
            "INSERT INTO c VALUES (1, 1)",
            "SELECT n FROM c FOR UPDATE",
            "SELECT * INTO c2 FROM c",
            "WITH x AS (DELETE FROM c RETURNING *) SELECT * FROM x",
            "SELECT 1; DELETE FROM c",
            "BEGIN",
            "COPY c FROM STDIN",
            "",
        ] {
            assert!(!reads(sql), "{sql}");
        }
    }
}
