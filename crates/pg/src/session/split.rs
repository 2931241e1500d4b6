//! One client batch split over shards: a multi-row INSERT with rows for several shards, or
//! pipelined Bind/Execute pairs (asyncpg's `executemany`) whose keys name several shards.
//! Each shard's part runs in a transaction of its own, all parts first; then every shard
//! commits when no part failed, else every shard rolls back — so a failed batch leaves
//! nothing behind, as it would on one database. Only a COMMIT that fails after another shard
//! committed can leave part of the batch; the client is then told so (40003).

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;

use super::batch;
use super::fan_out::{command_count, roundtrip};
use super::sharded::{reject_bytes, unnamed_execute};
use super::{End, Session};
use crate::failure::Failure;
use crate::pool::{Lease, Route};
use crate::proto::{self, Severity};

/// Each shard's answers to its part, ending with the part's ReadyForQuery (the answers to
/// the BEGIN sent before it are left out), or what to tell the client instead.
enum Run {
    Answered(Vec<(usize, Vec<Bytes>)>),
    Refused(BytesMut),
}

impl Session {
    /// A multi-row INSERT split by key: the rows of each shard as one statement there.
    pub(super) async fn split_insert(
        &mut self,
        parts: Vec<(usize, String)>,
    ) -> Result<BytesMut, End> {
        let mut work = Vec::new();
        for (shard, sql) in parts {
            let mut q = BytesMut::new();
            if frontend::query(&sql, &mut q).is_err() {
                return Ok(reject_bytes("a split INSERT part is not a valid message"));
            }
            work.push((shard, q));
        }
        let answers = match self.in_shard_transactions(work).await? {
            Run::Answered(a) => a,
            Run::Refused(out) => return Ok(out),
        };
        let mut out = BytesMut::new();
        if let Some(err) = answers.iter().flat_map(|(_, a)| a).find(|m| m[0] == b'E') {
            out.put_slice(err);
        } else {
            let total: u64 = answers
                .iter()
                .flat_map(|(_, a)| a)
                .filter(|m| m[0] == b'C')
                .filter_map(|m| command_count(m))
                .sum();
            proto::command_complete(&mut out, &format!("INSERT 0 {total}"));
        }
        proto::ready(&mut out, b'I');
        Ok(out)
    }

    /// Pipelined Bind/Execute pairs, statement `i` on `shards[i]`: each shard gets its pairs
    /// (on the unnamed statement), and the client gets the answers in its own order.
    pub(super) async fn pipeline(&mut self, shards: &[usize]) -> Result<BytesMut, End> {
        let b = batch::read(&self.cbuf, &self.stmts, self.unnamed.as_deref());
        let mut work: Vec<(usize, BytesMut, Option<&[u8]>)> = Vec::new();
        for (e, &shard) in b.execs.iter().zip(shards) {
            let (Some(parse), Some(bind)) = (e.parse_body, e.bind) else {
                return Ok(reject_bytes(
                    "cannot split the batch: a statement is unknown",
                ));
            };
            let i = match work.iter().position(|w| w.0 == shard) {
                Some(i) => i,
                None => {
                    work.push((shard, BytesMut::new(), None));
                    work.len() - 1
                }
            };
            let (_, req, last) = &mut work[i];
            let fresh = (*last != Some(parse)).then_some(parse);
            *last = Some(parse);
            unnamed_execute(req, fresh, bind, e.describe);
        }
        let work: Vec<(usize, BytesMut)> = work
            .into_iter()
            .map(|(s, mut req, _)| {
                frontend::sync(&mut req);
                (s, req)
            })
            .collect();
        // What the client sent, in order: a Parse is answered ParseComplete, a Bind by the
        // answers to its pair on its shard.
        let order: Vec<u8> = proto::messages(&self.cbuf[..b.len])
            .filter(|(t, _)| matches!(t, b'P' | b'B'))
            .map(|(t, _)| t)
            .collect();
        let answers = match self.in_shard_transactions(work).await? {
            Run::Answered(a) => a,
            Run::Refused(out) => return Ok(out),
        };
        let mut per_shard: Vec<(usize, std::vec::IntoIter<Vec<Bytes>>)> = answers
            .into_iter()
            .map(|(s, a)| (s, segments(a).into_iter()))
            .collect();
        let mut out = BytesMut::new();
        let mut execs = shards.iter();
        for tag in order {
            if tag == b'P' {
                out.put_slice(b"1\0\0\0\x04");
                continue;
            }
            let Some(shard) = execs.next() else { break };
            let seg = per_shard
                .iter_mut()
                .find(|(s, _)| s == shard)
                .and_then(|(_, it)| it.next())
                .unwrap_or_default();
            let failed = seg.last().is_none_or(|m| m[0] == b'E');
            for m in &seg {
                out.put_slice(m);
            }
            if failed {
                if seg.is_empty() {
                    proto::error(
                        &mut out,
                        Severity::Error,
                        "08P01",
                        "a split batch lost the answer to one of its statements",
                    );
                }
                break;
            }
        }
        proto::ready(&mut out, b'I');
        Ok(out)
    }

