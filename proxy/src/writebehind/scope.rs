//! The read barrier's scope: which write-behind tables a passed-through statement may read,
//! from its lexer tokens and the catalog's classification of the database's names.
//!
//! Conservative by construction: a statement whose kind is not known to be harmless, that
//! calls a user-defined function or operator, or that names a view, a foreign table, or a
//! table with triggers, rules, row security or user functions in its expressions, may read
//! anything ([`Scope::All`]). Otherwise only the names that are write-behind tables, or
//! tables linked to them by foreign keys or inheritance, count; string constants (dollar
//! quoted ones included) and comments never do.

use super::lexer::Token;
use super::statement_kind::{snapshot_kept, SCOPED_KINDS};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::BTreeSet;

/// What a statement may read of the write-behind tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// These write-behind tables (by relid), possibly none.
    Tables(BTreeSet<u32>),
    /// Any of them: barrier all.
    All,
}

impl Default for Scope {
    fn default() -> Self {
        Scope::Tables(BTreeSet::new())
    }
}

impl Scope {
    /// Adds what `other` may read.
    pub fn add(&mut self, other: &Scope) {
        match (&mut *self, other) {
            (Scope::All, _) => {}
            (_, Scope::All) => *self = Scope::All,
            (Scope::Tables(a), Scope::Tables(b)) => a.extend(b),
        }
    }

    /// Whether the statement cannot read any write-behind table (no barrier).
    pub fn is_empty(&self) -> bool {
        matches!(self, Scope::Tables(t) if t.is_empty())
    }
}

/// What a relation name may read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NameClass {
    /// A table unrelated to write-behind tables (or a sequence, index of one, …).
    Plain,
    /// A write-behind table, or a table (or index) linked to some: their relids.
    Tables(BTreeSet<u32>),
    /// A view, materialized view, foreign table, or a table whose reading or writing can run
    /// user code (triggers, rules, row security, user functions in defaults, constraints,
    /// indexes, domains), or linked to one.
    Any,
}

impl NameClass {
    /// The class of a name that denotes relations of both classes (in different schemas).
    fn merge(&mut self, other: NameClass) {
        match (&mut *self, other) {
            (NameClass::Any, _) => {}
            (_, NameClass::Any) => *self = NameClass::Any,
            (NameClass::Tables(a), NameClass::Tables(b)) => a.extend(b),
            (s @ NameClass::Plain, o) => *s = o,
            (NameClass::Tables(_), NameClass::Plain) => {}
        }
    }
}

/// One relation as the catalog loader sees it.
#[derive(Debug, Clone)]
pub struct Relation {
    pub relid: u32,
    /// Its name as stored (an unquoted identifier is stored folded).
    pub name: String,
    /// The table it belongs to (its own relid; an index's table).
    pub table: u32,
    /// Reading or writing it can run arbitrary SQL (see [`NameClass::Any`]).
    pub arbitrary: bool,
}

/// The classification of a database's names that the scope analysis uses, loaded with the
/// catalog. Names are unqualified: a name counts for every schema that has it (so
/// `search_path` cannot make a reference escape).
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// False until loaded from a database: then every statement may read anything.
    loaded: bool,
    relations: HashMap<String, NameClass>,
    /// User-defined functions, procedures and aggregates (outside pg_catalog and
    /// information_schema).
    functions: HashSet<String>,
    /// User-defined operators.
    operators: HashSet<String>,
    /// A user-defined operator has a name the grammar reaches through keywords (`LIKE` is
    /// `~~`, `BETWEEN` is `>=` and `<=`, `IN`, `CASE x WHEN`, `NULLIF`, `IS DISTINCT FROM`,
    /// `JOIN … USING` are `=`): a statement with one of [`OPERATOR_WORDS`] may call it.
    keyword_operators: bool,
    /// Write-behind tables whose apply runs user code (triggers, rules): what they write is
    /// unknown, so a statement that reads any relation waits for them.
    side_effects: BTreeSet<u32>,
    /// What COMMIT (END, PREPARE TRANSACTION, SET CONSTRAINTS) may read: the write-behind
    /// tables on either side of a deferrable foreign key (checked then), or all of them when
    /// a deferrable constraint trigger exists. Set by the catalog load.
    pub at_commit: Scope,
}

