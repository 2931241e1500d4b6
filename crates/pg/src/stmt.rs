//! Named prepared statements in transaction mode. A client's statement names are its own; on
//! the server every statement is `__sg_<id>`, with one id per (query text, parameter types) in
//! the pool, so a statement prepared once on a server connection serves every client.
//!
//! Client → server: Parse of a statement the server already has becomes a harmless Close of a
//! name that never exists (its CloseComplete is turned into the ParseComplete the client waits
//! for); Bind/Describe of a statement the server lacks get a Parse injected before them (its
//! ParseComplete is swallowed); client Close of a statement only forgets the name. Responses
//! come back in order, so a queue of what each ParseComplete/CloseComplete stands for is all
//! the bookkeeping needed; a ReadyForQuery ends a segment and drops expectations that an error
//! made the server skip.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::{cbytes, message, put_cstr};

/// The statements prepared on one server connection, at most `cap` of them: the least recently
/// used is closed on the server to make room (PostgreSQL keeps every prepared statement of a
/// session in memory until it is closed).
#[derive(Debug)]
pub struct Prepared {
    used: HashMap<u64, u64>,
    tick: u64,
    cap: usize,
}

impl Default for Prepared {
    fn default() -> Prepared {
        Prepared::with_cap(usize::MAX)
    }
}

impl Prepared {
    /// An empty set holding at most `cap` statements (at least 2).
    pub fn with_cap(cap: usize) -> Prepared {
        Prepared {
            used: HashMap::new(),
            tick: 0,
            cap: cap.max(2),
        }
    }

    /// Changes the bound.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(2);
    }

    /// Whether `id` is prepared here (and marks it used).
    pub fn contains(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.used.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `id` as prepared; returns the statement to close to stay within the bound.
    pub fn insert(&mut self, id: u64) -> Option<u64> {
        self.tick += 1;
        let evict = if self.used.len() >= self.cap && !self.used.contains_key(&id) {
            let oldest = self.used.iter().min_by_key(|(_, t)| **t).map(|(i, _)| *i);
            if let Some(o) = oldest {
                self.used.remove(&o);
            }
            oldest
        } else {
            None
        };
        self.used.insert(id, self.tick);
        evict
    }

    /// Forgets `id` (its Parse did not happen).
    pub fn remove(&mut self, id: u64) {
        self.used.remove(&id);
    }

    /// Forgets everything (after DISCARD ALL).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// How many are prepared.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// A name no statement ever has: closing it is a no-op that still answers CloseComplete.
const NO_STATEMENT: &[u8] = b"__sg_none";

/// What a response in the queue stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A ParseComplete: forwarded, or swallowed when the pooler injected the Parse.
    Parse { swallow: bool, id: Option<u64> },
    /// A CloseComplete: forwarded, turned into ParseComplete for a skipped Parse, or dropped
    /// for a statement the pooler closed to make room.
    Close { as_parse: bool, swallow: bool },
    /// ReadyForQuery (Sync, Query, FunctionCall).
    Ready,
}

/// What to do with one server message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send it to the client as is.
    Forward,
    /// Do not send it.
    Drop,
    /// Send a ParseComplete instead.
    ParseComplete,
    /// Send ReadyForQuery with status "in a transaction" instead.
    InTransaction,
}

/// One client's statements and the responses in flight.
#[derive(Debug, Default)]
pub struct Statements {
    names: HashMap<Vec<u8>, (u64, Bytes)>,
    expect: VecDeque<Expect>,
}

fn server_name(id: u64) -> Vec<u8> {
    format!("__sg_{id}").into_bytes()
}

impl Statements {
    /// Statements this client has prepared.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// The query text of client statement `name`.
    pub fn query_of(&self, name: &[u8]) -> Option<&[u8]> {
        let (_, body) = self.names.get(name)?;
        let end = body.iter().position(|&b| b == 0)?;
        Some(&body[..end])
    }

    /// The Parse body (query text and parameter types) of client statement `name`.
    pub fn body_of(&self, name: &[u8]) -> Option<&[u8]> {
        self.names.get(name).map(|(_, b)| &b[..])
    }

