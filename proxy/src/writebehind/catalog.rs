//! The catalog of write-behind tables of one database, loaded through the proxy's own
//! connection from the extension's registry and pg_catalog, with the classification of the
//! database's names that scopes the read barrier.

use super::defaults::{self, DefaultKind};
use super::scope::{Names, Relation, Scope};
use crate::ship::FlushSchedule;
use foldhash::HashMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// One column of a write-behind table.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// Base type name (`format_type(atttypid, NULL)`), e.g. `integer`, `character varying`.
    pub type_name: String,
    /// `character varying(n)` / `character(n)` length limit, if any.
    pub max_chars: Option<usize>,
    /// NOT NULL, or of a domain (at any depth) with NOT NULL or a CHECK constraint, which a
    /// NULL may fail: an INSERT that leaves it NULL passes through.
    pub not_null: bool,
    pub has_default: bool,
    /// `atttypmod` (-1 when unconstrained), e.g. precision and scale of `numeric(p,s)`.
    pub typmod: i32,
    /// A generated or `GENERATED ALWAYS AS IDENTITY` column: only `DEFAULT` may be written.
    pub default_only: bool,
    /// Its collation is nondeterministic (e.g. case-insensitive ICU): values with different
    /// text may be equal, so the text cannot identify a key.
    pub nondeterministic: bool,
    /// PostgreSQL must compute its default in the writer's session ([`DefaultKind::Session`]:
    /// it may depend on the session, call user code, or fail): an INSERT that leaves it to
    /// its default passes through. A column without a default of its own whose domain has
    /// one counts too (the domain's default is not classified).
    pub session_default: bool,
    /// Its default may depend on TimeZone, DateStyle or IntervalStyle (`current_date`,
    /// `now()` into a `timestamp` column, a value printed as text, …): the worker computes it
    /// with the catalog's [`formats`](Catalog::formats), so a session whose settings differ
    /// has such an INSERT pass through.
    pub format_default: bool,
}

/// One registered table.
#[derive(Debug, Clone)]
pub struct Table {
    pub relid: u32,
    pub schema: String,
    pub name: String,
    pub append: bool,
    /// Statements that read the table wait for its pending writes (`read_barrier => true`).
    pub read_barrier: bool,
    pub key: Vec<String>,
    pub columns: Vec<Column>,
    /// The longest an acknowledged change of the table waits before it ships
    /// (`writebehind.tables.flush_interval`; the flusher's deadline, see `ship::flusher`).
    pub flush_interval: Duration,
    /// `writebehind.tables.max_batch_rows`: loaded for the admin console, not used by the
    /// proxy (its own `max_batch_rows` caps every batch; docs/operations.md).
    pub max_batch_rows: usize,
    /// Row-level security is on (`relrowsecurity`; enable() refuses such tables, but it can be
    /// turned on afterwards): policies depend on the role and the rows, which only PostgreSQL
    /// can judge, and the worker writes as the table's owner. No write is acknowledged.
    pub row_security: bool,
    /// The table has rules (`relhasrules`): they rewrite the statement (a `DO INSTEAD` changes
    /// the command tag), and the worker's `INSERT … ON CONFLICT` is refused on a table with
    /// INSERT or UPDATE rules (0A000). No write is acknowledged.
    pub rules: bool,
    /// The table has inheritance children (`relhassubclass`): an UPDATE or DELETE of the
    /// parent writes their rows too. Only INSERTs are acknowledged.
    pub children: bool,
    /// Its columns that foreign keys of write-behind tables (itself included) reference. The
    /// worker applies tables parents first, and a table's changes by step and key rather
    /// than in acknowledgement order, so a DELETE of such a row (and its cascades), or a
    /// change of such a column, could apply before the children's earlier changes that free
    /// or move them: those pass through, after the barrier has applied what is pending.
    pub referenced: Vec<String>,
    /// `on_conflict = 'upsert'`: the worker turns an INSERT of an existing key into an
    /// update, so a plain INSERT needs the UPDATE privilege too.
    pub upsert: bool,
}

impl Column {
    /// A nullable column of `type_name` with no default, length limit or typmod.
    pub fn plain(name: &str, type_name: &str) -> Self {
        Self {
            name: name.into(),
            type_name: type_name.into(),
            max_chars: None,
            not_null: false,
            has_default: false,
            typmod: -1,
            default_only: false,
            nondeterministic: false,
            session_default: false,
            format_default: false,
        }
    }
}

impl Table {
    /// A keyed table `schema.name` (relid 1, read barrier on) with the key and columns given.
    pub fn keyed(schema: &str, name: &str, key: &[&str], columns: Vec<Column>) -> Self {
        Self {
            relid: 1,
            schema: schema.into(),
            name: name.into(),
            append: false,
            read_barrier: true,
            key: key.iter().map(|k| k.to_string()).collect(),
            columns,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
            row_security: false,
            rules: false,
            children: false,
            referenced: Vec::new(),
            upsert: true,
        }
    }

