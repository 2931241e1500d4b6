//! Parses of known statements, answered without a server connection.
//!
//! libpq's `PQprepare` sends Parse and Sync and blocks its caller until the answer; pgbench
//! `-M prepared` calls it for each command on first use, from the thread that drives all of its
//! clients. In transaction mode a Parse needed a server connection: with every pooled connection
//! held by one of those clients inside a transaction, the thread blocked on a connection that
//! only its own clients could free, and every client failed after `wait_timeout` (found from
//! outside: TPC-B through a pool of 2 ran 2 transactions in 10 s, then aborted).
//!
//! A client between transactions whose batch is only Parses of texts some server prepared
//! without error (and no stale plan retired since), then Sync, is answered here: the statements
//! are recorded and prepared where a Bind or Describe needs them, as after any move to another
//! server connection. A text no server has seen still goes to one, so a syntax error is
//! reported at the Parse as on PostgreSQL; an object dropped since is reported at the Bind.
//!
//! Only in the default scope (no search_path or role of the client's own, nothing unsettled),
//! and only texts prepared without error in that scope between transactions: the pooler does
//! not follow every way a session can change what names resolve to (`SET LOCAL ROLE`, a
//! savepoint rolled back), and a wrong guess here would move a Parse's error to its Bind.

use tokio::io::AsyncWriteExt;

use super::{End, Session, parsed_name, statement_text};
use crate::proto;

/// The most a client's buffer holds while the pooler reads on for a Sync behind known Parses
/// (each read scans it again); past it, the usual path.
const MAX_BUFFERED: usize = 1 << 20;

/// What the front of a client's buffer is, for [`Session::parse_locally`].
pub(super) enum Scan {
    /// Parses the pool knows (their byte ranges and statement ids), then a Sync ending at
    /// byte `.1`: answered here.
    Known(Vec<(std::ops::Range<usize>, u64)>, usize),
    /// Parses the pool knows, the rest not read yet: the session reads on before it takes a
    /// server (the kernel may split a long Parse and its Sync across reads).
    Partial,
    /// Anything else: the usual path.
    Other,
}

impl Session {
    /// Whether the batch at the front of the client's buffer is only Parses of texts the pool
    /// knows, then Sync (see the module).
    pub(super) fn scan_parses(&self) -> Scan {
        if !self.transaction
            || self.lease.is_some()
            || self.cbuf.first() != Some(&b'P')
            || self.cbuf.len() > MAX_BUFFERED
            || self.sharding.is_some()
            || self.deferred_begin
            || !self.track.default_scope()
        {
            return Scan::Other;
        }
        let mut at = 0;
        let mut parses = Vec::new();
        loop {
            let n = match proto::tagged_len(&self.cbuf[at..], self.max) {
                Ok(Some(n)) => n,
                Ok(None) => return Scan::Partial,
                Err(_) => return Scan::Other,
            };
            let msg = &self.cbuf[at..at + n];
            at += n;
            match msg[0] {
                b'S' => return Scan::Known(parses, at),
                b'P' => {
                    let Some((sql, false)) = statement_text(msg) else {
                        return Scan::Other;
                    };
                    if self.pooler.analyzer.effects(sql).is_some() {
                        return Scan::Other;
                    }
                    let id = self.pool.statement_id(parse_body(msg), None);
                    if !self.pool.parses_without_server(id) {
                        return Scan::Other;
                    }
                    parses.push((at - n..at, id));
                }
                _ => return Scan::Other,
            }
        }
    }

    /// Answers the batch at the front of the client's buffer if [`Self::scan_parses`] finds it
    /// known. `None`: nothing was answered.
    pub(super) async fn parse_locally(&mut self) -> Option<Option<End>> {
        let Scan::Known(parses, at) = self.scan_parses() else {
            return None;
        };
        let mut out = bytes::BytesMut::with_capacity(5 * parses.len() + 6);
        for (range, id) in parses {
            let msg = &self.cbuf[range];
            self.setting_statements.remove(parsed_name(msg));
            self.stmts
                .parse_without_server(parsed_name(msg), id, parse_body(msg));
            out.extend_from_slice(b"1\0\0\0\x04");
        }
        proto::ready(&mut out, b'I');
        let _ = self.cbuf.split_to(at);
        Some(match self.client.write_all(&out).await {
            Ok(()) => None,
            Err(_) => Some(End::Client),
        })
    }
}

/// A Parse message's query and parameter types (what follows its statement name).
fn parse_body(msg: &[u8]) -> &[u8] {
    msg.get(5 + parsed_name(msg).len() + 1..)
        .unwrap_or_default()
}