    /// Whether the client has none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Rewrites one client message into `out`. `intern` gives a statement body's pool-wide id;
    /// `prepared` is the server connection's set of ids.
    pub fn client_message(
        &mut self,
        msg: &[u8],
        prepared: &mut Prepared,
        intern: impl FnOnce(&[u8]) -> u64,
        out: &mut BytesMut,
    ) {
        let body = &msg[5..];
        match msg[0] {
            b'P' => {
                let mut b = body;
                let Some(name) = cbytes(&mut b) else {
                    return out.put_slice(msg);
                };
                if name.is_empty() {
                    self.expect.push_back(Expect::Parse {
                        swallow: false,
                        id: None,
                    });
                    return out.put_slice(msg);
                }
                let id = intern(b);
                self.names
                    .insert(name.to_vec(), (id, Bytes::copy_from_slice(b)));
                if prepared.contains(id) {
                    close(out, b'S', NO_STATEMENT);
                    self.expect.push_back(Expect::Close {
                        as_parse: true,
                        swallow: false,
                    });
                } else {
                    self.make_room(prepared.insert(id), out);
                    parse(out, &server_name(id), b);
                    self.expect.push_back(Expect::Parse {
                        swallow: false,
                        id: Some(id),
                    });
                }
            }
            b'B' => {
                let mut b = body;
                let (Some(portal), Some(name)) = (cbytes(&mut b), cbytes(&mut b)) else {
                    return out.put_slice(msg);
                };
                let Some(id) = self.ensure(name, prepared, out) else {
                    return out.put_slice(msg);
                };
                message(out, b'B', |o| {
                    put_cstr(o, portal);
                    put_cstr(o, &server_name(id));
                    o.put_slice(b);
                });
            }
            b'D' if body.first() == Some(&b'S') => {
                let mut b = &body[1..];
                let Some(name) = cbytes(&mut b) else {
                    return out.put_slice(msg);
                };
                let Some(id) = self.ensure(name, prepared, out) else {
                    return out.put_slice(msg);
                };
                message(out, b'D', |o| {
                    o.put_u8(b'S');
                    put_cstr(o, &server_name(id));
                });
            }
            b'C' => {
                self.expect.push_back(Expect::Close {
                    as_parse: false,
                    swallow: false,
                });
                // A Close without its kind byte is malformed: pass it on for the server to refuse.
                let mut b = body.get(1..).unwrap_or_default();
                match cbytes(&mut b) {
                    Some(name) if body.first() == Some(&b'S') && !name.is_empty() => {
                        self.names.remove(name);
                        close(out, b'S', NO_STATEMENT);
                    }
                    _ => out.put_slice(msg),
                }
            }
            b'S' | b'Q' | b'F' => {
                self.expect.push_back(Expect::Ready);
                out.put_slice(msg);
            }
            _ => out.put_slice(msg),
        }
    }

    /// The server id of client statement `name`, injecting a Parse when the server lacks it;
    /// `None` for the unnamed statement or a name the client never prepared.
    fn ensure(&mut self, name: &[u8], prepared: &mut Prepared, out: &mut BytesMut) -> Option<u64> {
        if name.is_empty() {
            return None;
        }
        let (id, body) = self.names.get(name)?.clone();
        if !prepared.contains(id) {
            self.make_room(prepared.insert(id), out);
            parse(out, &server_name(id), &body);
            self.expect.push_back(Expect::Parse {
                swallow: true,
                id: Some(id),
            });
        }
        Some(id)
    }

    /// Closes the statement evicted to make room, if any; its CloseComplete is dropped.
    fn make_room(&mut self, evicted: Option<u64>, out: &mut BytesMut) {
        if let Some(old) = evicted {
            close(out, b'S', &server_name(old));
            self.expect.push_back(Expect::Close {
                as_parse: false,
                swallow: true,
            });
        }
    }

    /// What to do with a server message with tag `tag`.
    pub fn server_message(&mut self, tag: u8, prepared: &mut Prepared) -> Action {
        match tag {
            b'1' => match self.expect.pop_front() {
                Some(Expect::Parse { swallow: true, .. }) => Action::Drop,
                _ => Action::Forward,
            },
            b'3' => match self.expect.pop_front() {
                Some(Expect::Close { swallow: true, .. }) => Action::Drop,
                Some(Expect::Close { as_parse: true, .. }) => Action::ParseComplete,
                _ => Action::Forward,
            },
            b'Z' => {
                // Whatever is left before this segment's end was skipped after an error.
                while let Some(e) = self.expect.pop_front() {
                    match e {
                        Expect::Ready => break,
                        Expect::Parse { id: Some(id), .. } => {
                            prepared.remove(id);
                        }
                        _ => {}
                    }
                }
                Action::Forward
            }
            _ => Action::Forward,
        }
    }

    /// Forgets in-flight expectations (the server connection is gone).
    pub fn reset_flight(&mut self) {
        self.expect.clear();
    }
}

fn parse(out: &mut BytesMut, name: &[u8], body: &[u8]) {
    message(out, b'P', |o| {
        put_cstr(o, name);
        o.put_slice(body);
    });
}

