//! What the apply path needs to know about a table: name, owner, key, column types, policy.

use super::fold::Conflict;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiResult};
use std::collections::HashMap;

/// One table's facts, read at the start of its round.
#[derive(Debug, Clone)]
pub struct TableMeta {
    /// Schema-qualified, quoted name (`regclass` output with a qualifying search_path).
    pub qualified: String,
    pub owner: pg_sys::Oid,
    pub key_columns: Vec<String>,
    pub append: bool,
    pub policy: Conflict,
    /// Column name → type name for casts (without typmod, so assignment checks lengths).
    pub types: HashMap<String, String>,
}

impl TableMeta {
    /// The type an increment's delta is read as and added in: `int8` for integer columns (a
    /// delta that is not an integer is an error, so the change is dead-lettered), `numeric`
    /// otherwise. Never the column's own type: PostgreSQL adds `n + 3000000000` on an integer
    /// column in `bigint` and checks only the result, when it is assigned.
    pub fn delta_type(&self, column: &str) -> &'static str {
        match self.types.get(column).map(String::as_str) {
            Some("smallint" | "integer" | "bigint") => "int8",
            _ => "numeric",
        }
    }
}

/// Reads a table's facts; `None` if the relation no longer exists.
pub fn load(client: &SpiClient<'_>, relid: pg_sys::Oid) -> SpiResult<Option<TableMeta>> {
    let head = client.select(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relowner,
                t.mode, t.on_conflict, t.key_columns,
                (SELECT array_agg(a.attname::text ORDER BY k.ord)
                   FROM pg_index i
                   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  WHERE i.indrelid = c.oid AND i.indisprimary)
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN writebehind.tables t ON t.relid = c.oid
          WHERE c.oid = $1 AND c.relkind = 'r'",
        None,
        &[relid.into()],
    )?;
    let Some(row) = head.into_iter().next() else {
        return Ok(None);
    };
    let qualified: String = row.get(1)?.unwrap_or_default();
    let owner: pg_sys::Oid = row.get(2)?.unwrap_or(pg_sys::InvalidOid);
    let mode: Option<String> = row.get(3)?;
    let on_conflict: Option<String> = row.get(4)?;
    let registered_key: Option<Vec<String>> = row.get(5)?;
    let pk: Option<Vec<String>> = row.get(6)?;
    // A table no longer registered (disabled while rows were queued) still gets its rows
    // applied, keyed by its primary key with the default policy, or appended if it has none
    // or if its queued rows are append rows: proxies learn of a disable only when it
    // commits, so rows they acknowledged as an append table's meanwhile ship afterwards.
    let append = match mode.as_deref() {
        Some(m) => m == "append",
        None => pk.is_none() || queued_append_rows(client, relid)?,
    };
    let key_columns = if append {
        Vec::new()
    } else {
        registered_key
            .filter(|k| !k.is_empty())
            .or(pk)
            .unwrap_or_default()
    };
    let policy = match on_conflict.as_deref() {
        Some("ignore") => Conflict::Ignore,
        Some("dead_letter") => Conflict::Fail,
        _ => Conflict::Upsert,
    };
    let mut types = HashMap::new();
    for r in client.select(
        // The type without its modifier, as a cast can name it: typmod -1 (not NULL) spells
        // char(n) `bpchar` and bit(n) `"bit"`, where NULL gives `character` and `bit`, which
        // mean char(1) and bit(1) and would truncate. The column's own modifier is checked
        // when the value is assigned, as for an INSERT.
        "SELECT attname::text, format_type(atttypid, -1) FROM pg_attribute
          WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
        None,
        &[relid.into()],
    )? {
        let name: Option<String> = r.get(1)?;
        let ty: Option<String> = r.get(2)?;
        if let (Some(n), Some(t)) = (name, ty) {
            types.insert(n, t);
        }
    }
    Ok(Some(TableMeta {
        qualified,
        owner,
        key_columns,
        append,
        policy,
        types,
    }))
}

/// Whether the inbox holds rows of `relid` in the append format: no key, neither as a JSON
/// key nor as key value rows of a packed row (which then has one value row per column).
fn queued_append_rows(client: &SpiClient<'_>, relid: pg_sys::Oid) -> SpiResult<bool> {
    Ok(client
        .select(
            "SELECT EXISTS (SELECT 1 FROM writebehind.inbox i
                             WHERE i.relid = $1 AND i.key IS NULL
                               AND (i.vals IS NULL
                                    OR array_length(i.vals, 1) = coalesce(array_length(i.columns, 1), 0)))",
            None,
            &[relid.into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false))
}

/// Registered tables linked by foreign keys: (parent, child) pairs among `relids`.
pub fn fk_edges(
    client: &SpiClient<'_>,
    relids: &[pg_sys::Oid],
) -> SpiResult<Vec<(pg_sys::Oid, pg_sys::Oid)>> {
    let ids: Vec<pg_sys::Oid> = relids.to_vec();
    let mut out = Vec::new();
    for r in client.select(
        "SELECT confrelid, conrelid FROM pg_constraint
          WHERE contype = 'f' AND conrelid = ANY($1) AND confrelid = ANY($1) AND conrelid <> confrelid",
        None,
        &[ids.into()],
    )? {
        let parent: Option<pg_sys::Oid> = r.get(1)?;
        let child: Option<pg_sys::Oid> = r.get(2)?;
        if let (Some(p), Some(c)) = (parent, child) {
            out.push((p, c));
        }
    }
    Ok(out)
}

/// Orders tables parents first (a topological sort; cycles keep their original order).
pub fn parents_first(
    relids: &[pg_sys::Oid],
    edges: &[(pg_sys::Oid, pg_sys::Oid)],
) -> Vec<pg_sys::Oid> {
    let mut remaining: Vec<pg_sys::Oid> = relids.to_vec();
    let mut out = Vec::with_capacity(relids.len());
    while !remaining.is_empty() {
        let ready = remaining
            .iter()
            .position(|r| {
                !edges
                    .iter()
                    .any(|(p, c)| c == r && p != r && remaining.contains(p))
            })
            .unwrap_or(0);
        out.push(remaining.remove(ready));
    }
    out
}
