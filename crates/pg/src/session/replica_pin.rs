//! A client pinned to a replica: session state it made inside a read-only transaction there
//! (`BEGIN READ ONLY; PREPARE …`, a hold cursor, an advisory lock) keeps its server
//! connection, a standby. A write it sends next could only fail there, with a 25006 that
//! does not say why the client is on a standby at all; it is refused with the reason and the
//! way out instead. State made outside a transaction never lands on a replica (`route`).

use super::{End, Session, batch};
use crate::topology::Role;

impl Session {
    /// Refuses a write batch of a client held between transactions on a replica.
    pub(super) async fn guard_replica_pin(&mut self) -> Option<Option<End>> {
        if !self.split || self.status != b'I' || self.pin.bits == 0 || self.skip_to_sync {
            return None;
        }
        let host = self.lease.as_ref()?.host;
        if self.pool.topology.hosts.get(host)?.role() != Role::Replica {
            return None;
        }
        let (_, writes) = self.route();
        if !writes {
            return None;
        }
        let b = batch::read(&self.cbuf, &self.stmts, self.unnamed.as_deref());
        // What lets go of the state (DEALLOCATE, CLOSE, an unlock, DISCARD) must reach it.
        let analyzer = &self.pooler.analyzer;
        let releases = b.execs.iter().filter_map(|e| e.sql).any(|sql| {
            analyzer
                .effects(sql)
                .is_some_and(|fx| fx.verify || fx.clears != 0 || fx.forgets || fx.emulate.is_some())
        });
        if releases {
            return None;
        }
        let (len, end) = (b.len, b.end);
        bytes::Buf::advance(&mut self.cbuf, len);
        let why = format!(
            "this client holds session state ({}) made in a read-only transaction on a replica, \
             so its writes cannot run: release it (DEALLOCATE, CLOSE, pg_advisory_unlock, \
             UNLISTEN) or make it outside a read-only transaction",
            crate::effects::state::reason(self.pin.bits)
        );
        tracing::debug!(host, "write refused for a client pinned to a replica");
        Some(self.fail_on_server(&why, end).await)
    }
}
