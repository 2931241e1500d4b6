//! The session's side of statement effects in transaction mode: pinning a client that created
//! session state to its server connection (or refusing the statement), answering DEALLOCATE
//! itself, keeping the server's prepared-statement record in step with DEALLOCATE ALL /
//! DISCARD ALL, and tracking settings changes. See `effects` for how SQL is read.

use bytes::{BufMut, BytesMut};

use super::Track;
use crate::effects::{Effects, Emulate, state};
use crate::failure::Failure;
use crate::proto::{self, Severity};
use crate::server::ServerConn;
use crate::stmt::{Prepared, Statements, Sub};

/// Session state a client holds on its server connection, and what may have removed some.
#[derive(Debug, Default)]
pub(super) struct Pin {
    /// [`state`] bits: non-zero keeps the server connection with the client.
    pub(super) bits: u8,
    /// A statement that may have removed state was sent: ask the server before deciding.
    pub(super) verify: bool,
    /// Untracked state removed if the current segment succeeds.
    pub(super) clears: u8,
    /// Counted in the pool's `pinned` gauge.
    pub(super) counted: bool,
}

impl Pin {
    /// At a ReadyForQuery: drops what a successful RESET ALL / DISCARD ALL removed.
    pub(super) fn settle(&mut self, failed: bool) {
        if !failed {
            self.bits &= !self.clears;
        }
        self.clears = 0;
    }
}

/// How to treat one Query or Parse message with effects `fx`, sent in `segment`. `unnamed`: a
/// Query or an unnamed Parse (only those are emulated); `query`: a Query (its settings are made
/// as it runs); `refuse`: session state is refused rather than pinned.
pub(super) fn plan(
    fx: &Effects,
    (segment, unnamed, query): (u64, bool, bool),
    refuse: bool,
    stmts: &mut Statements,
    track: &mut Track,
    pin: &mut Pin,
    prepared: &mut Prepared,
) -> Sub {
    if fx.creates != 0 {
        if refuse {
            return Sub::Refuse(fx.creates);
        }
        pin.bits |= fx.creates;
    }
    pin.bits |= fx.suspect;
    if fx.opaque {
        track.unknown = Some(segment);
    }
    // A Query changes settings as it runs; a parsed statement when a portal of it is executed
    // (bound_settings.rs), not when it is parsed or bound.
    if query {
        record_settings(fx, segment, track);
    }
    pin.verify |= fx.verify;
    pin.clears |= fx.clears;
    match &fx.emulate {
        // SQL-prepared statements of a pinned client must really go.
        Some(Emulate::DeallocateAll) if unnamed && pin.bits & state::PREPARE == 0 => {
            stmts.forget_names();
            return Sub::Emulate("DEALLOCATE ALL");
        }
        Some(Emulate::Deallocate(name)) if unnamed && stmts.forget_name(name) => {
            return Sub::Emulate("DEALLOCATE");
        }
        _ => {}
    }
    if fx.forgets {
        stmts.forget_names();
        stmts.server_forgets(prepared);
    }
    let verify = if fx.verify { state::VERIFY } else { 0 };
    if fx.creates | fx.suspect | verify != 0 {
        Sub::Flag(fx.creates | fx.suspect | verify)
    } else {
        Sub::Forward
    }
}

/// Records what executing a flagged prepared statement (`bound`, from a Bind) does.
/// Records the settings changes of a statement sent in `segment` (a Query, an unnamed Parse,
/// or a Bind of a named statement that changes settings).
pub(super) fn record_settings(fx: &Effects, segment: u64, track: &mut Track) {
    if fx.settings.is_empty() {
        return;
    }
    if fx.statements > 1 {
        track.unknown = Some(segment);
    }
    track
        .changes
        .extend(fx.settings.iter().map(|c| (segment, c.clone())));
}

pub(super) fn bound(pin: &mut Pin, bound: u8) {
    pin.bits |= bound & !state::VERIFY;
    pin.verify |= bound & state::VERIFY != 0;
}

/// The refusal of a statement creating session state `bits`.
pub(super) fn refusal(out: &mut BytesMut, bits: u8) {
    let refused = Failure::NotSupported(format!(
        "{} is not supported in transaction pooling mode: the next transaction may run on \
         another server connection",
        state::reason(bits)
    ));
    refused.write_with_hint(out, Severity::Error, state::hint(bits));
}

/// CommandComplete `tag`.
pub(super) fn complete(out: &mut BytesMut, tag: &str) {
    proto::message(out, b'C', |o| {
        o.put_slice(tag.as_bytes());
        o.put_u8(0);
    });
}

/// Counts the state the server can show: listening channels, holdable cursors, advisory locks,
/// SQL-prepared statements, temporary objects (relations, types and domains, functions: each
/// shadows a name for whoever uses the connection next). It runs out of the client's
/// `statement_timeout` (a client's `1ms` had it fail, and the client stay pinned), and scans
/// the catalogs only for a session that has a temporary schema.
const VERIFY_SQL: &str = "SET LOCAL statement_timeout = 0; SELECT \
    (SELECT count(*) FROM pg_catalog.pg_listening_channels())::text, \
    (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)::text, \
    (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' \
        AND pid = pg_catalog.pg_backend_pid())::text, \
    (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)::text, \
    (CASE WHEN pg_catalog.pg_my_temp_schema() = 0 THEN 0 ELSE \
      (SELECT count(*) FROM pg_catalog.pg_class \
        WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
     + (SELECT count(*) FROM pg_catalog.pg_type \
        WHERE typnamespace = pg_catalog.pg_my_temp_schema()) \
     + (SELECT count(*) FROM pg_catalog.pg_proc \
        WHERE pronamespace = pg_catalog.pg_my_temp_schema()) END)::text";

/// The state a server connection still holds, per the server's catalogs, with the bits it
/// cannot see kept from `bits`. An error the server answered leaves the connection in step;
/// a lost connection or one that did not answer in time (`TimedOut`) does not.
pub(super) async fn verify(conn: &mut ServerConn, bits: u8) -> std::io::Result<u8> {
    let asked = conn.query_row(VERIFY_SQL);
    let row = tokio::time::timeout(std::time::Duration::from_secs(5), asked)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let kinds = [
        state::LISTEN,
        state::CURSOR,
        state::LOCK,
        state::PREPARE,
        state::TEMP,
    ];
    let mut found = bits & !state::VISIBLE;
    for (v, kind) in row.iter().zip(kinds) {
        if v.as_deref().is_some_and(|n| n != "0") {
            found |= kind;
        }
    }
    Ok(found)
}