    /// `schema.name`, as the admin console and /metrics show it.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// `writebehind.enable`'s default `flush_interval`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// `writebehind.enable`'s default `max_batch_rows`.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 10_000;

/// The settings that decide how values print and which day it is, in [`Formats`] order
/// (all three are reported by PostgreSQL in ParameterStatus).
pub const FORMAT_SETTINGS: [&str; 3] = ["TimeZone", "DateStyle", "IntervalStyle"];

/// A session's [`FORMAT_SETTINGS`] (`None` until reported).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Formats(pub [Option<String>; 3]);

/// The registered tables of a database.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: Vec<Table>,
    by_name: HashMap<(String, String), usize>,
    /// What each relation, function and operator name may read (the barrier's scope).
    pub names: Names,
    /// Loads are numbered in the order they started: a later one is never replaced by an
    /// earlier one that finished after it.
    pub ticket: u64,
    /// TimeZone, DateStyle and IntervalStyle as a session of the proxy's own role sees them
    /// by default: what the apply worker computes defaults with (see
    /// [`Column::format_default`]).
    pub formats: Formats,
}

/// The query that loads the catalog: one row per column of every registered table.
pub const LOAD_SQL: &str = "
    SELECT c.oid::int8, n.nspname::text, c.relname::text, t.mode, t.key_columns,
           a.attname::text, format_type(a.atttypid, NULL), a.atttypmod,
           a.attnotnull OR dom.refuses_null,
           a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
           a.attgenerated <> '' OR a.attidentity = 'a', t.read_barrier,
           (extract(epoch FROM t.flush_interval) * 1e6)::int8, t.max_batch_rows,
           COALESCE((SELECT NOT co.collisdeterministic FROM pg_collation co
                      WHERE co.oid = a.attcollation), false),
           c.relrowsecurity,
           NOT a.atthasdef AND dom.has_default,
           c.relhasrules, c.relhassubclass,
           ARRAY(SELECT DISTINCT ra.attname::text
                   FROM pg_constraint co
                   JOIN writebehind.tables rt ON rt.relid = co.conrelid
                   CROSS JOIN unnest(co.confkey) AS k(attnum)
                   JOIN pg_attribute ra ON ra.attrelid = c.oid AND ra.attnum = k.attnum
                  WHERE co.contype = 'f' AND co.confrelid = c.oid),
           (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
             WHERE d.adrelid = c.oid AND d.adnum = a.attnum AND a.attgenerated = ''),
           t.on_conflict = 'upsert',
           (SELECT ty.typtype = 'd' FROM pg_type ty WHERE ty.oid = a.atttypid)
      FROM writebehind.tables t
      JOIN pg_class c ON c.oid = t.relid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     -- The column's domains, at any depth: whether one refuses NULL (NOT NULL, or a CHECK a
     -- NULL may fail) and whether one has a default.
     CROSS JOIN LATERAL (
        WITH RECURSIVE chain(oid) AS (
            SELECT a.atttypid
            UNION ALL
            SELECT ty.typbasetype FROM pg_type ty JOIN chain ON ty.oid = chain.oid
             WHERE ty.typtype = 'd')
        SELECT COALESCE(bool_or(ty.typnotnull
                                OR EXISTS (SELECT 1 FROM pg_constraint k WHERE k.contypid = ty.oid)),
                        false) AS refuses_null,
               COALESCE(bool_or(ty.typdefaultbin IS NOT NULL), false) AS has_default
          FROM chain JOIN pg_type ty ON ty.oid = chain.oid
         WHERE ty.typtype = 'd') dom
     ORDER BY c.oid, a.attnum";

/// Schemas whose relations, functions and operators are PostgreSQL's own.
const SYSTEM_SCHEMAS: &str = "('pg_catalog', 'information_schema', 'pg_toast')";

