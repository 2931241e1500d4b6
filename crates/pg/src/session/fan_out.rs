//! Batches that do not simply go to one shard: answered locally, refused, fanned out to every
//! shard with the rows merged into one answer, or split over shards (`split.rs`).

use std::cmp::Ordering;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::batch;
use super::sharded::{Decision, reject_bytes, unnamed_execute};
use super::{End, Session};
use crate::pool::Route;
use crate::proto::{self, Severity};
use crate::server::ServerConn;
use crate::sharding::{Merge, SortKey};

impl Session {
    /// Handles a batch that does not simply go to one shard.
    pub(super) async fn shard_locally(&mut self, d: Decision) -> Option<End> {
        let (batch_len, syncs) = {
            let b = batch::read(&self.cbuf, &self.stmts);
            (b.len, b.syncs.max(1))
        };
        let out = match d {
            Decision::Shard(_) | Decision::Aside(_) => return None,
            Decision::Local(out) => Ok(out),
            Decision::Reject(why) => {
                let status = if self.deferred_begin {
                    self.shard_txn_failed = true;
                    b'E'
                } else {
                    b'I'
                };
                let mut out = BytesMut::new();
                proto::error(&mut out, Severity::Error, "0A000", &why);
                for _ in 0..syncs {
                    proto::ready(&mut out, status);
                }
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

    /// Runs the batch's SELECT on every shard, one after the other, and merges the rows.
    async fn fan_out(&mut self, merge: Merge) -> Result<BytesMut, End> {
        let b = batch::read(&self.cbuf, &self.stmts);
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
                    proto::error(&mut out, Severity::Error, e.sqlstate(), &e.to_string());
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
        let mut rows: Vec<Bytes> = answers
            .iter()
            .flatten()
            .filter(|m| m[0] == b'D')
            .cloned()
            .collect();
        if !merge.order_by.is_empty() {
            let Some(cols) = desc.as_deref().map(columns) else {
                return Ok(reject_bytes(
                    "cannot merge ORDER BY without a row description",
                ));
            };
            let mut keys = Vec::new();
            for (k, desc) in &merge.order_by {
                let idx = match k {
                    SortKey::Position(p) => p.checked_sub(1),
                    SortKey::Name(n) => cols.iter().position(|c| &c.0 == n),
                };
                match idx.and_then(|i| cols.get(i).map(|c| (i, c.1, c.2, *desc))) {
                    Some(k) => keys.push(k),
                    None => {
                        return Ok(reject_bytes(
                            "a fanned-out ORDER BY column must be in the select list",
                        ));
                    }
                }
            }
            rows.sort_by(|a, b| {
                let (va, vb) = (values(a), values(b));
                for &(i, oid, binary, desc) in &keys {
                    let o = compare(
                        va.get(i).copied().flatten(),
                        vb.get(i).copied().flatten(),
                        oid,
                        binary,
                    );
                    let o = if desc { o.reverse() } else { o };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            });
        }
        if let Some(l) = merge.limit {
            rows.truncate(l as usize);
        }
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

/// The item count that opens a RowDescription or DataRow body, and what follows it.
fn counted(m: &[u8]) -> Option<(i16, &[u8])> {
    let mut b = m.get(5..)?;
    if b.len() < 2 {
        return None;
    }
    Some((b.get_i16().max(0), b))
}

/// (name, type oid, binary) of each column of a RowDescription.
fn columns(m: &[u8]) -> Vec<(String, i32, bool)> {
    let Some((n, mut b)) = counted(m) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for _ in 0..n {
        let Some(name) = proto::cstr(&mut b) else {
            break;
        };
        if b.len() < 18 {
            break;
        }
        b.advance(6);
        let oid = b.get_i32();
        b.advance(6);
        let format = b.get_i16();
        out.push((name, oid, format == 1));
    }
    out
}

/// The values of a DataRow.
fn values(m: &[u8]) -> Vec<Option<&[u8]>> {
    let Some((n, mut b)) = counted(m) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for _ in 0..n {
        if b.len() < 4 {
            break;
        }
        let len = b.get_i32();
        if len < 0 {
            out.push(None);
        } else {
            let len = (len as usize).min(b.len());
            out.push(Some(&b[..len]));
            b.advance(len);
        }
    }
    out
}

/// Orders two values of type `oid`; NULLs sort last (ascending), as in PostgreSQL.
fn compare(a: Option<&[u8]>, b: Option<&[u8]>, oid: i32, binary: bool) -> Ordering {
    let (a, b) = match (a, b) {
        (None, None) => return Ordering::Equal,
        (None, Some(_)) => return Ordering::Greater,
        (Some(_), None) => return Ordering::Less,
        (Some(a), Some(b)) => (a, b),
    };
    const INTS: [i32; 3] = [20, 21, 23];
    const FLOATS: [i32; 3] = [700, 701, 1700];
    let num = |v: &[u8]| -> Option<f64> {
        if binary {
            match (oid, v.len()) {
                (20, 8) => Some(i64::from_be_bytes(v.try_into().ok()?) as f64),
                (23, 4) => Some(f64::from(i32::from_be_bytes(v.try_into().ok()?))),
                (21, 2) => Some(f64::from(i16::from_be_bytes(v.try_into().ok()?))),
                (701, 8) => Some(f64::from_be_bytes(v.try_into().ok()?)),
                (700, 4) => Some(f64::from(f32::from_be_bytes(v.try_into().ok()?))),
                _ => None,
            }
        } else {
            std::str::from_utf8(v).ok()?.trim().parse().ok()
        }
    };
    if (INTS.contains(&oid) || FLOATS.contains(&oid))
        && let (Some(x), Some(y)) = (num(a), num(b))
    {
        return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    }
    a.cmp(b)
}
