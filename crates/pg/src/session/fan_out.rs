//! Batches that do not simply go to one shard: answered locally, refused, fanned out to every
//! shard with the rows merged into one answer, or split over shards (`split.rs`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::batch;
use super::merge::merge_rows;
use super::sharded::{Decision, reject_bytes, unnamed_execute};
use super::{End, Session};
use crate::failure::Failure;
use crate::pool::Route;
use crate::proto::{self, Severity};
use crate::server::ServerConn;
use crate::sharding::Merge;

impl Session {
    /// Handles a batch that does not simply go to one shard.
    pub(super) async fn shard_locally(&mut self, d: Decision) -> Option<End> {
        let (batch_len, syncs, flushed) = {
            let b = batch::read(&self.cbuf, &self.stmts, self.unnamed.as_deref());
            // A batch refused before its end (too long to hold, `waits_for_batch`) is skipped
            // to its Sync as one ended by Flush.
            let flushed = matches!(b.end, Some(b'H') | None);
            (b.len, if flushed { 0 } else { b.syncs.max(1) }, flushed)
        };
        let out = match d {
            Decision::Shard(_) | Decision::Aside => return None,
            Decision::Local(out) => Ok(out),
            Decision::Reject(why) => {
                let status = if self.deferred_begin {
                    self.shard_txn_failed = true;
                    b'E'
                } else {
                    b'I'
                };
                let mut out = BytesMut::new();
                Failure::NotSupported(why.to_string()).write(&mut out, Severity::Error);
                for _ in 0..syncs {
                    proto::ready(&mut out, status);
                }
                // After an error in a sequence ended by Flush, PostgreSQL skips to the Sync
                // and only that gets a ReadyForQuery.
                self.skip_to_sync |= flushed;
                Ok(out)
            }
            Decision::FanOut(merge) => self.fan_out(merge).await,
            Decision::Split(parts) => self.split_insert(parts).await,
            Decision::Pipeline(shards) => self.pipeline(&shards).await,
        };
        let out = match out {
            Ok(out) => out,
            Err(end) => return Some(end),
        };
        self.cbuf.advance(batch_len);
        match self.client.write_all(&out).await {
            Ok(()) => None,
            Err(_) => Some(End::Client),
        }
    }

    /// After a refusal of a Flush-ended sequence with no server held: drops the client's
    /// messages up to its Sync, which is answered with a ReadyForQuery.
    pub(super) async fn skip_locally_to_sync(&mut self) -> Option<End> {
        match self.drop_to_sync() {
            Err(end) => return Some(end),
            Ok(false) => return None,
            Ok(true) => {}
        }
        self.skip_to_sync = false;
        let mut out = BytesMut::new();
        proto::ready(&mut out, if self.deferred_begin { b'E' } else { b'I' });
        self.client.write_all(&out).await.err().map(|_| End::Client)
    }

    /// Drops the client's messages up to and including its Sync: whether the Sync came (else
    /// what arrived so far is dropped and more is awaited), or the end of a Terminate.
    pub(super) fn drop_to_sync(&mut self) -> Result<bool, End> {
        let mut consumed = 0;
        let mut synced = false;
        for (tag, msg) in proto::messages(&self.cbuf) {
            consumed += msg.len();
            match tag {
                b'X' => return Err(End::Client),
                b'S' => {
                    synced = true;
                    break;
                }
                _ => {}
            }
        }
        self.cbuf.advance(consumed);
        Ok(synced)
    }

    /// Runs the batch's SELECT on every shard, one after the other, and merges the rows.
    async fn fan_out(&mut self, merge: Merge) -> Result<BytesMut, End> {
        let b = batch::read(&self.cbuf, &self.stmts, self.unnamed.as_deref());
        let shards = self.pool.topology.hosts.len();
        let req = if b.simple {
            BytesMut::from(&self.cbuf[..b.len])
        } else {
            let Some(exec) = b.execs.first() else {
                return Ok(reject_bytes("cannot fan out: no statement"));
            };
            let (Some(parse), Some(bind)) = (exec.parse_body, exec.bind) else {
                return Ok(reject_bytes("cannot fan out: the statement is unknown"));
            };
            let mut req = BytesMut::new();
            unnamed_execute(&mut req, Some(parse), bind, true);
            proto::message(&mut req, b'S', |_| {});
            req
        };
        let (simple, has_parse, has_describe) = (b.simple, b.has_parse, b.has_describe);
        let mut answers: Vec<Vec<Bytes>> = Vec::new();
        for shard in 0..shards {
            let mut lease = match self.lease_on(Route::Shard(shard)).await {
                Ok(l) => l,
                Err(e) => {
                    let mut out = BytesMut::new();
                    Failure::from(&e).write(&mut out, Severity::Error);
                    proto::ready(&mut out, b'I');
                    return Ok(out);
                }
            };
            match roundtrip(&mut lease.conn, &req, 1).await {
                Ok(msgs) => {
                    let idle = msgs.last().and_then(|m| m.get(5)) == Some(&b'I');
                    self.pool.release(lease, idle);
                    answers.push(msgs);
                }
                Err(e) => {
                    self.pool.release(lease, false);
                    return Err(End::ServerLost(e.to_string()));
                }
            }
        }
        let mut out = BytesMut::new();
        if let Some(err) = answers.iter().flatten().find(|m| m[0] == b'E') {
            out.put_slice(err);
            proto::ready(&mut out, b'I');
            return Ok(out);
        }
        let first = answers.first().cloned().unwrap_or_default();
        let desc = first.iter().find(|m| m[0] == b'T').cloned();
        let rows: Vec<Bytes> = answers
            .iter()
            .flatten()
            .filter(|m| m[0] == b'D')
            .cloned()
            .collect();
        let rows = match merge_rows(desc.as_deref(), rows, &merge) {
            Ok(rows) => rows,
            Err(why) => return Ok(reject_bytes(&why)),
        };
        if !simple {
            if has_parse {
                out.put_slice(b"1\0\0\0\x04");
            }
            out.put_slice(b"2\0\0\0\x04");
        }
        if (simple || has_describe)
            && let Some(d) = &desc
        {
            out.put_slice(d);
        }
        for r in &rows {
            out.put_slice(r);
        }
        proto::command_complete(&mut out, &format!("SELECT {}", rows.len()));
        proto::ready(&mut out, b'I');
        Ok(out)
    }
}

/// Sends `req` and collects the server's messages up to its `readies`-th ReadyForQuery.
pub(super) async fn roundtrip(
    conn: &mut ServerConn,
    req: &[u8],
    readies: usize,
) -> std::io::Result<Vec<Bytes>> {
    conn.stream.write_all(req).await?;
    let mut out = Vec::new();
    let mut left = readies;
    loop {
        let mut consumed = 0;
        for (tag, m) in proto::messages(&conn.buf) {
            consumed += m.len();
            out.push(Bytes::copy_from_slice(m));
            if tag == b'Z' {
                left = left.saturating_sub(1);
                if left == 0 {
                    break;
                }
            }
        }
        conn.buf.advance(consumed);
        if left == 0 {
            return Ok(out);
        }
        if conn.stream.read_buf(&mut conn.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The row count at the end of a CommandComplete tag ("INSERT 0 3" → 3).
pub(super) fn command_count(m: &[u8]) -> Option<u64> {
    let tag = std::str::from_utf8(m.get(5..m.len().saturating_sub(1))?).ok()?;
    tag.rsplit(' ').next()?.parse().ok()
}
