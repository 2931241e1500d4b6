//! The session's part of sharding. Every statement is routed on its own key, one batch at a
//! time (a batch ends at Sync, Query, FunctionCall or Flush):
//!
//! - With no server held, the batch's statements choose the shard (`shard_decision`). BEGIN is
//!   answered by the pooler and sent ahead of the first statement with a key, so the
//!   transaction runs on that statement's shard. A batch that runs nothing (Parse, Describe —
//!   asyncpg's first use of a statement) runs aside on shard 0 and pins nothing: the Bind that
//!   follows decides. Pipelined Bind/Execute pairs for several shards are split.
//! - With a server held (inside a transaction, or an extended-protocol sequence not yet
//!   synced), each statement must belong on that server's shard (`guard_transaction`);
//!   otherwise the batch is dropped and the server itself fails the transaction with 0A000, so
//!   nothing is written to the wrong shard, the error arrives in order, and the client's
//!   ROLLBACK (or ROLLBACK TO SAVEPOINT) works as on one database.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use super::batch::{self, Exec};
use super::{End, Session};
use crate::failure::Failure;
use crate::proto::{self, Severity};
use crate::settings;
use crate::sharding::{Merge, Plan, ShardingSpec};
use crate::stmt::Sub;

/// What to do with the client's batch in a sharded database when no server is held.
pub(super) enum Decision {
    /// Run it on one shard (the deferred BEGIN goes first).
    Shard(usize),
    /// Run it on any one shard, outside the client's (deferred) transaction: it only prepares
    /// or describes, or reads nothing sharded.
    Aside,
    /// Answer it without a server.
    Local(BytesMut),
    /// Run it on every shard and merge.
    FanOut(Merge),
    /// Run these statements on these shards and add up the counts.
    Split(Vec<(usize, String)>),
    /// Run each statement of the batch on its shard (given in order), one transaction per shard.
    Pipeline(Vec<usize>),
    /// Refuse it with this reason.
    Reject(String),
}

/// A Sync message.
const SYNC: &[u8] = b"S\0\0\0\x04";