    /// Runs each shard's part inside a transaction of its own, then commits them all when no
    /// part failed, else rolls them all back. Shards are taken in ascending order, so two
    /// sessions splitting at once cannot wait on each other's connections.
    async fn in_shard_transactions(
        &mut self,
        mut work: Vec<(usize, BytesMut)>,
    ) -> Result<Run, End> {
        work.sort_by_key(|w| w.0);
        let mut leases: Vec<Lease> = Vec::with_capacity(work.len());
        for (shard, _) in &work {
            match self.lease_on(Route::Shard(*shard)).await {
                Ok(l) => leases.push(l),
                Err(e) => {
                    for l in leases {
                        self.pool.release(l, true);
                    }
                    let mut out = BytesMut::new();
                    Failure::from(&e).write(&mut out, Severity::Error);
                    proto::ready(&mut out, b'I');
                    return Ok(Run::Refused(out));
                }
            }
        }
        let mut answers = Vec::with_capacity(work.len());
        for (i, (shard, part)) in work.iter().enumerate() {
            let mut req = BytesMut::new();
            let _ = frontend::query("BEGIN", &mut req);
            req.put_slice(part);
            match roundtrip(&mut leases[i].conn, &req, 2).await {
                Ok(mut a) => {
                    let begun = a.iter().position(|m| m[0] == b'Z').map_or(0, |i| i + 1);
                    answers.push((*shard, a.split_off(begun)));
                }
                Err(e) => return Err(self.lose(leases, e)),
            }
        }
        let failed = answers.iter().any(|(_, a)| a.iter().any(|m| m[0] == b'E'));
        let mut committed: Vec<usize> = Vec::new();
        let mut refusal: Option<BytesMut> = None;
        let mut idle = Vec::with_capacity(leases.len());
        for (i, (shard, _)) in work.iter().enumerate() {
            let end = if failed || refusal.is_some() {
                "ROLLBACK"
            } else {
                "COMMIT"
            };
            let mut req = BytesMut::new();
            let _ = frontend::query(end, &mut req);
            let a = match roundtrip(&mut leases[i].conn, &req, 1).await {
                Ok(a) => a,
                Err(e) => return Err(self.lose(leases, e)),
            };
            idle.push(a.last().and_then(|m| m.get(5)) == Some(&b'I'));
            if end == "ROLLBACK" {
                continue;
            }
            let rolled_back = a
                .iter()
                .any(|m| m[0] == b'E' || (m[0] == b'C' && m.get(5..13) == Some(b"ROLLBACK")));
            if rolled_back {
                let cause = a
                    .iter()
                    .find(|m| m[0] == b'E')
                    .and_then(|m| error_message(m))
                    .unwrap_or_else(|| "the transaction was rolled back".into());
                let msg = format!(
                    "the batch was split over shards and shard {shard} failed to commit ({cause}); shards {committed:?} had committed their part, the others rolled back"
                );
                let mut out = BytesMut::new();
                Failure::CompletionUnknown(msg).write(&mut out, Severity::Error);
                proto::ready(&mut out, b'I');
                refusal = Some(out);
            } else {
                committed.push(*shard);
            }
        }
        for (lease, idle) in leases.into_iter().zip(idle) {
            self.pool.release(lease, idle);
        }
        Ok(match refusal {
            Some(out) => Run::Refused(out),
            None => Run::Answered(answers),
        })
    }

    /// Closes every lease of a split whose server connection failed.
    fn lose(&self, leases: Vec<Lease>, e: std::io::Error) -> End {
        for l in leases {
            self.pool.release(l, false);
        }
        End::ServerLost(e.to_string())
    }
}

/// A shard's answers to its pairs, one segment per pair: from BindComplete (or the error
/// that took its place) to CommandComplete, EmptyQueryResponse, PortalSuspended or
/// ErrorResponse. Our ParseCompletes and the final ReadyForQuery are left out.
fn segments(answers: Vec<Bytes>) -> Vec<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for m in answers {
        match m[0] {
            b'1' | b'Z' => {}
            b'C' | b'I' | b's' | b'E' => {
                cur.push(m);
                out.push(std::mem::take(&mut cur));
            }
            _ => cur.push(m),
        }
    }
    out
}

/// The message field (M) of an ErrorResponse.
fn error_message(m: &[u8]) -> Option<String> {
    let mut body = m.get(5..)?;
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        body = rest;
        let value = proto::cstr(&mut body)?;
        if field == b'M' {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(tag: u8, body: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        proto::message(&mut b, tag, |o| o.put_slice(body));
        b.freeze()
    }

    #[test]
    fn answers_are_cut_per_pair() {
        let a = vec![
            m(b'1', b""),
            m(b'2', b""),
            m(b'C', b"INSERT 0 1\0"),
            m(b'2', b""),
            m(b'D', b"\0\0"),
            m(b'C', b"SELECT 1\0"),
            m(b'E', b"SERROR\0C23505\0Mdup\0\0"),
            m(b'Z', b"E"),
        ];
        let s = segments(a);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].len(), 3);
        assert_eq!(s[2][0][0], b'E');
        assert_eq!(error_message(&s[2][0]).as_deref(), Some("dup"));
    }
}