fn close(out: &mut BytesMut, kind: u8, name: &[u8]) {
    message(out, b'C', |o| {
        o.put_u8(kind);
        put_cstr(o, name);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut b = BytesMut::new();
        message(&mut b, tag, f);
        b.to_vec()
    }

    fn parse_msg(name: &str, q: &str) -> Vec<u8> {
        msg(b'P', |o| {
            put_cstr(o, name.as_bytes());
            put_cstr(o, q.as_bytes());
            o.put_i16(0);
        })
    }

    fn bind_msg(name: &str) -> Vec<u8> {
        msg(b'B', |o| {
            put_cstr(o, b"");
            put_cstr(o, name.as_bytes());
            o.put_i16(0);
            o.put_i16(0);
            o.put_i16(0);
        })
    }

    fn tags(out: &[u8]) -> Vec<u8> {
        crate::proto::messages(out).map(|(t, _)| t).collect()
    }

    #[test]
    fn second_server_gets_the_statement_injected() {
        let mut s = Statements::default();
        let mut server_a = Prepared::default();
        let mut out = BytesMut::new();
        for m in [
            parse_msg("s1", "SELECT 1"),
            bind_msg("s1"),
            msg(b'S', |_| {}),
        ] {
            s.client_message(&m, &mut server_a, |_| 7, &mut out);
        }
        assert_eq!(tags(&out), b"PBS");
        assert!(out.windows(6).any(|w| w == b"__sg_7"));
        assert_eq!(s.server_message(b'1', &mut server_a), Action::Forward);
        assert_eq!(s.server_message(b'Z', &mut server_a), Action::Forward);
        // Next transaction lands on a server that never saw it.
        let mut server_b = Prepared::default();
        out.clear();
        for m in [bind_msg("s1"), msg(b'S', |_| {})] {
            s.client_message(&m, &mut server_b, |_| unreachable!(), &mut out);
        }
        assert_eq!(tags(&out), b"PBS");
        assert_eq!(s.server_message(b'1', &mut server_b), Action::Drop);
        assert_eq!(s.server_message(b'2', &mut server_b), Action::Forward);
        assert_eq!(s.server_message(b'Z', &mut server_b), Action::Forward);
        assert!(server_b.contains(7));
    }

    #[test]
    fn parse_of_a_known_statement_is_answered_through_a_close() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        server.insert(9);
        let mut out = BytesMut::new();
        s.client_message(
            &parse_msg("other", "SELECT 2"),
            &mut server,
            |_| 9,
            &mut out,
        );
        assert_eq!(tags(&out), b"C");
        assert_eq!(s.server_message(b'3', &mut server), Action::ParseComplete);
    }

    #[test]
    fn an_error_forgets_statements_the_server_skipped() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        let mut out = BytesMut::new();
        for m in [parse_msg("s1", "SELEC oops"), msg(b'S', |_| {})] {
            s.client_message(&m, &mut server, |_| 3, &mut out);
        }
        assert!(server.contains(3));
        // ErrorResponse then ReadyForQuery: no ParseComplete came.
        assert_eq!(s.server_message(b'E', &mut server), Action::Forward);
        assert_eq!(s.server_message(b'Z', &mut server), Action::Forward);
        assert!(!server.contains(3));
    }

    #[test]
    fn the_least_recently_used_statement_is_closed_to_make_room() {
        let mut s = Statements::default();
        let mut server = Prepared::with_cap(2);
        let mut out = BytesMut::new();
        let mut ids = 0;
        for name in ["a", "b"] {
            s.client_message(
                &parse_msg(name, name),
                &mut server,
                |_| {
                    ids += 1;
                    ids
                },
                &mut out,
            );
        }
        // Use "a" again so "b" is the least recently used.
        s.client_message(&bind_msg("a"), &mut server, |_| unreachable!(), &mut out);
        out.clear();
        s.client_message(&parse_msg("c", "c"), &mut server, |_| 3, &mut out);
        assert_eq!(tags(&out), b"CP", "close the evicted one, then parse");
        assert!(
            out.windows(6).any(|w| w == b"__sg_2"),
            "b (id 2) is evicted"
        );
        assert_eq!(server.len(), 2);
        // Responses: ParseComplete x2 for a, b, BindComplete, then CloseComplete (dropped) and
        // ParseComplete for c.
        for (tag, want) in [
            (b'1', Action::Forward),
            (b'1', Action::Forward),
            (b'2', Action::Forward),
            (b'3', Action::Drop),
            (b'1', Action::Forward),
        ] {
            assert_eq!(s.server_message(tag, &mut server), want);
        }
        // "b" comes back on demand.
        out.clear();
        s.client_message(&bind_msg("b"), &mut server, |_| unreachable!(), &mut out);
        assert_eq!(tags(&out), b"CPB");
    }

    #[test]
    fn malformed_messages_pass_through_without_panicking() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        for tag in [b'P', b'B', b'D', b'C'] {
            let m = msg(tag, |_| {});
            let mut out = BytesMut::new();
            s.client_message(&m, &mut server, |_| 1, &mut out);
            assert_eq!(&out[..], &m[..], "{}", tag as char);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_client_message_is_handled_without_panicking(
            tag in proptest::sample::select(vec![b'P', b'B', b'D', b'C', b'S', b'Q', b'E']),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let mut s = Statements::default();
            let mut server = Prepared::with_cap(2);
            let m = msg(tag, |o| o.put_slice(&body));
            let mut out = BytesMut::new();
            s.client_message(&m, &mut server, |_| 1, &mut out);
            for t in [b'1', b'2', b'3', b'Z'] {
                let _ = s.server_message(t, &mut server);
            }
        }
    }

    #[test]
    fn unnamed_statements_pass_untouched() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        let mut out = BytesMut::new();
        let p = parse_msg("", "SELECT 1");
        s.client_message(&p, &mut server, |_| unreachable!(), &mut out);
        assert_eq!(&out[..], &p[..]);
        assert_eq!(s.server_message(b'1', &mut server), Action::Forward);
    }
}
