//! A client that keeps its server connection between transactions (session mode, or pinned
//! by session state in transaction mode) gets its settings back after a reset.
//!
//! PostgreSQL's `RESET`, `RESET ALL`, `DISCARD ALL` and `SET x TO DEFAULT` go back to the
//! values of the session's startup packet. The server's startup packet is the pooler's, so on
//! the server they go back to the pooler's values where the client's were others
//! (`options='-c statement_timeout=5s'`; asyncpg's `server_settings`, reset at every pool
//! release). Transaction mode replays a client's settings when it takes a server
//! (`replay.rs`); a client that holds its server gets them here, before its next statement.
//! Only what is in force is set again: whatever else the session made stays as it is.

use super::{End, Session, reread_settings};
use crate::server::Refusal;

impl Session {
    /// Between transactions, on a held server connection whose settings are not (or no longer
    /// known to be) the client's: reads back what is in doubt and sets what a reset undid.
    pub(super) async fn guard_settings(&mut self) -> Option<End> {
        if self.status != b'I' || self.pending_z != 0 || self.unsynced || self.copy_in {
            return None;
        }
        let lease = self.lease.as_mut()?;
        if (!self.track.reread.is_empty() || self.track.read_all)
            && !reread_settings(&mut self.track, &mut lease.conn).await
        {
            return Some(End::ServerLost(
                "reading a client's settings back from its server failed".into(),
            ));
        }
        let wanted = self.track.settings.fingerprint();
        if lease.conn.settings == wanted {
            return None;
        }
        if let Some(sql) = self.track.settings.restore_sql() {
            match lease.conn.run(&sql).await {
                Ok(()) => {}
                // Accepted at login: a refusal now (a role since dropped) leaves the setting
                // as the server has it, as PostgreSQL's own RESET would have found it.
                Err(e) if Refusal::of(&e).is_some() => {
                    tracing::warn!(error = %e, "re-applying a client's settings after a reset failed");
                }
                Err(e) => return Some(End::ServerLost(e.to_string())),
            }
        }
        lease.conn.settings = wanted;
        None
    }
}
