//! What a sharded session needs to know about the client's next batch (its messages up to and
//! including the Sync, Query, FunctionCall or Flush that ends it): the statements it runs, each
//! with its text and bind parameters, so that every one of them is routed on its own key.

use bytes::Buf;

use crate::proto;
use crate::sharding::Param;
use crate::stmt::Statements;

/// One statement the batch runs: a simple Query, or a Bind with the Execute after it.
pub(super) struct Exec<'a> {
    /// The statement's text, when known.
    pub sql: Option<&'a [u8]>,
    /// Bind parameters (empty for a simple query).
    pub params: Vec<Param>,
    /// The Bind body, for sending the statement to other shards.
    pub bind: Option<&'a [u8]>,
    /// The Parse body (query text and parameter types) of the bound statement.
    pub parse_body: Option<&'a [u8]>,
    /// A Describe of the portal precedes the Execute.
    pub describe: bool,
    /// An Execute of the portal follows the Bind.
    pub executed: bool,
    /// It binds the unnamed statement parsed in an earlier batch (perhaps on another server).
    pub earlier_unnamed: bool,
}

/// The client's next batch.
pub(super) struct Batch<'a> {
    /// Bytes up to and including the message that ends the batch (or all complete messages).
    pub len: usize,
    /// The statements it runs, in order.
    pub execs: Vec<Exec<'a>>,
    /// It is a simple Query.
    pub simple: bool,
    /// An Execute runs a portal bound in an earlier batch.
    pub executes_earlier_portal: bool,
    /// It holds a Parse.
    pub has_parse: bool,
    /// It holds a named Parse.
    pub has_named_parse: bool,
    /// It holds a Describe.
    pub has_describe: bool,
    /// It holds messages other than Parse, Bind, Describe portal, Execute, Sync and Flush.
    pub other: bool,
    /// Sync, Query and FunctionCall messages: each is answered with a ReadyForQuery.
    pub syncs: usize,
    /// An Execute asks for at most some rows (a cursor read in parts).
    pub limited: bool,
    /// The body of the batch's last unnamed Parse.
    pub unnamed_parse: Option<&'a [u8]>,
    /// The tag of the message that ends it (None: not complete yet).
    pub end: Option<u8>,
}

impl Batch<'_> {
    /// The batch's own text of the first statement (simple Query or Parse).
    pub fn first_sql(&self) -> Option<&[u8]> {
        self.execs.first().and_then(|e| e.sql)
    }
}

/// Reads the batch at the start of `buf`; statements bound by name are looked up in `stmts`
/// when the batch does not parse them itself, the unnamed one in `unnamed` (the Parse body of
/// the client's last unnamed statement).
pub(super) fn read<'a>(
    buf: &'a [u8],
    stmts: &'a Statements,
    unnamed: Option<&'a [u8]>,
) -> Batch<'a> {
    let mut b = Batch {
        len: 0,
        execs: Vec::new(),
        simple: false,
        executes_earlier_portal: false,
        has_parse: false,
        has_named_parse: false,
        has_describe: false,
        other: false,
        syncs: 0,
        limited: false,
        unnamed_parse: None,
        end: None,
    };
    // Statements parsed in this batch: name → Parse body.
    let mut parsed: Vec<(&[u8], &[u8])> = Vec::new();
    for (tag, msg) in proto::messages(buf) {
        b.len += msg.len();
        let mut body = &msg[5..];
        match tag {
            b'Q' => {
                b.simple = true;
                b.syncs += 1;
                b.execs.push(Exec {
                    sql: proto::cbytes(&mut body),
                    params: Vec::new(),
                    bind: None,
                    parse_body: None,
                    describe: false,
                    executed: true,
                    earlier_unnamed: false,
                });
            }
            b'P' => {
                b.has_parse = true;
                if let Some(name) = proto::cbytes(&mut body) {
                    b.has_named_parse |= !name.is_empty();
                    if name.is_empty() {
                        b.unnamed_parse = Some(body);
                    }
                    parsed.retain(|(n, _)| *n != name);
                    parsed.push((name, body));
                }
            }
            b'B' => {
                let _portal = proto::cbytes(&mut body);
                let name = proto::cbytes(&mut body).unwrap_or_default();
                let here = parsed
                    .iter()
                    .rev()
                    .find(|(n, _)| *n == name)
                    .map(|(_, body)| *body);
                let earlier_unnamed = here.is_none() && name.is_empty() && unnamed.is_some();
                let parse_body = here.or_else(|| {
                    if name.is_empty() {
                        unnamed
                    } else {
                        stmts.body_of(name)
                    }
                });
                b.execs.push(Exec {
                    sql: parse_body.and_then(query_text),
                    params: bind_params(&msg[5..]),
                    bind: Some(&msg[5..]),
                    parse_body,
                    describe: false,
                    executed: false,
                    earlier_unnamed,
                });
            }
            b'D' => {
                b.has_describe = true;
                match (msg.get(5), b.execs.last_mut()) {
                    (Some(b'P'), Some(e)) if !e.executed && e.bind.is_some() => e.describe = true,
                    (Some(b'P'), _) => {}
                    _ => b.other = true,
                }
            }
            b'E' => {
                let _portal = proto::cbytes(&mut body);
                b.limited |= body.get(..4).is_some_and(|n| n != [0; 4]);
                match b.execs.last_mut() {
                    Some(e) if !e.executed && e.bind.is_some() => e.executed = true,
                    _ => b.executes_earlier_portal = true,
                }
            }
            b'S' | b'F' => b.syncs += 1,
            b'H' => {}
            _ => b.other = true,
        }
        if matches!(tag, b'S' | b'Q' | b'F' | b'H') {
            b.end = Some(tag);
            break;
        }
    }
    b
}