/// One row per relation name outside the system schemas: (relid, name, its table, whether
/// reading or writing it can run arbitrary SQL). Arbitrary: views, materialized views,
/// foreign tables; tables with triggers other than the internal ones of constraints, with
/// rules, with row security, with columns of a user-defined domain (or array of one), or
/// whose defaults, generated columns, constraints, indexes or policies use a user-defined
/// function. An index counts as its table.
fn relations_sql() -> String {
    format!(
        "WITH user_fn AS (
            SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname NOT IN {SYSTEM_SCHEMAS}),
         uses_fn AS (
            SELECT COALESCE(ad.adrelid, co.conrelid, ix.indrelid, po.polrelid) AS rel
              FROM pg_depend d
              LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
              LEFT JOIN pg_constraint co ON d.classid = 'pg_constraint'::regclass AND co.oid = d.objid
              LEFT JOIN pg_index ix ON d.classid = 'pg_class'::regclass AND ix.indexrelid = d.objid
              LEFT JOIN pg_policy po ON d.classid = 'pg_policy'::regclass AND po.oid = d.objid
             WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid IN (SELECT oid FROM user_fn))
         SELECT c.oid::int8, c.relname::text, COALESCE(i.indrelid, c.oid)::int8,
                c.relkind IN ('v', 'm', 'f') OR c.relhasrules OR c.relrowsecurity
                OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
                OR c.oid IN (SELECT rel FROM uses_fn WHERE rel IS NOT NULL)
                OR EXISTS (SELECT 1 FROM pg_attribute a
                             JOIN pg_type ty ON ty.oid = a.atttypid
                             LEFT JOIN pg_type el ON el.oid = ty.typelem
                            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                              AND ((ty.typtype = 'd' AND ty.typnamespace::regnamespace::text NOT IN {SYSTEM_SCHEMAS})
                                OR (el.typtype = 'd' AND el.typnamespace::regnamespace::text NOT IN {SYSTEM_SCHEMAS})))
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_index i ON i.indexrelid = c.oid
          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'i', 'I', 'S')
            AND n.nspname NOT IN {SYSTEM_SCHEMAS}"
    )
}

/// Pairs of tables linked by a foreign key or by inheritance (partitions included), and
/// sequences with the tables that draw from them.
/// Deferrable foreign keys (child, parent, false) and deferrable constraint triggers
/// (table, table, true): what a COMMIT may check.
const DEFERRED_SQL: &str = "
    SELECT conrelid::int8, confrelid::int8, false FROM pg_constraint
     WHERE contype = 'f' AND condeferrable
    UNION ALL
    SELECT tgrelid::int8, tgrelid::int8, true FROM pg_trigger
     WHERE tgdeferrable AND NOT tgisinternal";

const LINKS_SQL: &str = "
    SELECT conrelid::int8, confrelid::int8 FROM pg_constraint WHERE contype = 'f'
    UNION ALL
    SELECT inhrelid::int8, inhparent::int8 FROM pg_inherits
    UNION ALL
    -- A sequence and the table that draws from it (a column default's nextval, serial or
    -- identity): reading the sequence reads what the table's inserts did to it.
    SELECT d.refobjid::int8, ad.adrelid::int8 FROM pg_depend d
      JOIN pg_attrdef ad ON ad.oid = d.objid
     WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass
    UNION ALL
    SELECT d.objid::int8, d.refobjid::int8 FROM pg_depend d
      JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
     WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.deptype IN ('a', 'i')";

/// Names of user-defined functions, procedures and aggregates, and of user-defined operators.
fn routines_sql() -> String {
    format!(
        "SELECT DISTINCT p.proname::text, true FROM pg_proc p
           JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT IN {SYSTEM_SCHEMAS}
         UNION
         SELECT DISTINCT o.oprname::text, false FROM pg_operator o
           JOIN pg_namespace n ON n.oid = o.oprnamespace WHERE n.nspname NOT IN {SYSTEM_SCHEMAS}"
    )
}

