//! The catalog of write-behind tables of one database, loaded through the proxy's own
//! connection from the extension's registry and pg_catalog.

use std::collections::HashMap;

/// One column of a write-behind table.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// Base type name (`format_type(atttypid, NULL)`), e.g. `integer`, `character varying`.
    pub type_name: String,
    /// `character varying(n)` / `character(n)` length limit, if any.
    pub max_chars: Option<usize>,
    pub not_null: bool,
    pub has_default: bool,
    /// `atttypmod` (-1 when unconstrained), e.g. precision and scale of `numeric(p,s)`.
    pub typmod: i32,
    /// A generated or `GENERATED ALWAYS AS IDENTITY` column: only `DEFAULT` may be written.
    pub default_only: bool,
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
}

impl Table {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The registered tables of a database.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: Vec<Table>,
    by_name: HashMap<(String, String), usize>,
}

/// The query that loads the catalog: one row per column of every registered table.
pub const LOAD_SQL: &str = "
    SELECT c.oid::int8, n.nspname::text, c.relname::text, t.mode, t.key_columns,
           a.attname::text, format_type(a.atttypid, NULL), a.atttypmod,
           a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
           a.attgenerated <> '' OR a.attidentity = 'a', t.read_barrier
      FROM writebehind.tables t
      JOIN pg_class c ON c.oid = t.relid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY c.oid, a.attnum";

impl Catalog {
    /// Loads the catalog; an error means the extension is not usable in this database.
    pub async fn load(client: &tokio_postgres::Client) -> Result<Self, tokio_postgres::Error> {
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
                });
            }
            let type_name: String = r.try_get(6)?;
            let typmod: i32 = r.try_get(7)?;
            let max_chars = (matches!(type_name.as_str(), "character varying" | "character")
                && typmod >= 4)
                .then(|| (typmod - 4) as usize);
            if let Some(t) = tables.last_mut() {
                // A generated or identity column is treated as having a default.
                t.columns.push(Column {
                    name: r.try_get(5)?,
                    type_name,
                    max_chars,
                    not_null: r.try_get(8)?,
                    has_default: r.try_get(9)?,
                    typmod,
                    default_only: r.try_get(10)?,
                });
            }
        }
        Ok(Self::from_tables(tables))
    }

    /// Builds the lookup index.
    pub fn from_tables(tables: Vec<Table>) -> Self {
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.schema.clone(), t.name.clone()), i))
            .collect();
        Self { tables, by_name }
    }

    /// Resolves a name as written: qualified names directly; unqualified ones only in `public`
    /// (the proxy intercepts only sessions that never changed `search_path`).
    pub fn resolve(&self, schema: Option<&str>, name: &str) -> Option<&Table> {
        let schema = schema.unwrap_or("public");
        self.by_name
            .get(&(schema.to_string(), name.to_string()))
            .map(|&i| &self.tables[i])
    }

    /// Whether the database has any write-behind table.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}