/// The query text at the start of a Parse body.
fn query_text(parse_body: &[u8]) -> Option<&[u8]> {
    let end = parse_body.iter().position(|&c| c == 0)?;
    Some(&parse_body[..end])
}

/// The parameter values of a Bind body, with their formats.
pub(super) fn bind_params(body: &[u8]) -> Vec<Param> {
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

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;

    fn msg(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
        proto::message(out, tag, f);
    }

    fn bind(out: &mut BytesMut, stmt: &[u8], value: &[u8]) {
        msg(out, b'B', |o| {
            proto::put_cstr(o, b"");
            proto::put_cstr(o, stmt);
            o.put_i16(0);
            o.put_i16(1);
            o.put_i32(value.len() as i32);
            o.put_slice(value);
            o.put_i16(0);
        });
    }

    fn execute(out: &mut BytesMut) {
        msg(out, b'E', |o| {
            o.put_u8(0);
            o.put_i32(0);
        });
    }

    #[test]
    fn pipelined_binds_are_each_a_statement() {
        let mut buf = BytesMut::new();
        msg(&mut buf, b'P', |o| {
            proto::put_cstr(o, b"s1");
            proto::put_cstr(o, b"INSERT INTO users (user_id) VALUES ($1)");
            o.put_i16(0);
        });
        for v in [b"1", b"2", b"3"] {
            bind(&mut buf, b"s1", v);
            execute(&mut buf);
        }
        msg(&mut buf, b'S', |_| {});
        let stmts = Statements::default();
        let b = read(&buf, &stmts, None);
        assert_eq!(b.execs.len(), 3);
        assert!(b.execs.iter().all(|e| e.executed && e.sql.is_some()));
        assert_eq!(b.execs[2].params[0].value.as_deref(), Some(&b"3"[..]));
        assert_eq!(b.end, Some(b'S'));
        assert_eq!(b.len, buf.len());
        assert!(b.has_named_parse && !b.other);
    }

    #[test]
    fn a_batch_ends_at_flush() {
        let mut buf = BytesMut::new();
        msg(&mut buf, b'P', |o| {
            proto::put_cstr(o, b"s1");
            proto::put_cstr(o, b"SELECT 1");
            o.put_i16(0);
        });
        msg(&mut buf, b'D', |o| {
            o.put_u8(b'S');
            proto::put_cstr(o, b"s1");
        });
        msg(&mut buf, b'H', |_| {});
        let first = buf.len();
        bind(&mut buf, b"s1", b"1");
        let stmts = Statements::default();
        let b = read(&buf, &stmts, None);
        assert!(b.execs.is_empty());
        assert_eq!((b.len, b.end), (first, Some(b'H')));
        let rest = read(&buf[first..], &stmts, None);
        assert_eq!(rest.execs.len(), 1);
        assert_eq!(rest.end, None);
        assert!(rest.execs[0].sql.is_none(), "s1 was never registered");
    }
}