impl Session {
    /// Where the client's batch goes.
    pub(super) fn shard_decision(&mut self) -> Decision {
        self.aside_sync = false;
        let Some(spec) = self.sharding.clone() else {
            return Decision::Shard(0);
        };
        self.remember_unnamed();
        let b = batch::read(&self.cbuf, &self.stmts, self.unnamed.as_deref());
        let lower = if b.simple {
            b.first_sql()
                .map(|s| {
                    String::from_utf8_lossy(s)
                        .trim()
                        .trim_end_matches(';')
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        let control = if b.simple {
            transaction_control(&lower)
        } else {
            None
        };
        if control == Some(TxnControl::Begin) {
            // Sent as the client wrote it (isolation level, READ ONLY …) once a shard is known.
            self.begin_sql = b
                .first_sql()
                .map(|s| {
                    String::from_utf8_lossy(s)
                        .trim()
                        .trim_end_matches(';')
                        .to_string()
                })
                .unwrap_or_else(|| "BEGIN".into());
            self.deferred_begin = true;
            let mut out = BytesMut::new();
            proto::command_complete(&mut out, "BEGIN");
            proto::ready(&mut out, b'T');
            return Decision::Local(out);
        }
        if let Some(end) = control {
            let tag = if end == TxnControl::Commit && !self.shard_txn_failed {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            self.deferred_begin = false;
            self.shard_txn_failed = false;
            let mut out = BytesMut::new();
            proto::command_complete(&mut out, tag);
            proto::ready(&mut out, b'I');
            return Decision::Local(out);
        }
        if self.shard_txn_failed {
            let (out, skip) = aborted_answers(&self.cbuf[..b.len]);
            self.skip_to_sync |= skip;
            return Decision::Local(out);
        }
        if b.end.is_none() {
            return Decision::Reject(format!(
                "a batch of over {} MiB without Sync cannot be routed in a sharded database: send Sync more often",
                self.batch_limit() >> 20
            ));
        }
        if b.execs.is_empty() {
            if b.executes_earlier_portal {
                return Decision::Shard(0);
            }
            // Parse, Describe, Close: nothing runs, so nothing is pinned. A batch ended by
            // Flush gets a Sync of our own so that the server can go back once it answered.
            self.aside_sync = b.end == Some(b'H');
            return Decision::Aside;
        }
        let plans: Vec<Plan> = b.execs.iter().map(|e| plan_exec(&spec, e)).collect();
        if let [only] = plans.as_slice() {
            match only {
                Plan::One(s) => return Decision::Shard(*s),
                Plan::Any | Plan::Control => {}
                _ if self.deferred_begin => {
                    return Decision::Reject(
                        "inside a transaction every statement must give the sharding key of one shard"
                            .into(),
                    );
                }
                Plan::FanOut(_) if b.limited || b.end == Some(b'H') => {
                    return Decision::Reject(
                        "a SELECT without the sharding key is fanned out and answered whole: it cannot be read in parts (a row limit on Execute, a cursor) or ended by Flush; add the key to WHERE, or fetch every row with Sync".into(),
                    );
                }
                Plan::FanOut(m) if b.simple || !b.other => return Decision::FanOut(m.clone()),
                Plan::FanOut(_) => {
                    return Decision::Reject(
                        "this protocol sequence cannot be fanned out; send the SELECT as one Parse/Bind/Execute/Sync".into(),
                    );
                }
                Plan::Split(parts) if b.simple => return Decision::Split(parts.clone()),
                Plan::Split(_) => {
                    return Decision::Reject(
                        "a multi-row INSERT spanning shards is split only as a simple query with literal values".into(),
                    );
                }
                Plan::Reject(why) => return Decision::Reject(why.clone()),
            }
        }
        let mut shards: Vec<Option<usize>> = Vec::with_capacity(plans.len());
        let mut control = false;
        for p in &plans {
            match p {
                Plan::One(s) => shards.push(Some(*s)),
                Plan::Any => shards.push(None),
                Plan::Control => {
                    control = true;
                    shards.push(None);
                }
                Plan::FanOut(_) | Plan::Split(_) => {
                    return Decision::Reject(
                        "in a batch of several statements each must give the sharding key of one shard".into(),
                    );
                }
                Plan::Reject(why) => return Decision::Reject(why.clone()),
            }
        }
        let mut distinct: Vec<usize> = shards.iter().flatten().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        let begins = b
            .execs
            .iter()
            .any(|e| e.sql.is_some_and(starts_transaction));
        match distinct.as_slice() {
            // Reads nothing sharded, belongs to no transaction and is complete in itself: any
            // shard answers.
            [] if (!control || !self.deferred_begin) && !begins && b.end != Some(b'H') => {
                Decision::Aside
            }
            // A setting or savepoint inside a transaction belongs to it, and a transaction
            // begun over the extended protocol is not held back: it runs on shard 0.
            [] => Decision::Shard(0),
            [s] => Decision::Shard(*s),
            [a, b_, ..] if self.deferred_begin => Decision::Reject(format!(
                "a transaction runs on one shard, and this batch has statements for shards {a} and {b_}: send them in separate transactions"
            )),
            [lowest, ..] => {
                let splittable = b.end == Some(b'S')
                    && b.syncs == 1
                    && !b.simple
                    && !b.has_named_parse
                    && !b.other
                    && b.execs.iter().all(|e| e.executed);
                if !splittable {
                    return Decision::Reject(
                        "statements for several shards in one batch are split only as Bind/Execute pairs (with unnamed Parses) ended by one Sync".into(),
                    );
                }
                Decision::Pipeline(shards.iter().map(|s| s.unwrap_or(*lowest)).collect())
            }
        }
    }

    /// Sends what must go ahead of the client's batch on the shard just chosen, with its
    /// answers kept from the client: the deferred BEGIN, and the client's unnamed statement
    /// when the batch binds it without parsing it (it was parsed aside, on another server).
    pub(super) fn lead_in(&mut self) {
        if self.deferred_begin {
            self.deferred_begin = false;
            let sql = std::mem::take(&mut self.begin_sql);
            let sql = if sql.is_empty() {
                "BEGIN"
            } else {
                sql.as_str()
            };
            if frontend::query(sql, &mut self.to_server).is_ok() {
                self.swallow_z += 1;
            }
        }
        let earlier = batch::read(&self.cbuf, &self.stmts, self.unnamed.as_deref())
            .execs
            .iter()
            .any(|e| e.earlier_unnamed);
        if let (true, Some(body), Some(lease)) = (earlier, &self.unnamed, self.lease.as_mut()) {
            let mut parse = BytesMut::new();
            proto::message(&mut parse, b'P', |o| {
                o.put_u8(0);
                o.put_slice(body);
            });
            self.stmts.client_message(
                &parse,
                &mut lease.conn.prepared,
                (|_| 0, |_| crate::stmt::Lazy::Fresh),
                &mut self.to_server,
                Sub::Forward,
            );
            self.swallow_parse += 1;
        }
    }

    /// Keeps the body of the batch's unnamed Parse, if it has one: a later batch may bind it.
    fn remember_unnamed(&mut self) {
        let found = batch::read(&self.cbuf, &self.stmts, None)
            .unnamed_parse
            .map(Bytes::copy_from_slice);
        if found.is_some() {
            self.unnamed = found;
        }
    }

    /// With a server held on a shard: `None` lets the batch through (every statement belongs on
    /// that shard, or on none in particular); otherwise the batch is dropped, the server is
    /// made to fail the transaction with 0A000 and the result of writing that is returned.
    pub(super) async fn guard_transaction(&mut self) -> Option<Option<End>> {
        let spec = self.sharding.clone()?;
        let shard = self.lease.as_ref()?.host;
        if self.skip_to_sync {
            return Some(self.skip_until_sync().await);
        }
        self.remember_unnamed();
        if self.status == b'E' || self.copy_in {
            // The server refuses everything but the end of the transaction by itself.
            return None;
        }
        let b = batch::read(&self.cbuf, &self.stmts, self.unnamed.as_deref());
        let why = b.execs.iter().find_map(|e| match plan_exec(&spec, e) {
            Plan::One(s) if s == shard => None,
            Plan::Any | Plan::Control => None,
            Plan::One(s) => Some(format!(
                "this transaction runs on shard {shard} and a statement for shard {s} cannot join it (a transaction spans one shard): roll back, then run each shard's statements in a transaction of its own"
            )),
            Plan::FanOut(_) | Plan::Split(_) => Some(format!(
                "inside a transaction every statement must give the sharding key of the transaction's shard ({shard}); this one would run on several shards"
            )),
            Plan::Reject(why) => Some(why),
        })?;
        let (len, end) = (b.len, b.end);
        self.cbuf.advance(len);
        tracing::debug!(shard, why, "statement refused inside a sharded transaction");
        Some(self.fail_on_server(&why, end).await)
    }

    /// Makes the server fail the current transaction (or implicit extended-protocol
    /// transaction) with 0A000 and `why`. The ErrorResponse reaches the client in order; after
    /// a Flush-ended batch the server's ReadyForQuery is kept back and the client's messages
    /// up to its Sync are dropped, as PostgreSQL does after an error.
    pub(super) async fn fail_on_server(&mut self, why: &str, end: Option<u8>) -> Option<End> {
        let mut q = BytesMut::new();
        if frontend::query(&raise_sql(why), &mut q).is_err() {
            return Some(End::Fatal(Failure::NotSupported(why.to_string())));
        }
        // Not before the end of a batch too long to hold (`waits_for_batch`): its rest is
        // skipped to the Sync, as after a Flush.
        let forwarded = matches!(end, Some(e) if e != b'H');
        if !forwarded {
            self.skip_to_sync = true;
        }
        let r = self.send_own(&q, forwarded).await;
        // Until the client's Sync, the server is in an unsynced sequence.
        self.unsynced = !forwarded;
        r
    }

    /// After a refused Flush-ended batch: drops the client's messages up to its Sync, which
    /// goes on to the server (whose ReadyForQuery then ends the client's failed sequence).
    async fn skip_until_sync(&mut self) -> Option<End> {
        match self.drop_to_sync() {
            Err(end) => return Some(end),
            Ok(false) => return None,
            Ok(true) => {}
        }
        self.skip_to_sync = false;
        self.send_own(SYNC, true).await
    }

    /// Sends a message of ours that the server answers with a ReadyForQuery (Sync, Query)
    /// to the held server; that ReadyForQuery is forwarded to the client when `answered`
    /// (it stands for one the client waits for), else kept back.
    async fn send_own(&mut self, msg: &[u8], answered: bool) -> Option<End> {
        let lease = self.lease.as_mut()?;
        self.stmts.client_message(
            msg,
            &mut lease.conn.prepared,
            (|_| 0, |_| crate::stmt::Lazy::Fresh),
            &mut self.to_server,
            Sub::Forward,
        );
        if answered {
            self.pending_z += 1;
        } else {
            self.swallow_lone_z += 1;
        }
        self.unsynced = false;
        let r = lease.conn.stream.write_all(&self.to_server).await;
        self.to_server.clear();
        r.err().map(|e| End::ServerLost(e.to_string()))
    }

    /// Ends a Flush-ended describe-only batch that ran aside with a Sync of our own, so the
    /// server can go back to the pool once it has answered.
    pub(super) async fn close_aside(&mut self) -> Option<End> {
        if !std::mem::take(&mut self.aside_sync) {
            return None;
        }
        self.send_own(SYNC, false).await
    }
}

/// What PostgreSQL answers `batch` with in an aborted transaction block: each segment that
/// runs anything (a Query, or Parse/Bind/Execute… before its Sync) gets 25P02, each Sync or
/// Query a ReadyForQuery 'E'; a lone Sync only its ReadyForQuery, a lone Flush nothing. Also
/// whether a Flush-ended segment failed, so that the client's messages up to its Sync are to
/// be dropped (PostgreSQL skips them after an error).
fn aborted_answers(batch: &[u8]) -> (BytesMut, bool) {
    let mut out = BytesMut::new();
    let aborted = |out: &mut BytesMut| {
        proto::error(
            out,
            Severity::Error,
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block",
        );
    };
    let mut runs = false;
    for (tag, _) in proto::messages(batch) {
        match tag {
            b'S' | b'Q' => {
                if runs || tag == b'Q' {
                    aborted(&mut out);
                }
                proto::ready(&mut out, b'E');
                runs = false;
            }
            b'H' => {}
            _ => runs = true,
        }
    }
    if runs {
        aborted(&mut out);
    }
    (out, runs)
}

/// The plan of one statement of a batch.
fn plan_exec(spec: &ShardingSpec, e: &Exec<'_>) -> Plan {
    let Some(sql) = e.sql else {
        return Plan::Reject(
            "cannot find the statement to route (a Bind of a statement not parsed on this connection)"
                .into(),
        );
    };
    let text = String::from_utf8_lossy(sql);
    match spec.plan(&text, &e.params) {
        Plan::Reject(why) => {
            let lower = text.trim().to_ascii_lowercase();
            if lower.starts_with("show") {
                Plan::Any
            } else if settings::classify(&lower).is_some() {
                Plan::Control
            } else {
                Plan::Reject(why)
            }
        }
        plan => plan,
    }
}

/// A simple query that only begins or ends a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxnControl {
    Begin,
    Commit,
    Rollback,
}

/// What `lower` (a lower-cased simple query) does, when it is one statement that only begins
/// a transaction or ends one (not `ROLLBACK TO SAVEPOINT`, `AND CHAIN` or `COMMIT PREPARED`,
/// which go to the server).
fn transaction_control(lower: &str) -> Option<TxnControl> {
    if lower.contains(';') {
        return None;
    }
    let words: Vec<&str> = lower.split_whitespace().collect();
    let (first, rest) = words.split_first()?;
    let rest: Vec<&str> = rest
        .iter()
        .copied()
        .filter(|w| !matches!(*w, "work" | "transaction"))
        .collect();
    let plain = rest.is_empty() || rest == ["and", "no", "chain"];
    match *first {
        "begin" => Some(TxnControl::Begin),
        "start" if words.get(1) == Some(&"transaction") => Some(TxnControl::Begin),
        "commit" | "end" if plain => Some(TxnControl::Commit),
        "rollback" | "abort" if plain => Some(TxnControl::Rollback),
        _ => None,
    }
}

/// Whether `sql` is BEGIN or START TRANSACTION.
fn starts_transaction(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql);
    let first = text.split_whitespace().next().unwrap_or("");
    let first = first.trim_end_matches(';');
    first.eq_ignore_ascii_case("begin") || first.eq_ignore_ascii_case("start")
}

/// A statement that fails with 0A000 and `why` on the server (PL/pgSQL's RAISE).
fn raise_sql(why: &str) -> String {
    // Every `$` is followed by a space, so the text cannot close the `$sg$` quote.
    let msg = why.replace('\'', "''").replace('$', "$ ");
    format!("DO $sg$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '{msg}'; END $sg$")
}

/// 0A000 with `why` and a ReadyForQuery with status I.
pub(super) fn reject_bytes(why: &str) -> BytesMut {
    let mut out = BytesMut::new();
    Failure::NotSupported(why.to_string()).write(&mut out, Severity::Error);
    proto::ready(&mut out, b'I');
    out
}

/// Appends an unnamed-statement Parse/Bind/Describe?/Execute of `parse` with the values of the
/// client's Bind body `bind` (its portal and statement names replaced by the unnamed ones).
pub(super) fn unnamed_execute(
    req: &mut BytesMut,
    parse: Option<&[u8]>,
    bind: &[u8],
    describe: bool,
) {
    if let Some(parse) = parse {
        proto::message(req, b'P', |o| {
            o.put_u8(0);
            o.put_slice(parse);
        });
    }
    let mut rest = bind;
    let _ = proto::cbytes(&mut rest);
    let _ = proto::cbytes(&mut rest);
    proto::message(req, b'B', |o| {
        o.put_u8(0);
        o.put_u8(0);
        o.put_slice(rest);
    });
    if describe {
        proto::message(req, b'D', |o| {
            o.put_u8(b'P');
            o.put_u8(0);
        });
    }
    proto::message(req, b'E', |o| {
        o.put_u8(0);
        o.put_i32(0);
    });
}

#[cfg(test)]
mod tests {
    use super::raise_sql;

    #[test]
    fn an_aborted_transaction_answers_as_postgresql_does() {
        use super::{aborted_answers, proto};
        let m = |tag: u8| vec![tag, 0, 0, 0, 4];
        let tags = |out: &[u8]| -> Vec<u8> { proto::messages(out).map(|(t, _)| t).collect() };
        // A Flush alone after the refusal: nothing (it was E, Z: two ReadyForQuery for one Sync).
        let (out, skip) = aborted_answers(&m(b'H'));
        assert_eq!((tags(&out), skip), (vec![], false));
        let (out, skip) = aborted_answers(&m(b'S'));
        assert_eq!((tags(&out), skip), (vec![b'Z'], false));
        let batch = [m(b'E'), m(b'S'), m(b'E'), m(b'S')].concat();
        let (out, _) = aborted_answers(&batch);
        assert_eq!(tags(&out), vec![b'E', b'Z', b'E', b'Z']);
        let (out, skip) = aborted_answers(&[m(b'E'), m(b'H')].concat());
        assert_eq!((tags(&out), skip), (vec![b'E'], true));
    }

    #[test]
    fn only_plain_transaction_control_is_answered_by_the_pooler() {
        use super::{TxnControl, transaction_control as tc};
        assert_eq!(tc("begin"), Some(TxnControl::Begin));
        assert_eq!(
            tc("begin isolation level serializable"),
            Some(TxnControl::Begin)
        );
        assert_eq!(tc("start transaction read only"), Some(TxnControl::Begin));
        assert_eq!(tc("commit work"), Some(TxnControl::Commit));
        assert_eq!(tc("end"), Some(TxnControl::Commit));
        assert_eq!(tc("abort transaction"), Some(TxnControl::Rollback));
        for other in [
            "begin ; update users set a = 1 where user_id = 1",
            "rollback to savepoint a",
            "rollback to a",
            "commit prepared 'x'",
            "commit and chain",
            "start",
            "select 1",
        ] {
            assert_eq!(tc(other), None, "{other}");
        }
    }

    #[test]
    fn refusal_text_cannot_break_out_of_its_literal() {
        let sql = raise_sql("table o'brien $sg$; DROP TABLE x; --");
        assert!(sql.contains("o''brien"));
        assert_eq!(sql.matches("$sg$").count(), 2, "{sql}");
    }
}
