//! The admin console's write-behind commands: `SHOW TABLES`, `FLUSH [table]`, `PAUSE`,
//! `RESUME` and `RELOAD`.

use super::config_rows;
use crate::config::Settings;
use crate::error::ProxyError;
use crate::live_config::RELOADABLE;
use crate::protocol::messages::{self, Type::*};
use crate::session::cancel::Interrupt;
use crate::session::Shared;
use crate::writebehind::catalog::Table;
use crate::writebehind::databases::WriteBehind;
use crate::writebehind::queue::TableCounts;
use bytes::BytesMut;
use clap::Parser;

/// One row per database and write-behind table: what this proxy process acknowledged,
/// holds, coalesced and shipped, and what the worker applied (as of the last report).
pub fn show_tables(wb: Option<&WriteBehind>, out: &mut BytesMut) {
    let mut rows: Vec<Vec<Option<String>>> = Vec::new();
    for (db, rt) in wb.map(WriteBehind::databases).unwrap_or_default() {
        let catalog = rt.catalog.borrow().clone();
        let counts = rt.queue.table_counts();
        let applied = rt.applied();
        let mut relids: Vec<u32> = catalog.tables.iter().map(|t| t.relid).collect();
        relids.extend(
            counts
                .keys()
                .filter(|r| !relids.contains(r))
                .collect::<Vec<_>>(),
        );
        for relid in relids {
            let name = catalog
                .table(relid)
                .map(Table::qualified_name)
                .unwrap_or_else(|| format!("{relid} (not write-behind now)"));
            let c: TableCounts = counts.get(&relid).copied().unwrap_or_default();
            let a = applied.get(&relid).copied().unwrap_or_default();
            let n = |v: u64| Some(v.to_string());
            rows.push(vec![
                Some(db.clone()),
                Some(name),
                n(c.acked.iter().sum()),
                n(c.pending),
                n(c.coalesced),
                n(c.shipped.iter().sum()),
                Some(a.applied.to_string()),
                Some(a.dead_letters.to_string()),
            ]);
        }
    }
    rows.sort();
    messages::rows(
        out,
        &[
            ("database", Text),
            ("table", Text),
            ("acked", Int8),
            ("pending", Int8),
            ("coalesced", Int8),
            ("shipped", Int8),
            ("applied", Int8),
            ("dead_letters", Int8),
        ],
        &rows,
    );
}

/// Ships the pending changes of `table` (every write-behind table when `None`) and waits
/// until the extension applied them, up to `barrier_timeout`, or until a cancel request with
/// the session's key (57014; the changes ship all the same).
pub async fn flush(
    wb: Option<&WriteBehind>,
    table: Option<&str>,
    shared: &Shared,
    interrupt: &Interrupt,
    out: &mut BytesMut,
) {
    // A cancelled wait wrote nothing: `flush_and_wait` writes its answer as it returns.
    let cancelled = interrupt
        .waiting(|cancelled| async {
            tokio::select! {
                () = flush_and_wait(wb, table, shared, &mut *out) => false,
                _ = cancelled => true,
            }
        })
        .await;
    if cancelled {
        ProxyError::BarrierCancelled.write_to(out);
    }
}

async fn flush_and_wait(
    wb: Option<&WriteBehind>,
    table: Option<&str>,
    shared: &Shared,
    out: &mut BytesMut,
) {
    let Some(wb) = wb else {
        return messages::complete(out, "FLUSH");
    };
    if wb.paused() {
        return ProxyError::ShippingPaused.write_to(out);
    }
    let mut found = false;
    for (db, rt) in wb.databases() {
        let relids: Vec<u32> = rt
            .catalog
            .borrow()
            .tables
            .iter()
            .filter(|t| table.is_none_or(|name| names(name, &t.schema, &t.name)))
            .map(|t| t.relid)
            .collect();
        if relids.is_empty() {
            continue;
        }
        found = true;
        if let Err(e) = rt
            .barrier
            .wait(&relids, shared.live.get().barrier_timeout)
            .await
        {
            return ProxyError::FlushFailed(format!("database {db}: {e}")).write_to(out);
        }
    }
    match table {
        Some(name) if !found => ProxyError::UnknownTable(name.to_string()).write_to(out),
        _ => messages::complete(out, "FLUSH"),
    }
}

/// Whether `name` (as typed: `t`, `s.t`, quoted or not) names table `schema.table`.
fn names(name: &str, schema: &str, table: &str) -> bool {
    let unquote = |s: &str| -> String {
        match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(q) => q.replace("\"\"", "\""),
            None => s.to_lowercase(),
        }
    };
    match name.split_once('.') {
        Some((s, t)) => unquote(s) == schema && unquote(t) == table,
        None => unquote(name) == table,
    }
}

/// `PAUSE` / `RESUME`: stops or restarts shipping in every database.
pub fn pause(wb: Option<&WriteBehind>, paused: bool, out: &mut BytesMut) {
    if let Some(wb) = wb {
        wb.set_paused(paused);
    }
    messages::complete(out, if paused { "PAUSE" } else { "RESUME" });
}

/// `RELOAD`: reloads every database's catalog (and drops cached privileges), and reads the
/// configuration again (file, flags, environment): the keys in
/// [`RELOADABLE`](crate::live_config::RELOADABLE) take effect, the others at the next start;
/// a NOTICE lists both. An invalid configuration is an error and changes nothing.
pub fn reload(wb: Option<&WriteBehind>, shared: &Shared, out: &mut BytesMut) {
    for (_, rt) in wb.map(WriteBehind::databases).unwrap_or_default() {
        rt.reload();
    }
    let reread = Settings::try_parse_from(std::env::args_os())
        .map_err(|e| e.to_string())
        .and_then(|s| {
            s.merged()
                .and_then(Settings::validate)
                .map_err(|e| e.to_string())
        });
    let new = match reread {
        Ok(new) => new,
        Err(e) => return ProxyError::BadConfig(e).write_to(out),
    };
    let changed: Vec<&str> = config_rows(&new)
        .into_iter()
        .zip(config_rows(&shared.live.get()))
        .filter(|(n, o)| n.1 != o.1)
        .map(|(n, _)| n.0)
        .collect();
    let (applied, later): (Vec<&str>, Vec<&str>) =
        changed.iter().partition(|k| RELOADABLE.contains(k));
    if let Some(wb) = wb {
        wb.reload_config(&new);
    }
    if !applied.is_empty() {
        messages::notice(out, &format!("applied: {}", applied.join(", ")));
    }
    if !later.is_empty() {
        messages::notice(
            out,
            &format!(
                "changed, and taking effect when the proxy restarts: {}",
                later.join(", ")
            ),
        );
    }
    messages::complete(out, "RELOAD");
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn table_names_fold_case_unless_quoted() {
        assert!(names("Counters", "public", "counters"));
        assert!(names("public.counters", "public", "counters"));
        assert!(names("\"Mixed\"", "s", "Mixed"));
        assert!(!names("Mixed", "s", "Mixed"));
        assert!(!names("other.counters", "public", "counters"));
    }
}
