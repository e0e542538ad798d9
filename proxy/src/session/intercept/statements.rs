//! The session's prepared statements as PostgreSQL knows them: which Parses it completed
//! (`ledger.rs`), statements the proxy prepared locally sent to it before SQL that may
//! name them, and `DEALLOCATE` followed.

use super::Intercept;
use crate::error::ProxyError;
use crate::session::changers::Deallocated;
use crate::session::wire::{ParseRef, Wire};
use bytes::BytesMut;

impl Intercept {
    /// Makes PostgreSQL know every named statement the proxy prepared locally, before SQL that
    /// may name one passes through (`EXECUTE`, `DEALLOCATE`, a `PREPARE` of the same name,
    /// `pg_prepared_statements`); a statement is sent once. Not in the middle of a group that
    /// went upstream unsynced (the proxy's Sync would end it), nor in a transaction block.
    pub(super) async fn materialize_local<W: Wire>(
        &mut self,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        if self.mid_group
            || !self
                .stmts
                .iter()
                .any(|(n, s)| !n.is_empty() && !s.on_server)
        {
            return Ok(());
        }
        // Outside a transaction block only: a Parse PostgreSQL refuses would abort the
        // client's transaction, unseen.
        if wire.drained().await != b'I' {
            return Ok(());
        }
        let mut parses = BytesMut::new();
        let mut refs = Vec::new();
        for (name, stmt) in self.stmts.iter_mut() {
            if name.is_empty() || stmt.on_server {
                continue;
            }
            parses.extend_from_slice(&stmt.parse);
            refs.push(ParseRef {
                serial: stmt.serial,
                injected: true,
            });
            stmt.on_server = true;
        }
        if refs.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            statements = refs.len(),
            "materializing local statements before SQL passes through"
        );
        wire.materialize(parses, &refs).await?;
        self.reconcile(wire);
        Ok(())
    }

    /// Forgets the named statements SQL deallocated (or asked to: if PostgreSQL refused, a
    /// later Bind passes through and PostgreSQL runs or refuses it).
    pub(super) fn forget_deallocated(&mut self, gone: &Deallocated) {
        self.stmts.retain(|name, _| match gone {
            Deallocated::All => name.is_empty(),
            Deallocated::Names(names) => !names.contains(name),
        });
    }

    /// A serial for a new statement.
    pub(super) fn serial(&mut self) -> u64 {
        self.serials += 1;
        self.serials
    }

    /// Follows what PostgreSQL said to the Parses that went upstream: a statement whose own
    /// Parse failed (or was skipped after an earlier error) does not exist there, as for a
    /// client talking to PostgreSQL directly; one the proxy materialized and PostgreSQL
    /// refused (in a failed transaction) is again known to the proxy alone.
    pub(super) fn reconcile<W: Wire>(&mut self, wire: &W) {
        for r in wire.failed_parses() {
            if r.serial == 0 {
                continue;
            }
            let Some(name) = self
                .stmts
                .iter()
                .find(|(_, s)| s.serial == r.serial)
                .map(|(n, _)| n.clone())
            else {
                continue;
            };
            if r.injected {
                if let Some(stmt) = self.stmts.get_mut(&name) {
                    stmt.on_server = false;
                }
            } else {
                tracing::debug!(statement = %name, "PostgreSQL did not complete its Parse: the statement does not exist");
                self.stmts.remove(&name);
            }
        }
    }
}