impl Catalog {
    /// Loads the catalog; an error means the extension is not usable in this database.
    /// `ticket` numbers the load (see [`Catalog::ticket`]).
    pub async fn load(
        client: &tokio_postgres::Client,
        ticket: u64,
    ) -> Result<Self, tokio_postgres::Error> {
        let rows = client.query(LOAD_SQL, &[]).await?;
        let mut tables: Vec<Table> = Vec::new();
        for r in rows {
            let relid = r.try_get::<_, i64>(0)? as u32;
            if tables.last().map(|t| t.relid) != Some(relid) {
                tables.push(Table {
                    relid,
                    schema: r.try_get(1)?,
                    name: r.try_get(2)?,
                    append: r.try_get::<_, String>(3)? == "append",
                    read_barrier: r.try_get(11)?,
                    key: r.try_get(4)?,
                    columns: Vec::new(),
                    // enable() and alter() refuse intervals <= 0 and batch sizes < 1.
                    flush_interval: Duration::from_micros(
                        u64::try_from(r.try_get::<_, i64>(12)?).unwrap_or(0),
                    ),
                    max_batch_rows: usize::try_from(r.try_get::<_, i32>(13)?).unwrap_or(1),
                    row_security: r.try_get(15)?,
                    rules: r.try_get(17)?,
                    children: r.try_get(18)?,
                    referenced: r.try_get(19)?,
                    upsert: r.try_get(21)?,
                });
            }
            let type_name: String = r.try_get(6)?;
            let typmod: i32 = r.try_get(7)?;
            let max_chars = (matches!(type_name.as_str(), "character varying" | "character")
                && typmod >= 4)
                .then(|| (typmod - 4) as usize);
            if let Some(t) = tables.last_mut() {
                // A generated or identity column is treated as having a default.
                let mut column = Column {
                    name: r.try_get(5)?,
                    type_name,
                    max_chars,
                    not_null: r.try_get(8)?,
                    has_default: r.try_get(9)?,
                    typmod,
                    default_only: r.try_get(10)?,
                    nondeterministic: r.try_get(14)?,
                    // A domain's default (the column has none of its own) is not classified.
                    session_default: r.try_get(16)?,
                    format_default: false,
                };
                let domain = r.try_get::<_, Option<bool>>(22)?.unwrap_or(false);
                if let Some(expr) = r.try_get::<_, Option<String>>(20)? {
                    match defaults::classify(&expr, &column, domain) {
                        DefaultKind::Worker => {}
                        DefaultKind::Formats => column.format_default = true,
                        DefaultKind::Session => column.session_default = true,
                    }
                }
                t.columns.push(column);
            }
        }
        let mut relations = Vec::new();
        for r in client.query(&relations_sql(), &[]).await? {
            relations.push(Relation {
                relid: r.try_get::<_, i64>(0)? as u32,
                name: r.try_get(1)?,
                table: r.try_get::<_, i64>(2)? as u32,
                arbitrary: r.try_get(3)?,
            });
        }
        let mut links = Vec::new();
        for r in client.query(LINKS_SQL, &[]).await? {
            links.push((
                r.try_get::<_, i64>(0)? as u32,
                r.try_get::<_, i64>(1)? as u32,
            ));
        }
        let (mut functions, mut operators) = (Vec::new(), Vec::new());
        for r in client.query(&routines_sql(), &[]).await? {
            let name: String = r.try_get(0)?;
            if r.try_get::<_, bool>(1)? {
                functions.push(name);
            } else {
                operators.push(name);
            }
        }
        let relids: Vec<u32> = tables.iter().map(|t| t.relid).collect();
        let mut catalog = Self::from_tables(tables);
        catalog.names = Names::build(&relations, &links, &relids, functions, operators);
        let mut at_commit = BTreeSet::new();
        for r in client.query(DEFERRED_SQL, &[]).await? {
            if r.try_get::<_, bool>(2)? {
                catalog.names.at_commit = Scope::All;
                break;
            }
            for i in 0..2 {
                let rel = r.try_get::<_, i64>(i)? as u32;
                if relids.contains(&rel) {
                    at_commit.insert(rel);
                }
            }
        }
        if catalog.names.at_commit != Scope::All {
            catalog.names.at_commit = Scope::Tables(at_commit);
        }
        let row = client
            .query_one(
                "SELECT current_setting('TimeZone'), current_setting('DateStyle'),
                        current_setting('IntervalStyle')",
                &[],
            )
            .await?;
        catalog.formats = Formats([row.try_get(0)?, row.try_get(1)?, row.try_get(2)?]);
        catalog.ticket = ticket;
        Ok(catalog)
    }

    /// Builds the lookup index (names not classified: every statement may read every
    /// write-behind table).
    pub fn from_tables(tables: Vec<Table>) -> Self {
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.schema.clone(), t.name.clone()), i))
            .collect();
        Self {
            tables,
            by_name,
            names: Names::default(),
            ticket: 0,
            formats: Formats::default(),
        }
    }

    /// Resolves a name as written the way a session with the default search_path and no
    /// `$user` schema would: qualified names directly, unqualified ones in `public`. For tools
    /// and tests: sessions ask PostgreSQL (`session/intercept/resolve.rs`).
    pub fn resolve(&self, schema: Option<&str>, name: &str) -> Option<&Table> {
        let schema = schema.unwrap_or("public");
        self.by_name
            .get(&(schema.to_string(), name.to_string()))
            .map(|&i| &self.tables[i])
    }

    /// The registered table with oid `relid`.
    pub fn table(&self, relid: u32) -> Option<&Table> {
        self.tables.iter().find(|t| t.relid == relid)
    }

    /// The flush interval of the registered table `relid`, if it is registered.
    pub fn flush_interval(&self, relid: u32) -> Option<Duration> {
        self.table(relid).map(|t| t.flush_interval)
    }

    /// Whether the database has any write-behind table.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// The flusher reads each table's `flush_interval` from the current catalog, and recomputes
/// its deadline whenever a reload publishes a new one.
impl FlushSchedule for watch::Receiver<Arc<Catalog>> {
    fn flush_interval(&self, relid: u32) -> Option<Duration> {
        self.borrow().flush_interval(relid)
    }

    fn changed(&mut self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if watch::Receiver::changed(self).await.is_err() {
                // The runtime is gone: no more reloads.
                futures::future::pending::<()>().await;
            }
        })
    }
}