/// Built-in functions that run SQL (or read a table) given as text.
const RUNS_SQL: &[&str] = &[
    "ts_rewrite",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_fetch",
    "dblink_send_query",
];

/// Operator names the grammar reaches through keywords rather than symbols.
const KEYWORD_OPERATORS: &[&str] = &[
    "~~", "!~~", "~~*", "!~~*", "~", "!~", "=", "<>", "<", ">", "<=", ">=",
];

/// Words that resolve to one of [`KEYWORD_OPERATORS`] by name, through the search path.
const OPERATOR_WORDS: &[&str] = &[
    "like", "ilike", "similar", "between", "in", "distinct", "nullif", "case", "using", "natural",
];

impl Names {
    /// Classifies `relations`. `links` are (table, table) pairs joined by a foreign key or
    /// inheritance; their closure shares write-behind tables and arbitrariness.
    /// `write_behind` are the registered tables.
    pub fn build(
        relations: &[Relation],
        links: &[(u32, u32)],
        write_behind: &[u32],
        functions: impl IntoIterator<Item = String>,
        operators: impl IntoIterator<Item = String>,
    ) -> Self {
        let operators: HashSet<String> = operators.into_iter().collect();
        // Union-find over tables.
        let mut parent: HashMap<u32, u32> = HashMap::new();
        fn find(parent: &mut HashMap<u32, u32>, x: u32) -> u32 {
            let mut root = x;
            while let Some(&p) = parent.get(&root) {
                if p == root {
                    break;
                }
                root = p;
            }
            let mut y = x;
            while y != root {
                let next = parent.get(&y).copied().unwrap_or(root);
                parent.insert(y, root);
                y = next;
            }
            root
        }
        for &(a, b) in links {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                parent.insert(ra, rb);
            }
        }
        let mut wb: HashMap<u32, BTreeSet<u32>> = HashMap::new();
        for &t in write_behind {
            let root = find(&mut parent, t);
            wb.entry(root).or_default().insert(t);
        }
        let mut arbitrary: HashSet<u32> = HashSet::new();
        for r in relations.iter().filter(|r| r.arbitrary) {
            arbitrary.insert(find(&mut parent, r.table));
        }
        let mut side_effects = BTreeSet::new();
        for r in relations.iter().filter(|r| r.arbitrary) {
            if write_behind.contains(&r.table) {
                side_effects.insert(r.table);
            }
        }
        let mut names: HashMap<String, NameClass> = HashMap::new();
        for r in relations {
            let root = find(&mut parent, r.table);
            let class = if arbitrary.contains(&root) {
                NameClass::Any
            } else if let Some(set) = wb.get(&root) {
                NameClass::Tables(set.clone())
            } else {
                NameClass::Plain
            };
            match names.get_mut(&r.name) {
                Some(c) => c.merge(class),
                None => {
                    names.insert(r.name.clone(), class);
                }
            }
        }
        Self {
            loaded: true,
            relations: names,
            functions: functions.into_iter().collect(),
            keyword_operators: operators
                .iter()
                .any(|o| KEYWORD_OPERATORS.contains(&o.as_str())),
            operators,
            side_effects,
            at_commit: Scope::default(),
        }
    }

    /// The scope of a list of statements (a simple Query, or one Parse): the union of theirs.
    pub fn scope(&self, stmts: &[&[Token<'_>]]) -> Scope {
        if !self.loaded {
            return Scope::All;
        }
        let mut scope = Scope::default();
        for t in stmts {
            scope.add(&self.statement(t));
            if scope == Scope::All {
                break;
            }
        }
        scope
    }

    /// The scope of one statement (no semicolon).
    fn statement(&self, t: &[Token<'_>]) -> Scope {
        use Token::{Op, Punct, QuotedIdent, Word};
        let kind = match t.first() {
            Some(Word(w)) => &**w,
            Some(Punct('(')) => "select",
            _ => return Scope::All,
        };
        if !SCOPED_KINDS.contains(&kind) {
            return Scope::All;
        }
        let word = |i: usize, w: &str| matches!(t.get(i), Some(Word(x)) if x == w);
        // A REPEATABLE READ or SERIALIZABLE transaction keeps the snapshot of its first
        // statement, which may read nothing write-behind (`SELECT 1`): everything acknowledged
        // before it starts must be applied before it starts (and, by the session, before
        // that first statement: see [`snapshot_kept`]).
        if snapshot_kept(t) {
            return Scope::All;
        }
        // Deferred constraints are checked when the transaction commits (or when SET
        // CONSTRAINTS makes them immediate): they read what the catalog says they may.
        if matches!(kind, "commit" | "end")
            || (kind == "prepare" && word(1, "transaction"))
            || (kind == "set" && word(1, "constraints"))
        {
            return self.at_commit.clone();
        }
        // COPY (query) TO …: treated as any query would be, but kept simple: all.
        if kind == "copy" && t.get(1) == Some(&Punct('(')) {
            return Scope::All;
        }
        // EXPLAIN [ANALYZE] EXECUTE runs a prepared statement; PREPARE … AS EXECUTE too.
        if matches!(kind, "explain" | "prepare")
            && t.iter().any(|x| matches!(x, Word(w) if w == "execute"))
        {
            return Scope::All;
        }
        let mut tables = BTreeSet::new();
        let mut relation_named = false;
        for (i, tok) in t.iter().enumerate() {
            let name = match tok {
                Word(w) => &**w,
                QuotedIdent(q) => &**q,
                Op(o) if self.operators.contains(*o) => return Scope::All,
                _ => continue,
            };
            let call = t.get(i + 1) == Some(&Punct('('));
            // `x.f` is `f(x)` for a function of x's row type (attribute notation).
            let attribute = i > 0 && t[i - 1] == Punct('.');
            if matches!(tok, Word(w) if w == "operator") && call {
                return Scope::All; // OPERATOR(schema.op)
            }
            // Quoted in lower case, a built-in's name is the same function.
            if (call || attribute) && (self.functions.contains(name) || RUNS_SQL.contains(&name)) {
                return Scope::All;
            }
            if self.keyword_operators && matches!(tok, Word(w) if OPERATOR_WORDS.contains(&&**w)) {
                return Scope::All;
            }
            match self.relations.get(name) {
                Some(NameClass::Any) => return Scope::All,
                Some(NameClass::Tables(s)) => {
                    relation_named = true;
                    tables.extend(s);
                }
                Some(NameClass::Plain) => relation_named = true,
                None => {}
            }
        }
        if relation_named {
            tables.extend(&self.side_effects);
        }
        Scope::Tables(tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writebehind::lexer;

    const WB: u32 = 100;
    const WB2: u32 = 200;

    fn rel(relid: u32, name: &str, table: u32, arbitrary: bool) -> Relation {
        Relation {
            relid,
            name: name.into(),
            table,
            arbitrary,
        }
    }

    /// wb and wb2 are write-behind; wb_pkey is wb's index; child references wb; part inherits
    /// from wb2; "Mixed" (quoted, mixed case) is an index of wb2; other is plain; v is a view;
    /// trig has a trigger; shadow is plain in one schema and a view in another.
    fn names() -> Names {
        Names::build(
            &[
                rel(WB, "wb", WB, false),
                rel(101, "wb_pkey", WB, false),
                rel(102, "child", 102, false),
                rel(WB2, "wb2", WB2, false),
                rel(201, "part", 201, false),
                rel(300, "other", 300, false),
                rel(301, "v", 301, true),
                rel(302, "trig", 302, true),
                rel(303, "Mixed", WB2, false),
                rel(304, "shadow", 304, false),
                rel(305, "shadow", 305, true),
            ],
            &[(102, WB), (201, WB2)],
            &[WB, WB2],
            ["wb_n".to_string(), "Fancy".to_string()],
            ["===".to_string()],
        )
    }

    fn scope(sql: &str) -> Scope {
        let tokens = lexer::lex(sql, true).expect("lexes");
        names().scope(&lexer::statements(&tokens))
    }

    fn tables(ids: &[u32]) -> Scope {
        Scope::Tables(ids.iter().copied().collect())
    }

    #[test]
    fn statements_without_write_behind_names_need_no_barrier() {
        for sql in [
            "SELECT 1",
            "SELECT val FROM other WHERE id = 1",
            "SHOW statement_timeout",
            "SET application_name = 'x'",
            "BEGIN; SELECT * FROM other; COMMIT",
            "SAVEPOINT s; RELEASE s; ROLLBACK",
            "LISTEN ch; NOTIFY ch, 'wb'; UNLISTEN *",
            "DEALLOCATE ALL",
            "SELECT now(), lower('WB')",
            "",
        ] {
            assert_eq!(scope(sql), tables(&[]), "{sql}");
        }
    }

    #[test]
    fn strings_and_comments_do_not_count() {
        for sql in [
            "SELECT 'wb'",
            "SELECT $$SELECT * FROM wb$$",
            "SELECT $q$ wb $q$ FROM other",
            "SELECT E'wb\\n' -- FROM wb",
            "SELECT 1 /* FROM wb /* nested wb */ */",
            "SELECT 'wb'::regclass",
        ] {
            assert_eq!(scope(sql), tables(&[]), "{sql}");
        }
    }

    #[test]
    fn write_behind_names_in_any_spelling_count() {
        for sql in [
            "SELECT n FROM wb",
            "select n from WB",
            "SELECT n FROM public.wb",
            "SELECT n FROM \"public\".\"wb\"",
            "SELECT n FROM PUBLIC . \"wb\" x",
            "SELECT n FROM other JOIN wb USING (id)",
            "TABLE wb",
            "(SELECT 1 FROM wb) UNION SELECT 2",
            "SELECT 1; SELECT * FROM wb",
            "COPY wb TO STDOUT",
            "LOCK TABLE wb",
            "EXPLAIN ANALYZE SELECT * FROM wb",
            "DECLARE c CURSOR FOR SELECT * FROM wb",
        ] {
            assert_eq!(scope(sql), tables(&[WB]), "{sql}");
        }
        // A quoted identifier keeps its case: "WB" is not wb.
        assert_eq!(scope("SELECT * FROM \"WB\""), tables(&[]));
        assert_eq!(scope("SELECT * FROM \"Mixed\""), tables(&[WB2]));
        assert_eq!(scope("SELECT * FROM Mixed"), tables(&[]));
        // An index of wb names wb.
        assert_eq!(scope("SELECT 'x' FROM wb_pkey"), tables(&[WB]));
        // Union over statements.
        assert_eq!(
            scope("SELECT * FROM wb; SELECT * FROM wb2"),
            tables(&[WB, WB2])
        );
    }

    #[test]
    fn transactions_that_keep_a_snapshot_or_check_deferred_constraints() {
        for sql in [
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
            "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET transaction_isolation = 'repeatable read'",
            "SELECT ts_rewrite('a'::tsquery, 'SELECT a, b FROM other')",
        ] {
            assert_eq!(scope(sql), Scope::All, "{sql}");
        }
        for sql in [
            "BEGIN",
            "BEGIN ISOLATION LEVEL READ COMMITTED",
            "COMMIT",
            "END",
        ] {
            assert!(scope(sql).is_empty(), "{sql}");
        }
        let mut n = names();
        n.at_commit = tables(&[WB]);
        fn tokens(sql: &str) -> Vec<lexer::Token<'_>> {
            lexer::lex(sql, true).expect("lexes")
        }
        for sql in [
            "COMMIT",
            "END TRANSACTION",
            "PREPARE TRANSACTION 'x'",
            "SET CONSTRAINTS ALL IMMEDIATE",
        ] {
            let t = tokens(sql);
            assert_eq!(n.scope(&lexer::statements(&t)), tables(&[WB]), "{sql}");
        }
        let t = tokens("ROLLBACK");
        assert!(n.scope(&lexer::statements(&t)).is_empty());
    }

    #[test]
    fn foreign_key_and_inheritance_neighbours_count() {
        assert_eq!(scope("INSERT INTO child VALUES (1, 2)"), tables(&[WB]));
        assert_eq!(scope("SELECT * FROM part"), tables(&[WB2]));
    }

    #[test]
    fn what_may_run_user_code_reads_everything() {
        for sql in [
            "SELECT * FROM v",
            "INSERT INTO trig VALUES (1)",
            "SELECT * FROM shadow",
            "SELECT wb_n(1)",
            "SELECT public.wb_n(1)",
            "SELECT * FROM other o WHERE o.wb_n",
            "SELECT \"Fancy\"(1)",
            "SELECT 1 === 2",
            "SELECT 1 OPERATOR(pg_catalog.+) 2",
            "SELECT query_to_xml('select * from wb', true, true, '')",
            "SELECT \"query_to_xml\"('select * from wb', true, true, '')",
            "SELECT * FROM ts_stat('SELECT v FROM wb')",
            "SELECT count(*) FROM pg_catalog.\"ts_stat\"('SELECT v FROM wb')",
            "DO $$ BEGIN PERFORM * FROM other; END $$",
            "CALL p()",
            "EXECUTE s(1)",
            "EXPLAIN EXECUTE s(1)",
            "FETCH ALL FROM c",
            "MOVE c",
            "COPY (SELECT 1) TO STDOUT",
            "CREATE VIEW x AS SELECT 1",
            "VACUUM other",
            "SELECT 1; CALL p()",
        ] {
            assert_eq!(scope(sql), Scope::All, "{sql}");
        }
        // Over-approximation: a column named like a view makes the statement read everything.
        assert_eq!(scope("SELECT v FROM other"), Scope::All);
        // Only a call is a call: a column named like a function is not.
        assert_eq!(scope("SELECT fancy FROM other"), tables(&[]));
        assert_eq!(scope("SELECT wb_n FROM other"), tables(&[]));
    }

    #[test]
    fn side_effects_of_write_behind_triggers_reach_every_relation() {
        let n = Names::build(
            &[
                rel(WB, "wb", WB, true),
                rel(300, "audit", 300, false),
                rel(400, "wb2", 400, false),
            ],
            &[],
            &[WB, 400],
            [],
            [],
        );
        let s = |sql: &str| {
            let tokens = lexer::lex(sql, true).expect("lexes");
            n.scope(&lexer::statements(&tokens))
        };
        assert_eq!(s("SELECT * FROM audit"), tables(&[WB]));
        assert_eq!(s("SELECT * FROM wb2"), tables(&[WB, 400]));
        assert_eq!(s("SELECT * FROM wb"), Scope::All);
        assert_eq!(s("SELECT 1"), tables(&[]));
    }

    #[test]
    fn names_not_loaded_read_everything() {
        let tokens = lexer::lex("SELECT 1", true).expect("lexes");
        assert_eq!(
            Names::default().scope(&lexer::statements(&tokens)),
            Scope::All
        );
    }

    #[test]
    fn operators_reached_through_keywords() {
        // A user-defined `~~` (LIKE) or `=` may be what LIKE, IN, BETWEEN… call.
        let with = |op: &str| {
            Names::build(
                &[rel(WB, "wb", WB, false), rel(300, "other", 300, false)],
                &[],
                &[WB],
                [],
                [op.to_string()],
            )
        };
        let s = |n: &Names, sql: &str| {
            let tokens = lexer::lex(sql, true).expect("lexes");
            n.scope(&lexer::statements(&tokens))
        };
        for sql in [
            "SELECT id LIKE 2 FROM other",
            "SELECT 1 FROM other WHERE id IN (1, 2)",
            "SELECT 1 FROM other WHERE id BETWEEN 1 AND 2",
            "SELECT CASE id WHEN 1 THEN 2 END FROM other",
            "SELECT nullif(id, 1) FROM other",
            "SELECT 1 FROM other a JOIN other b USING (id)",
        ] {
            assert_eq!(s(&with("~~"), sql), Scope::All, "{sql}");
            assert_eq!(s(&with("==="), sql), tables(&[]), "{sql}");
        }
    }
}
