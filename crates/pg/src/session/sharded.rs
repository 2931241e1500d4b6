//! The session's part of sharding: deciding a transaction's shard from the client's batch,
//! answering BEGIN/COMMIT locally until a statement names the shard, and running fanned-out
//! SELECTs and split INSERTs on every shard involved with the results merged into one answer.

use std::cmp::Ordering;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{End, Session};
use crate::pool::Route;
use crate::proto::{self, Severity};
use crate::server::ServerConn;
use crate::settings;
use crate::sharding::{Merge, Param, Plan, SortKey};

/// What to do with the client's batch in a sharded database.
pub(super) enum Decision {
    /// Run it on one shard.
    Shard(usize),
    /// Run it on this shard outside the client's (deferred) transaction: it only prepares or
    /// describes, or changes settings.
    Aside(usize),
    /// Answer it without a server.
    Local(BytesMut),
    /// Run it on every shard and merge.
    FanOut(Merge),
    /// Run these statements on these shards and add up the counts.
    Split(Vec<(usize, String)>),
    /// Refuse it with this reason.
    Reject(String),
}

/// What the pooler needs to know about the client's batch.
struct Batch<'a> {
    /// Bytes up to and including the message that ends the batch.
    len: usize,
    sql: Option<&'a [u8]>,
    /// The Parse body (query and types) for extended fan-out.
    parse_body: Option<&'a [u8]>,
    bind: Option<&'a [u8]>,
    params: Vec<Param>,
    simple: bool,
    executes: bool,
    has_parse: bool,
    has_describe: bool,
    other: bool,
    syncs: usize,
}

fn parse_bind_params(body: &[u8]) -> Vec<Param> {
    let mut b = body;
    let (Some(_), Some(_)) = (proto::cbytes(&mut b), proto::cbytes(&mut b)) else {
        return Vec::new();
    };
    if b.len() < 2 {
        return Vec::new();
    }
    let nfmt = b.get_i16().max(0) as usize;
    if b.len() < nfmt * 2 + 2 {
        return Vec::new();
    }
    let formats: Vec<i16> = (0..nfmt).map(|_| b.get_i16()).collect();
    let n = b.get_i16().max(0) as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if b.len() < 4 {
            break;
        }
        let len = b.get_i32();
        let value = if len < 0 {
            None
        } else {
            let len = len as usize;
            if b.len() < len {
                break;
            }
            let v = b[..len].to_vec();
            b.advance(len);
            Some(v)
        };
        let binary = match nfmt {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i) == Some(&1),
        };
        out.push(Param { value, binary });
    }
    out
}

