//! A client that logged in before a reload changed its database follows the change between
//! transactions: the next transaction goes to the pool the reload made, on the hosts now
//! configured (PgBouncer likewise closes a changed database's server connections as they come
//! back). Nothing moves while a server is held: a transaction, a pinned session and a
//! session-mode client keep theirs until it is given back. A client whose database changed
//! pool mode is asked to reconnect (FATAL 57P01).

use std::sync::atomic::Ordering::Relaxed;

use super::{End, Session, transaction_mode_split};
use crate::failure::Failure;
use crate::spec::{OnSessionState, PoolMode};

impl Session {
    /// Moves this client to its database's current pool if a reload retired the one it uses;
    /// ends it with FATAL 3D000 if the reload removed the database. Only with no server held.
    pub(super) fn follow_reload(&mut self) -> Option<End> {
        if self.lease.is_some() || !self.pool.is_retired() {
            return None;
        }
        let Some(db) = self.pooler.database(&self.slot.database) else {
            return Some(End::Fatal(Failure::NoDatabase(format!(
                "database \"{}\" was removed from the configuration",
                self.slot.database
            ))));
        };
        if (db.pool_mode == PoolMode::Transaction) != self.transaction {
            // A session-mode pool would hand this client's server, with its settings, to the
            // next session as it is: the client reconnects (57P01, which drivers retry) and
            // gets the new mode.
            return Some(End::Fatal(Failure::Server {
                code: "57P01".into(),
                message: format!(
                    "the pool mode of database \"{}\" changed on reload; reconnect",
                    self.slot.database
                ),
            }));
        }
        let next = self.pooler.pool(&db, &self.slot.user);
        let moved = self.pool.db.primary != db.primary
            || self.pool.db.replicas != db.replicas
            || self.pool.db.shards != db.shards;
        if moved {
            // A position in the old hosts' WAL means nothing on the new ones.
            self.min_lsn = 0;
        }
        let scope = self.track.statement_scope();
        self.stmts
            .reintern(|body| next.statement_id(body, scope.as_deref()));
        self.pool.stats.clients.fetch_sub(1, Relaxed);
        next.stats.clients.fetch_add(1, Relaxed);
        self.split = self.transaction && transaction_mode_split(&next);
        self.sharding = db.sharding.clone();
        self.refuse_state = db.on_session_state == OnSessionState::Refuse || db.sharding.is_some();
        self.pool = next;
        None
    }
}
