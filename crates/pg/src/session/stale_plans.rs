//! Prepared statements whose plans a schema change made stale. PostgreSQL answers a Bind of a
//! statement whose result type changed (`ALTER TABLE … ADD COLUMN` under `SELECT *`, another
//! `search_path`) with 0A000 "cached plan must not change result type", and drivers re-prepare.
//! But a pool shares one server statement per text: the client's new Parse of the same text
//! would be answered from the stale one, and the error would never end (asyncpg failed every
//! call until the server connections were recycled).
//!
//! So on that error the pool gives every text a new id at once (so every connection prepares
//! a text parsed again afresh under its new name instead of using its stale one), even before
//! the client's ReadyForQuery: drivers send their new Parse as soon as they have the error. At the client's next idle point the server connection forgets
//! the statements it had (`DEALLOCATE ALL`), stale ones included.
//!
//! Other clients keep the ids they had, and with them the result types they were told. Where
//! a server still holds such a statement, PostgreSQL itself says whether it went stale; where
//! it does not, preparing it afresh could answer rows of a new type under the old description
//! (found from outside: asyncpg read a `real` 2.0 as the `int` 1073741824). So the statement
//! whose plan went stale (the one of the Bind or Describe the error answers) is retired: it is
//! not prepared afresh again, the client gets 0A000 as PostgreSQL would give it, and its
//! driver prepares the text anew. Only that one: retiring every older statement failed
//! unchanged ones (pgbench -M prepared aborted, psycopg never re-prepares). A statement whose
//! result type changed but that no client has yet met as a stale plan is not caught.

use super::Session;
use super::resend::error_fields;
use crate::pool::Pool;
use crate::proto;

/// Whether an ErrorResponse says a prepared statement's plan is stale.
pub(super) fn plan_went_stale(msg: &[u8]) -> bool {
    const STALE: &[u8] = b"cached plan must not change result type";
    error_fields(msg).1 == Some(b"0A000") && message(msg).is_some_and(|m| m.starts_with(STALE))
}

/// The message field of an ErrorResponse.
fn message(msg: &[u8]) -> Option<&[u8]> {
    let mut body = msg.get(5..)?;
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            return None;
        }
        body = rest;
        let value = proto::cbytes(&mut body)?;
        if kind == b'M' {
            return Some(value);
        }
    }
    None
}

/// PostgreSQL's answer to a Bind of a statement whose result type changed since it was
/// prepared, for a client statement whose id met a stale plan ([`Pool::retire_statement`]).
/// Its fields are PostgreSQL's own, routine included: drivers tell a stale statement by it
/// (asyncpg prepares again and retries only when `R` is `RevalidateCachedQuery`).
pub(super) fn stale_statement(out: &mut bytes::BytesMut) {
    use bytes::BufMut;
    proto::message(out, b'E', |b| {
        for (field, value) in [
            (b'S', &b"ERROR"[..]),
            (b'V', b"ERROR"),
            (b'C', b"0A000"),
            (b'M', b"cached plan must not change result type"),
            (
                b'H',
                b"the statement was prepared before a schema change: prepare it again",
            ),
            (b'F', b"plancache.c"),
            (b'R', b"RevalidateCachedQuery"),
        ] {
            b.put_u8(field);
            proto::put_cstr(b, value);
        }
        b.put_u8(0);
    });
}

/// Gives every statement text of `pool` a new id for the Parses to come. Statements clients
/// hold keep theirs: a client's Bind must never reach a fresh plan under the description it was
/// given before (the statement that went stale is retired; others are checked where they are
/// prepared afresh, `shape_check.rs`).
pub(super) fn renew(pool: &Pool) {
    pool.renew_statements();
}

impl Session {
    /// After a stale plan, with the server idle: the statements it has are dropped. False when
    /// the server could not be cleaned (it is then closed, not reused).
    pub(super) async fn drop_stale_plans(&mut self) -> bool {
        if !std::mem::take(&mut self.stale_plans) {
            return true;
        }
        let Some(lease) = self.lease.as_mut() else {
            return true;
        };
        if let Err(e) = lease.conn.run("DEALLOCATE ALL").await {
            tracing::warn!(error = %e, "dropping stale prepared statements failed");
            return false;
        }
        lease.conn.prepared.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn a_stale_plan_is_told_from_other_errors() {
        let error = |code, text| {
            let mut m = BytesMut::new();
            proto::error(&mut m, proto::Severity::Error, code, text);
            m
        };
        assert!(plan_went_stale(&error(
            "0A000",
            "cached plan must not change result type"
        )));
        assert!(!plan_went_stale(&error("0A000", "unsupported")));
        assert!(!plan_went_stale(&error(
            "42P01",
            "cached plan must not change result type"
        )));
    }
}