impl Session {
    fn batch(&self) -> Batch<'_> {
        let mut b = Batch {
            len: 0,
            sql: None,
            parse_body: None,
            bind: None,
            params: Vec::new(),
            simple: false,
            executes: false,
            has_parse: false,
            has_describe: false,
            other: false,
            syncs: 0,
        };
        for (tag, msg) in proto::messages(&self.cbuf) {
            b.len += msg.len();
            let mut body = &msg[5..];
            match tag {
                b'Q' => {
                    b.simple = true;
                    b.executes = true;
                    b.syncs += 1;
                    b.sql = b.sql.or_else(|| proto::cbytes(&mut body));
                }
                b'P' => {
                    b.has_parse = true;
                    let _ = proto::cbytes(&mut body);
                    b.parse_body = b.parse_body.or(Some(body));
                    b.sql = b.sql.or_else(|| proto::cbytes(&mut body));
                }
                b'B' => {
                    b.bind = b.bind.or(Some(&msg[5..]));
                    if b.params.is_empty() {
                        b.params = parse_bind_params(&msg[5..]);
                    }
                    let _ = proto::cbytes(&mut body);
                    if let Some(name) = proto::cbytes(&mut body)
                        && b.sql.is_none()
                    {
                        b.sql = self.stmts.query_of(name);
                        b.parse_body = self.stmts.body_of(name);
                    }
                }
                b'D' => {
                    b.has_describe = true;
                    if msg.get(5) != Some(&b'P') {
                        b.other = true;
                    }
                }
                b'E' => b.executes = true,
                b'S' | b'F' => b.syncs += 1,
                b'H' => {}
                _ => b.other = true,
            }
            if matches!(tag, b'S' | b'Q' | b'F' | b'H') {
                break;
            }
        }
        b
    }

    /// Where the client's batch goes.
    pub(super) fn shard_decision(&mut self) -> Decision {
        let Some(spec) = self.sharding.clone() else {
            return Decision::Shard(0);
        };
        let b = self.batch();
        let text = b.sql.map(|s| String::from_utf8_lossy(s).into_owned());
        let lower = text
            .as_deref()
            .map(|t| t.trim().trim_end_matches(';').trim().to_ascii_lowercase())
            .unwrap_or_default();
        let first = lower.split_whitespace().next().unwrap_or("");
        if b.simple && matches!(first, "begin" | "start") {
            self.deferred_begin = true;
            let mut out = BytesMut::new();
            proto::command_complete(&mut out, "BEGIN");
            proto::ready(&mut out, b'T');
            return Decision::Local(out);
        }
        if b.simple && matches!(first, "commit" | "end" | "rollback" | "abort") {
            let tag = if matches!(first, "commit" | "end") && !self.shard_txn_failed {
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
            let mut out = BytesMut::new();
            proto::error(
                &mut out,
                Severity::Error,
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            );
            for _ in 0..b.syncs.max(1) {
                proto::ready(&mut out, b'E');
            }
            return Decision::Local(out);
        }
        // Settings, SHOW and describe-only batches need a server but no particular shard.
        if !b.executes {
            return Decision::Aside(0);
        }
        if first == "show" || settings::classify(&lower).is_some() {
            return Decision::Shard(0);
        }
        let Some(text) = text else {
            return Decision::Reject("cannot find the statement to route".into());
        };
        let plan = spec.plan(&text, &b.params);
        tracing::debug!(sql = %text, ?plan, "shard plan");
        match plan {
            Plan::One(s) => Decision::Shard(s),
            _ if self.deferred_begin => Decision::Reject(
                "inside a transaction every statement must give the sharding key of one shard"
                    .into(),
            ),
            Plan::FanOut(m) if b.simple || !b.other => Decision::FanOut(m),
            Plan::FanOut(_) => Decision::Reject(
                "this protocol sequence cannot be fanned out; send the SELECT as one Parse/Bind/Execute/Sync".into(),
            ),
            Plan::Split(parts) if b.simple => Decision::Split(parts),
            Plan::Split(_) => Decision::Reject(
                "a multi-row INSERT spanning shards is split only as a simple query with literal values".into(),
            ),
            Plan::Reject(why) => Decision::Reject(why),
        }
    }

    /// Sends the client's deferred BEGIN ahead of its batch; its answers are swallowed.
    pub(super) fn inject_deferred_begin(&mut self) {
        if self.deferred_begin {
            self.deferred_begin = false;
            if frontend::query("BEGIN", &mut self.to_server).is_ok() {
                self.swallow_z += 1;
            }
        }
    }

    /// Handles a batch that does not simply go to one shard.
    pub(super) async fn shard_locally(&mut self, d: Decision) -> Option<End> {
        let batch_len = self.batch().len;
        let syncs = self.batch().syncs.max(1);
        let out = match d {
            Decision::Shard(_) | Decision::Aside(_) => return None,
            Decision::Local(out) => out,
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
                out
            }
            Decision::FanOut(merge) => match self.fan_out(Some(merge), Vec::new()).await {
                Ok(out) => out,
                Err(end) => return Some(end),
            },
            Decision::Split(parts) => match self.fan_out(None, parts).await {
                Ok(out) => out,
                Err(end) => return Some(end),
            },
        };
        self.cbuf.advance(batch_len);
        match self.client.write_all(&out).await {
            Ok(()) => None,
            Err(_) => Some(End::Client),
        }
    }

    /// Runs the batch on several shards: the same SELECT on all of them (`merge`), or one
    /// INSERT per shard (`parts`). Returns the merged answer for the client.
    async fn fan_out(
        &mut self,
        merge: Option<Merge>,
        parts: Vec<(usize, String)>,
    ) -> Result<BytesMut, End> {
        let b = self.batch();
        let shards = self.pool.topology.hosts.len();
        let mut requests: Vec<(usize, BytesMut)> = Vec::new();
        if merge.is_none() {
            for (s, sql) in &parts {
                let mut q = BytesMut::new();
                let _ = frontend::query(sql, &mut q);
                requests.push((*s, q));
            }
        } else if b.simple {
            for s in 0..shards {
                requests.push((s, BytesMut::from(&self.cbuf[..b.len])));
            }
        } else {
            let (Some(parse), Some(bind)) = (b.parse_body, b.bind) else {
                return Ok(reject_bytes("cannot fan out: the statement is unknown"));
            };
            let mut req = BytesMut::new();
            proto::message(&mut req, b'P', |o| {
                o.put_u8(0);
                o.put_slice(parse);
            });
            let mut rest = bind;
            let _ = proto::cbytes(&mut rest);
            let _ = proto::cbytes(&mut rest);
            proto::message(&mut req, b'B', |o| {
                o.put_u8(0);
                o.put_u8(0);
                o.put_slice(rest);
            });
            proto::message(&mut req, b'D', |o| {
                o.put_u8(b'P');
                o.put_u8(0);
            });
            proto::message(&mut req, b'E', |o| {
                o.put_u8(0);
                o.put_i32(0);
            });
            frontend::sync(&mut req);
            for s in 0..shards {
                requests.push((s, req.clone()));
            }
        }
        let (simple, has_parse, has_describe) = (b.simple, b.has_parse, b.has_describe);
        let mut answers: Vec<Vec<Bytes>> = Vec::new();
        for (shard, req) in requests {
            let mut lease = match self.lease_on(Route::Shard(shard)).await {
                Ok(l) => l,
                Err(e) => {
                    let mut out = BytesMut::new();
                    proto::error(&mut out, Severity::Error, e.sqlstate(), &e.to_string());
                    proto::ready(&mut out, b'I');
                    return Ok(out);
                }
            };
            match roundtrip(&mut lease.conn, &req).await {
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
        let Some(merge) = merge else {
            let total: u64 = answers
                .iter()
                .flatten()
                .filter(|m| m[0] == b'C')
                .filter_map(|m| command_count(m))
                .sum();
            proto::command_complete(&mut out, &format!("INSERT 0 {total}"));
            proto::ready(&mut out, b'I');
            return Ok(out);
        };
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

fn reject_bytes(why: &str) -> BytesMut {
    let mut out = BytesMut::new();
    proto::error(&mut out, Severity::Error, "0A000", why);
    proto::ready(&mut out, b'I');
    out
}

/// Sends `req` and collects the server's messages up to ReadyForQuery.
async fn roundtrip(conn: &mut ServerConn, req: &[u8]) -> std::io::Result<Vec<Bytes>> {
    conn.stream.write_all(req).await?;
    let mut out = Vec::new();
    loop {
        let mut consumed = 0;
        let mut done = false;
        for (tag, m) in proto::messages(&conn.buf) {
            consumed += m.len();
            out.push(Bytes::copy_from_slice(m));
            if tag == b'Z' {
                done = true;
                break;
            }
        }
        conn.buf.advance(consumed);
        if done {
            return Ok(out);
        }
        if conn.stream.read_buf(&mut conn.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The row count at the end of a CommandComplete tag ("INSERT 0 3" → 3).
fn command_count(m: &[u8]) -> Option<u64> {
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
