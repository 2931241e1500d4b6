//! A statement's result type, checked where the pooler prepares it afresh.
//!
//! Clients that cache a statement's description (asyncpg, JDBC, Npgsql) decode every later row
//! with it. PostgreSQL keeps that safe within a session: after a schema change that alters a
//! prepared statement's result type, its next Bind fails with 0A000 "cached plan must not change
//! result type" and the driver prepares again. A pool shares statements between sessions and
//! prepares them afresh on server connections that lack them, where no such check happens: a
//! client told `x int` would decode a `real` column's bytes as an int (found from outside:
//! asyncpg read 2.0 as 1073741824).
//!
//! So the pool records the result type servers describe for each statement (the first client
//! Describe of it), and where the pooler would prepare a statement afresh for a client, it first
//! prepares and describes it alone (Parse, Describe, Flush: one round trip, once per statement
//! and server connection) and holds the client's messages until the answer. The same type: the
//! client's messages go on. Another: the statement is retired, as after a stale plan
//! (`stale_plans.rs`), and the client gets PostgreSQL's 0A000; its driver prepares the text
//! anew under a new id. A client's own Describe that finds another type than the recorded one
//! retires the statement the same way (every client holding it was told the old type).

use super::stale_plans;
use crate::pool::Pool;
use crate::stmt::{Prepared, Shape};

/// What the session keeps about a check.
pub(super) struct Check<'a> {
    /// The client's messages are held for a check's answer (sent in that segment).
    pub checking: &'a mut Option<u64>,
    /// The server connection's statements are dropped at the next idle point.
    pub stale_plans: &'a mut bool,
}

/// A result type just described: recorded, or compared with the one recorded. A check's answer
/// lets the client's held messages go on.
pub(super) fn seen(pool: &Pool, shape: Shape, prepared: &mut Prepared, check: Check<'_>) {
    if shape.checked {
        *check.checking = None;
    }
    if pool.same_shape(shape.id, shape.hash) {
        return;
    }
    tracing::info!(
        statement = shape.id,
        "a prepared statement's result type changed: clients holding it get 0A000 and prepare it again"
    );
    pool.retire_statement(shape.id);
    if shape.checked {
        // Prepared afresh here with the new type: not used for the held Bind, which gets the
        // stale statement's error instead; dropped at the next idle point.
        prepared.remove(shape.id);
    }
    stale_plans::renew(pool);
    *check.stale_plans = true;
}
