//! Riding through a server that goes away under a transaction's first batch: when the server
//! says it ends the connection (a FATAL: a restart, a failover, pg_terminate_backend; or the
//! warning a backend sends when another one crashed) before anything of a batch that only
//! reads reached the client, the batch is sent again on a new server connection, so the client
//! sees nothing. A connection closed without a word is the backend itself dying under the
//! batch, perhaps because of it: that batch is not sent again (a query that crashes its server
//! would restart the whole cluster once per re-send). Any loss not ridden through ends the
//! client with exactly one FATAL with a retryable SQLSTATE.

use bytes::BytesMut;

use super::{End, Session};
use crate::proto;

/// Most re-sends of one batch.
const MAX_RESENDS: u8 = 3;

/// The severity and SQLSTATE of an ErrorResponse.
pub(super) fn error_fields(msg: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let mut body = msg.get(5..).unwrap_or_default();
    let (mut severity, mut code) = (None, None);
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        body = rest;
        let Some(value) = proto::cbytes(&mut body) else {
            break;
        };
        match kind {
            b'V' => severity = Some(value),
            b'S' if severity.is_none() => severity = Some(value),
            b'C' => code = Some(value),
            _ => {}
        }
    }
    (severity, code)
}

/// Drops the bytes kept for a re-send; their buffer goes back to the spares.
pub(super) fn forget(resend: &mut BytesMut) {
    resend.clear();
    crate::spare::give(resend);
}

/// Whether a server message announces the end of its connection: a FATAL, or the warning a
/// backend sends as it is stopped (57P01 admin shutdown, 57P02 crash of another process, 57P03
/// cannot connect now) before closing.
pub(super) fn says_goodbye(tag: u8, msg: &[u8]) -> bool {
    match tag {
        b'E' => is_fatal(msg),
        b'N' => matches!(error_fields(msg).1, Some(b"57P01" | b"57P02" | b"57P03")),
        _ => false,
    }
}

/// Whether an ErrorResponse ends the connection (FATAL or PANIC).
pub(super) fn is_fatal(msg: &[u8]) -> bool {
    matches!(error_fields(msg).0, Some(b"FATAL" | b"PANIC"))
}

impl Session {
    /// The server went away before answering: re-sends the unanswered batch on a new server
    /// connection when that is safe (it only reads), else ends the client.
    pub(super) fn resend_or_end(&mut self, why: String) -> Option<End> {
        if !self.resend_ok || self.resends >= MAX_RESENDS || !self.reads_only(&self.resend) {
            return Some(End::ServerLost(why));
        }
        tracing::info!(reason = %why, "server lost before answering a read; sending it again");
        self.resends += 1;
        self.resend_ok = false;
        self.stmts.reset_flight();
        self.release(false);
        self.pending_z = 0;
        self.unsynced = false;
        self.copy_in = false;
        self.status = b'I';
        self.track.forget_unsent();
        let mut again = BytesMut::with_capacity(self.resend.len() + self.cbuf.len());
        again.extend_from_slice(&self.resend);
        again.extend_from_slice(&self.cbuf);
        self.cbuf = again;
        forget(&mut self.resend);
        None
    }

    /// Whether every statement in `batch` only reads (or starts a transaction), so running it
    /// again changes nothing. Routing comments do not count, and a Bind of the unnamed statement
    /// counts only when this batch parsed it (an earlier batch's is not known here).
    fn reads_only(&self, batch: &[u8]) -> bool {
        let mut unnamed_parsed = false;
        proto::messages(batch).all(|(tag, msg)| {
            let mut body = &msg[5..];
            let sql = match tag {
                b'Q' => proto::cbytes(&mut body),
                b'P' => match proto::cbytes(&mut body) {
                    Some(name) => {
                        unnamed_parsed |= name.is_empty();
                        proto::cbytes(&mut body)
                    }
                    None => None,
                },
                b'B' => match proto::cbytes(&mut body).and_then(|_| proto::cbytes(&mut body)) {
                    // The unnamed statement parsed in this batch was checked at its Parse.
                    Some(b"") => return unnamed_parsed,
                    Some(name) => self.stmts.query_of(name),
                    None => None,
                },
                b'S' | b'D' | b'E' | b'H' | b'C' => return true,
                _ => return false,
            };
            sql.and_then(|s| std::str::from_utf8(s).ok())
                .is_some_and(crate::classify::replay_safe)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_errors_are_told_apart() {
        let mut m = BytesMut::new();
        proto::error(
            &mut m,
            proto::Severity::Fatal,
            "57P01",
            "terminating connection due to administrator command",
        );
        assert!(is_fatal(&m));
        assert_eq!(error_fields(&m).1, Some(&b"57P01"[..]));
        let mut e = BytesMut::new();
        proto::error(&mut e, proto::Severity::Error, "42P01", "no such table");
        assert!(!is_fatal(&e));
        assert!(!is_fatal(b"E\0\0\0\x04"));
    }
}
