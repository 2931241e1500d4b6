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
//!
//! Statements the pooler answers itself or refuses are sent as stand-ins the server answers in
//! the same shape and place: an emulated statement (`DEALLOCATE …`) becomes an empty query whose
//! EmptyQueryResponse is turned into the statement's CommandComplete; a refused one becomes text
//! that fails to parse, whose ErrorResponse is turned into the refusal. A statement that makes the
//! server forget every prepared statement clears the connection's record when it is sent (so
//! later messages re-prepare what they need) and puts it back if its segment ends without it.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use crate::outgoing::Out;
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

    /// Whether `id` is prepared here, without marking it used.
    pub fn has(&self, id: u64) -> bool {
        self.used.contains_key(&id)
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

    /// Every id recorded here.
    fn ids(&self) -> Vec<u64> {
        self.used.keys().copied().collect()
    }

    /// Records `ids` again (they turned out to be still prepared), without evicting.
    fn restore(&mut self, ids: &[u64]) {
        for &id in ids {
            self.tick += 1;
            self.used.entry(id).or_insert(self.tick);
        }
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

/// Text the server fails to parse, standing in for a refused statement; its ErrorResponse (which
/// quotes it) is replaced by the refusal.
const REFUSED: &[u8] = b"scalegate_refused_session_state";

/// Text the server fails to parse, standing in for a statement prepared before a schema change
/// made plans stale (its ErrorResponse becomes PostgreSQL's 0A000 "cached plan must not change
/// result type"), and the name it is parsed under (a failed Parse creates nothing).
const STALE: &[u8] = b"scalegate_stale_statement";
const STALE_NAME: &[u8] = b"__sg_stale";

/// What a response in the queue stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A ParseComplete: forwarded, or swallowed when the pooler injected the Parse.
    Parse { swallow: bool, id: Option<u64> },
    /// A CloseComplete: forwarded, turned into ParseComplete for a skipped Parse, or dropped
    /// for a statement the pooler closed to make room.
    Close { as_parse: bool, swallow: bool },
    /// The CloseComplete (dropped) of statement `id`, closed by the pooler to make room. When an
    /// error makes the server skip that Close, the server still holds the statement.
    Evict(u64),
    /// An EmptyQueryResponse standing for the CommandComplete of an emulated statement.
    Emulated(&'static str),
    /// The ErrorResponse of a stand-in for a refused statement (session state bits).
    Refused(u8),
    /// The ErrorResponse of a stand-in for a statement prepared before a schema change.
    Stale,
    /// A BindComplete (of this named statement): kept so that a stale plan's error, which
    /// PostgreSQL raises at Bind, names its statement.
    Bound(Option<u64>),
    /// The RowDescription or NoData answering a client's Describe of this named statement (the
    /// other place a stale plan is raised): its result type is recorded for the pool.
    Described(Option<u64>),
    /// The ParameterDescription and RowDescription/NoData (both dropped) of the pooler's own
    /// Describe of statement `id`, prepared afresh on this server: its result type is compared
    /// with the one clients were told (`session/shape_check.rs`).
    Check(u64),
    /// ReadyForQuery (Sync, Query, FunctionCall).
    Ready,
}

/// How the pooler treats one Query or Parse message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    /// Send it on (rewritten as usual).
    Forward,
    /// Send it on; a named statement is remembered as creating session state `bits`, so every
    /// later Bind of it reports them.
    Flag(u8),
    /// Answer it as if it ran, with CommandComplete `tag` (unnamed statements and queries).
    Emulate(&'static str),
    /// Refuse it: the client gets SQLSTATE 0A000 for session state `bits`.
    Refuse(u8),
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
    /// Send CommandComplete with this tag instead (an emulated statement).
    Tag(&'static str),
    /// Send the refusal of session state `bits` instead (SQLSTATE 0A000).
    Refused(u8),
    /// Send PostgreSQL's 0A000 "cached plan must not change result type" instead.
    Stale,
}

/// One client's statements and the responses in flight.
#[derive(Debug, Default)]
pub struct Statements {
    /// Client name → (pool-wide id, Parse body, session state its execution creates).
    names: HashMap<Vec<u8>, (u64, Bytes, u8)>,
    expect: VecDeque<Expect>,
    /// The unnamed statement is an emulated one answering with this tag.
    unnamed: Option<&'static str>,
    /// Portals bound to an emulated statement.
    portals: Vec<(Vec<u8>, &'static str)>,
    /// Segments (Sync, Query, FunctionCall) sent and answered.
    sent_segments: u64,
    done_segments: u64,
    /// Records cleared by a statement that makes the server forget its prepared statements, by
    /// segment, kept until the server confirms (then dropped) or the segment ends (restored).
    forgets: Vec<(u64, Vec<u64>)>,
    /// A result type just seen for a statement ([`Self::take_shape`]).
    shape: Option<Shape>,
    /// A statement the message being handled waits for ([`Self::take_held`]).
    held: Option<(u64, Bytes)>,
    /// A statement a server just prepared ([`Self::take_parsed`]).
    parsed: Option<u64>,
}

/// What becomes of a client's statement that the server lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lazy {
    /// Prepared there, in front of the message that needs it.
    Fresh,
    /// Its result type is recorded: prepared and described alone first, the message held
    /// until the answer (`session/shape_check.rs`).
    Check,
    /// It met a stale plan: answered with PostgreSQL's 0A000 (`session/stale_plans.rs`).
    Retired,
}

/// A statement's result type as the server described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The pool-wide statement id.
    pub id: u64,
    /// The columns' names and types (not their tables: a table dropped and made again with the
    /// same columns is the same result type), hashed.
    pub hash: u64,
    /// From the pooler's own check of a statement it prepared afresh (else a client's
    /// Describe).
    pub checked: bool,
}

fn server_name(id: u64) -> Vec<u8> {
    format!("__sg_{id}").into_bytes()
}

impl Statements {
    /// The result type the last server message described, if it answered a Describe of a named
    /// statement (a client's, or the pooler's own check).
    pub fn take_shape(&mut self) -> Option<Shape> {
        self.shape.take()
    }

    /// The statement the last server message confirmed prepared (its ParseComplete).
    pub fn take_parsed(&mut self) -> Option<u64> {
        self.parsed.take()
    }

    /// Client statement `name` (a Parse of `body`, its query and parameter types) is recorded
    /// without a server: the pool knows the text parses. It is prepared where a Bind or Describe
    /// needs it, as after a move to another server connection.
    pub fn parse_without_server(&mut self, name: &[u8], id: u64, body: &[u8]) {
        self.names
            .insert(name.to_vec(), (id, Bytes::copy_from_slice(body), 0));
    }

    /// The statement a Bind or Describe was held for (nothing of that message was written): it
    /// is to be checked first ([`Self::check_shape`]), and the message handled again after.
    pub fn take_held(&mut self) -> Option<(u64, Bytes)> {
        self.held.take()
    }

    /// Prepares statement `id` afresh and asks for its result type, then a Flush: the session
    /// holds the client's next messages until the answer ([`Expect::Check`]).
    pub fn check_shape(
        &mut self,
        id: u64,
        body: &[u8],
        prepared: &mut Prepared,
        out: &mut impl Out,
    ) {
        self.make_room(prepared.insert(id), out);
        parse(out.rewrite(), &server_name(id), body);
        self.expect.push_back(Expect::Parse {
            swallow: true,
            id: Some(id),
        });
        message(out.rewrite(), b'D', |o| {
            o.put_u8(b'S');
            put_cstr(o, &server_name(id));
        });
        self.expect.push_back(Expect::Check(id));
        message(out.rewrite(), b'H', |_| {});
    }

    /// The statement whose Bind or Describe the server's error just now answers, if it is a
    /// named one: the one whose plan went stale, when the error says so.
    pub fn failed_statement(&self) -> Option<u64> {
        match self.expect.front() {
            Some(Expect::Bound(id) | Expect::Described(id)) => *id,
            _ => None,
        }
    }

    /// Statements this client has prepared.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// The query text of client statement `name`.
    pub fn query_of(&self, name: &[u8]) -> Option<&[u8]> {
        let (_, body, _) = self.names.get(name)?;
        let end = body.iter().position(|&b| b == 0)?;
        Some(&body[..end])
    }

    /// The Parse body (query text and parameter types) of client statement `name`.
    pub fn body_of(&self, name: &[u8]) -> Option<&[u8]> {
        self.names.get(name).map(|(_, b, _)| &b[..])
    }

    /// Whether the client has none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Gives every statement its id in another pool (the client moved to the pool a reload
    /// made); only between transactions, with nothing in flight.
    pub fn reintern(&mut self, mut intern: impl FnMut(&[u8]) -> u64) {
        for (id, body, _) in self.names.values_mut() {
            *id = intern(body);
        }
    }

    /// Forgets every name this client prepared (its DEALLOCATE ALL or DISCARD ALL).
    pub fn forget_names(&mut self) {
        self.names.clear();
    }

    /// Forgets one name; false when the client has no such statement.
    pub fn forget_name(&mut self, name: &[u8]) -> bool {
        self.names.remove(name).is_some()
    }

    /// The server is about to be told to forget every prepared statement: `prepared` is cleared
    /// now, so the messages after it re-prepare what they use, and restored if the segment
    /// ends without the server confirming.
    pub fn server_forgets(&mut self, prepared: &mut Prepared) {
        let ids = prepared.ids();
        prepared.clear();
        self.forgets.push((self.sent_segments, ids));
    }

    /// Rewrites one client message into `out`. `intern` gives a statement body's pool-wide id;
    /// `prepared` is the server connection's set of ids; `sub` says how a Query or Parse is
    /// treated. Returns the session state a Bind of a flagged statement creates (0 otherwise).
    /// `lazy` says what becomes of a statement the server lacks ([`Lazy`]); a message held for a
    /// check is not written, and [`Self::take_held`] names it.
    pub fn client_message(
        &mut self,
        msg: &[u8],
        prepared: &mut Prepared,
        (intern, lazy): (impl FnOnce(&[u8]) -> u64, impl Fn(u64) -> Lazy),
        out: &mut impl Out,
        sub: Sub,
    ) -> u8 {
        let body = &msg[5..];
        match (msg[0], sub) {
            (b'Q', Sub::Emulate(tag)) => {
                message(out.rewrite(), b'Q', |o| o.put_u8(0));
                self.expect.push_back(Expect::Emulated(tag));
                self.ready();
            }
            (b'Q', Sub::Refuse(bits)) => {
                message(out.rewrite(), b'Q', |o| put_cstr(o, REFUSED));
                self.expect.push_back(Expect::Refused(bits));
                self.ready();
            }
            (b'P', Sub::Refuse(bits)) => {
                parse(out.rewrite(), b"", &[REFUSED, b"\0\0\0"].concat());
                self.expect.push_back(Expect::Refused(bits));
            }
            (b'P', Sub::Emulate(tag)) => {
                // Only unnamed statements are emulated: name, query, then the parameter types.
                let mut b = body;
                let types = cbytes(&mut b)
                    .and_then(|_| cbytes(&mut b))
                    .map_or(&b"\0\0"[..], |_| b);
                message(out.rewrite(), b'P', |o| {
                    put_cstr(o, b"");
                    put_cstr(o, b"");
                    o.put_slice(types);
                });
                self.unnamed = Some(tag);
                self.expect.push_back(Expect::Parse {
                    swallow: false,
                    id: None,
                });
            }
            (b'P', sub) => self.parse(msg, prepared, intern, out, sub),
            (b'B', _) => return self.bind(msg, prepared, &lazy, out),
            (b'E', _) => {
                let mut b = body;
                if let Some(portal) = cbytes(&mut b)
                    && let Some((_, tag)) = self.portals.iter().find(|(p, _)| p == portal)
                {
                    self.expect.push_back(Expect::Emulated(tag));
                }
                out.verbatim(msg);
            }
            (b'D', _) if body.first() == Some(&b'S') => {
                let mut b = &body[1..];
                let id = cbytes(&mut b).and_then(|name| self.ensure(name, prepared, &lazy, out));
                if self.held.is_some() {
                    return 0;
                }
                self.expect.push_back(Expect::Described(id));
                let Some(id) = id else {
                    out.verbatim(msg);
                    return 0;
                };
                message(out.rewrite(), b'D', |o| {
                    o.put_u8(b'S');
                    put_cstr(o, &server_name(id));
                });
            }
            (b'C', _) => {
                self.expect.push_back(Expect::Close {
                    as_parse: false,
                    swallow: false,
                });
                // A Close without its kind byte is malformed: pass it on for the server to refuse.
                let mut b = body.get(1..).unwrap_or_default();
                match cbytes(&mut b) {
                    Some(name) if body.first() == Some(&b'S') && !name.is_empty() => {
                        self.names.remove(name);
                        close(out.rewrite(), b'S', NO_STATEMENT);
                    }
                    _ => out.verbatim(msg),
                }
            }
            (b'S' | b'Q' | b'F', _) => {
                self.ready();
                out.verbatim(msg);
            }
            _ => out.verbatim(msg),
        }
        0
    }

    fn ready(&mut self) {
        self.expect.push_back(Expect::Ready);
        self.sent_segments += 1;
    }

    fn parse(
        &mut self,
        msg: &[u8],
        prepared: &mut Prepared,
        intern: impl FnOnce(&[u8]) -> u64,
        out: &mut impl Out,
        sub: Sub,
    ) {
        let mut b = &msg[5..];
        let Some(name) = cbytes(&mut b) else {
            return out.verbatim(msg);
        };
        if name.is_empty() {
            self.unnamed = None;
            self.expect.push_back(Expect::Parse {
                swallow: false,
                id: None,
            });
            return out.verbatim(msg);
        }
        let bits = match sub {
            Sub::Flag(bits) => bits,
            _ => 0,
        };
        let id = intern(b);
        self.names
            .insert(name.to_vec(), (id, Bytes::copy_from_slice(b), bits));
        if prepared.contains(id) {
            close(out.rewrite(), b'S', NO_STATEMENT);
            self.expect.push_back(Expect::Close {
                as_parse: true,
                swallow: false,
            });
        } else {
            self.make_room(prepared.insert(id), out);
            parse(out.rewrite(), &server_name(id), b);
            self.expect.push_back(Expect::Parse {
                swallow: false,
                id: Some(id),
            });
        }
    }

    /// A Bind: the statement's server name (prepared there first if need be), and the portal
    /// remembered when it is bound to an emulated statement.
    fn bind(
        &mut self,
        msg: &[u8],
        prepared: &mut Prepared,
        lazy: &dyn Fn(u64) -> Lazy,
        out: &mut impl Out,
    ) -> u8 {
        let mut b = &msg[5..];
        let (Some(portal), Some(name)) = (cbytes(&mut b), cbytes(&mut b)) else {
            self.expect.push_back(Expect::Bound(None));
            out.verbatim(msg);
            return 0;
        };
        if !self.portals.is_empty() {
            self.portals.retain(|(p, _)| p != portal);
        }
        if name.is_empty() {
            if let Some(tag) = self.unnamed {
                self.portals.push((portal.to_vec(), tag));
            }
            self.expect.push_back(Expect::Bound(None));
            out.verbatim(msg);
            return 0;
        }
        let bits = self.names.get(name).map_or(0, |n| n.2);
        let id = self.ensure(name, prepared, lazy, out);
        if self.held.is_some() {
            return 0;
        }
        self.expect.push_back(Expect::Bound(id));
        let Some(id) = id else {
            out.verbatim(msg);
            return 0;
        };
        message(out.rewrite(), b'B', |o| {
            put_cstr(o, portal);
            put_cstr(o, &server_name(id));
            o.put_slice(b);
        });
        bits
    }

    /// The server id of client statement `name`, injecting a Parse when the server lacks it;
    /// `None` for the unnamed statement or a name the client never prepared.
    fn ensure(
        &mut self,
        name: &[u8],
        prepared: &mut Prepared,
        lazy: &dyn Fn(u64) -> Lazy,
        out: &mut impl Out,
    ) -> Option<u64> {
        if name.is_empty() {
            return None;
        }
        let (id, body, _) = self.names.get(name)?;
        let id = *id;
        if prepared.contains(id) {
            return Some(id);
        }
        match lazy(id) {
            Lazy::Retired => {
                // The server skips what follows (the Bind or Describe) after this error.
                parse(out.rewrite(), STALE_NAME, &[STALE, b"\0\0\0"].concat());
                self.expect.push_back(Expect::Stale);
                return Some(id);
            }
            Lazy::Check => {
                self.held = Some((id, body.clone()));
                return None;
            }
            Lazy::Fresh => {}
        }
        let body = body.clone();
        self.make_room(prepared.insert(id), out);
        parse(out.rewrite(), &server_name(id), &body);
        self.expect.push_back(Expect::Parse {
            swallow: true,
            id: Some(id),
        });
        Some(id)
    }

    /// Closes the statement evicted to make room, if any; its CloseComplete is dropped.
    fn make_room(&mut self, evicted: Option<u64>, out: &mut impl Out) {
        if let Some(old) = evicted {
            close(out.rewrite(), b'S', &server_name(old));
            self.expect.push_back(Expect::Evict(old));
        }
    }

    /// What to do with server message `msg` (whole, tag first).
    pub fn server_message(&mut self, msg: &[u8], prepared: &mut Prepared) -> Action {
        match msg[0] {
            b'1' => match self.expect.pop_front() {
                Some(Expect::Parse { swallow, id }) => {
                    self.parsed = id;
                    if swallow {
                        Action::Drop
                    } else {
                        Action::Forward
                    }
                }
                _ => Action::Forward,
            },
            b'2' => {
                if let Some(Expect::Bound(_)) = self.expect.front() {
                    self.expect.pop_front();
                }
                Action::Forward
            }
            b't' => match self.expect.front() {
                Some(Expect::Check(_)) => Action::Drop,
                _ => Action::Forward,
            },
            b'T' | b'n' => match self.expect.front() {
                Some(&Expect::Described(id)) => {
                    self.expect.pop_front();
                    self.shape = id.map(|id| Shape {
                        id,
                        hash: row_type(msg),
                        checked: false,
                    });
                    Action::Forward
                }
                Some(&Expect::Check(id)) => {
                    self.expect.pop_front();
                    self.shape = Some(Shape {
                        id,
                        hash: row_type(msg),
                        checked: true,
                    });
                    Action::Drop
                }
                _ => Action::Forward,
            },
            b'3' => match self.expect.pop_front() {
                Some(Expect::Close { swallow: true, .. } | Expect::Evict(_)) => Action::Drop,
                Some(Expect::Close { as_parse: true, .. }) => Action::ParseComplete,
                _ => Action::Forward,
            },
            b'I' => match self.expect.front() {
                Some(Expect::Emulated(tag)) => {
                    let tag = *tag;
                    self.expect.pop_front();
                    Action::Tag(tag)
                }
                _ => Action::Forward,
            },
            b'E' => match self.expect.front() {
                Some(Expect::Refused(bits)) if contains(msg, REFUSED) => {
                    let bits = *bits;
                    self.expect.pop_front();
                    Action::Refused(bits)
                }
                Some(Expect::Stale) if contains(msg, STALE) => {
                    self.expect.pop_front();
                    Action::Stale
                }
                _ => Action::Forward,
            },
            b'C' if msg.get(5) == Some(&b'D') => {
                let tag = msg.get(5..msg.len().saturating_sub(1)).unwrap_or_default();
                if tag == b"DEALLOCATE ALL" || tag == b"DISCARD ALL" {
                    // The server forgot its statements: confirmed if the pooler saw it coming,
                    // else (a path it could not see) the record is cleared now.
                    let segment = self.done_segments;
                    match self.forgets.iter().position(|(s, _)| *s == segment) {
                        Some(i) => {
                            self.forgets.remove(i);
                        }
                        None => prepared.clear(),
                    }
                }
                Action::Forward
            }
            b'Z' => {
                // Whatever is left before this segment's end was skipped after an error: its
                // Parses did not happen, nor did its evictions (which win over a skipped Parse
                // of the same statement: the server kept the one it had).
                let mut kept = Vec::new();
                while let Some(e) = self.expect.pop_front() {
                    match e {
                        Expect::Ready => break,
                        Expect::Parse { id: Some(id), .. } => prepared.remove(id),
                        Expect::Evict(id) => kept.push(id),
                        _ => {}
                    }
                }
                prepared.restore(&kept);
                let segment = self.done_segments;
                self.done_segments += 1;
                // A forget that did not happen (an error skipped it): the server still holds
                // what the record had.
                while let Some(i) = self.forgets.iter().position(|(s, _)| *s <= segment) {
                    let (_, ids) = self.forgets.remove(i);
                    prepared.restore(&ids);
                }
                if self.expect.is_empty() {
                    self.portals.clear();
                }
                Action::Forward
            }
            _ => Action::Forward,
        }
    }

    /// Forgets in-flight expectations (the server connection is gone).
    pub fn reset_flight(&mut self) {
        self.expect.clear();
        self.forgets.clear();
        self.portals.clear();
        self.done_segments = self.sent_segments;
    }
}

/// The result type a RowDescription (or NoData) describes: column names, type oids, lengths
/// and modifiers, hashed.
fn row_type(msg: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    msg[0].hash(&mut h);
    let mut b = msg.get(7..).unwrap_or_default();
    while let Some(name) = cbytes(&mut b) {
        name.hash(&mut h);
        // table oid (4), column number (2), type oid (4), length (2), modifier (4), format (2)
        let Some(field) = b.get(..18) else { break };
        field[6..16].hash(&mut h);
        b = &b[18..];
    }
    h.finish()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
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

    /// Hands `m` to `s` as a message passed on, for a client that interns nothing.
    fn forward(s: &mut Statements, m: &[u8], server: &mut Prepared, out: &mut BytesMut) {
        s.client_message(
            m,
            server,
            (|_| unreachable!(), |_| Lazy::Fresh),
            out,
            Sub::Forward,
        );
    }

    /// A RowDescription of one column `x` of table `table` and type `oid`.
    fn row_description(table: u32, oid: u32) -> BytesMut {
        let mut m = BytesMut::new();
        message(&mut m, b'T', |o| {
            o.put_i16(1);
            put_cstr(o, b"x");
            o.put_u32(table);
            o.put_i16(2);
            o.put_u32(oid);
            o.put_i16(4);
            o.put_i32(-1);
            o.put_i16(0);
        });
        m
    }

    #[test]
    fn a_result_type_is_its_columns_names_and_types_not_their_table() {
        let int = row_type(&row_description(16_384, 23));
        assert_eq!(
            int,
            row_type(&row_description(16_999, 23)),
            "the table made again"
        );
        assert_ne!(
            int,
            row_type(&row_description(16_384, 700)),
            "int became real"
        );
        assert_ne!(int, row_type(b"n\0\0\0\x04"), "no rows at all");
    }

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

    /// A server message with tag `t` and an empty body.
    fn m0(t: u8) -> [u8; 5] {
        [t, 0, 0, 0, 4]
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
            s.client_message(
                &m,
                &mut server_a,
                (|_| 7, |_| Lazy::Fresh),
                &mut out,
                Sub::Forward,
            );
        }
        assert_eq!(tags(&out), b"PBS");
        assert!(out.windows(6).any(|w| w == b"__sg_7"));
        assert_eq!(s.server_message(&m0(b'1'), &mut server_a), Action::Forward);
        assert_eq!(s.server_message(&m0(b'Z'), &mut server_a), Action::Forward);
        // Next transaction lands on a server that never saw it.
        let mut server_b = Prepared::default();
        out.clear();
        for m in [bind_msg("s1"), msg(b'S', |_| {})] {
            s.client_message(
                &m,
                &mut server_b,
                (|_| unreachable!(), |_| Lazy::Fresh),
                &mut out,
                Sub::Forward,
            );
        }
        assert_eq!(tags(&out), b"PBS");
        assert_eq!(s.server_message(&m0(b'1'), &mut server_b), Action::Drop);
        assert_eq!(s.server_message(&m0(b'2'), &mut server_b), Action::Forward);
        assert_eq!(s.server_message(&m0(b'Z'), &mut server_b), Action::Forward);
        assert!(server_b.contains(7));
    }

    #[test]
    fn a_statement_recorded_without_a_server_is_prepared_at_its_bind() {
        let mut s = Statements::default();
        s.parse_without_server(b"s1", 7, b"SELECT 1\0\0\0");
        let mut server = Prepared::default();
        let mut out = BytesMut::new();
        for m in [bind_msg("s1"), msg(b'S', |_| {})] {
            s.client_message(
                &m,
                &mut server,
                (|_| unreachable!(), |_| Lazy::Fresh),
                &mut out,
                Sub::Forward,
            );
        }
        assert_eq!(tags(&out), b"PBS");
        assert!(out.windows(6).any(|w| w == b"__sg_7"));
        assert_eq!(s.take_parsed(), None);
        // Its ParseComplete (swallowed) tells the pool the text parses.
        assert_eq!(s.server_message(&m0(b'1'), &mut server), Action::Drop);
        assert_eq!(s.take_parsed(), Some(7));
        assert_eq!(s.server_message(&m0(b'2'), &mut server), Action::Forward);
        assert_eq!(s.server_message(&m0(b'Z'), &mut server), Action::Forward);
        assert_eq!(s.take_parsed(), None);
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
            (|_| 9, |_| Lazy::Fresh),
            &mut out,
            Sub::Forward,
        );
        assert_eq!(tags(&out), b"C");
        assert_eq!(
            s.server_message(&m0(b'3'), &mut server),
            Action::ParseComplete
        );
    }

    #[test]
    fn an_error_forgets_statements_the_server_skipped() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        let mut out = BytesMut::new();
        for m in [parse_msg("s1", "SELEC oops"), msg(b'S', |_| {})] {
            s.client_message(
                &m,
                &mut server,
                (|_| 3, |_| Lazy::Fresh),
                &mut out,
                Sub::Forward,
            );
        }
        assert!(server.contains(3));
        // ErrorResponse then ReadyForQuery: no ParseComplete came.
        assert_eq!(s.server_message(&m0(b'E'), &mut server), Action::Forward);
        assert_eq!(s.server_message(&m0(b'Z'), &mut server), Action::Forward);
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
                (
                    |_| {
                        ids += 1;
                        ids
                    },
                    |_| Lazy::Fresh,
                ),
                &mut out,
                Sub::Forward,
            );
        }
        // Use "a" again so "b" is the least recently used.
        forward(&mut s, &bind_msg("a"), &mut server, &mut out);
        out.clear();
        s.client_message(
            &parse_msg("c", "c"),
            &mut server,
            (|_| 3, |_| Lazy::Fresh),
            &mut out,
            Sub::Forward,
        );
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
            assert_eq!(s.server_message(&m0(tag), &mut server), want);
        }
        // "b" comes back on demand.
        out.clear();
        forward(&mut s, &bind_msg("b"), &mut server, &mut out);
        assert_eq!(tags(&out), b"CPB");
    }

    /// Found from outside: an error earlier in the same Sync made the server skip the Close of
    /// an evicted statement; the record dropped it anyway, so its next Parse failed with 42P05
    /// ("already exists") for every client, until the connection was recycled.
    #[test]
    fn an_eviction_skipped_after_an_error_keeps_the_statement_recorded() {
        let mut s = Statements::default();
        let mut server = Prepared::with_cap(2);
        let mut out = BytesMut::new();
        let mut feed = |s: &mut Statements, server: &mut Prepared, msgs: &[Vec<u8>], id: u64| {
            for m in msgs {
                s.client_message(m, server, (|_| id, |_| Lazy::Fresh), &mut out, Sub::Forward);
            }
        };
        feed(&mut s, &mut server, &[parse_msg("a", "a")], 1);
        feed(
            &mut s,
            &mut server,
            &[parse_msg("b", "b"), msg(b'S', |_| {})],
            2,
        );
        for tag in [b'1', b'1', b'Z'] {
            s.server_message(&m0(tag), &mut server);
        }
        // An unnamed statement that fails, then "c", which evicts "a", in one segment.
        let failing = [
            parse_msg("", "SELECT 1/0"),
            parse_msg("c", "c"),
            msg(b'S', |_| {}),
        ];
        feed(&mut s, &mut server, &failing, 3);
        assert!(!server.contains(1), "a is evicted");
        // The unnamed Parse passes; the Execute-time error skips the Close and the Parse.
        for tag in [b'1', b'E', b'Z'] {
            s.server_message(&m0(tag), &mut server);
        }
        assert!(server.contains(1), "the server still holds a");
        assert!(!server.contains(3), "c was never parsed");
        let mut out = BytesMut::new();
        s.client_message(
            &bind_msg("a"),
            &mut server,
            (|_| 0, |_| Lazy::Fresh),
            &mut out,
            Sub::Forward,
        );
        assert_eq!(tags(&out), b"B", "a is bound, not parsed again");
    }

    #[test]
    fn malformed_messages_pass_through_without_panicking() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        for tag in [b'P', b'B', b'D', b'C'] {
            let m = msg(tag, |_| {});
            let mut out = BytesMut::new();
            s.client_message(
                &m,
                &mut server,
                (|_| 1, |_| Lazy::Fresh),
                &mut out,
                Sub::Forward,
            );
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
            s.client_message(&m, &mut server, (|_| 1, |_| Lazy::Fresh), &mut out, Sub::Forward);
            for t in [b'1', b'2', b'3', b'Z'] {
                let _ = s.server_message(&m0(t), &mut server);
            }
        }
    }

    /// One of a few client messages that exercise every rewrite: named and unnamed Parse (of
    /// several bodies), Bind, Describe and Close (of names that may or may not exist), Execute,
    /// Sync, Query.
    fn some_message(kind: u8, name: u8, body: u8) -> Vec<u8> {
        let name = ["", "a", "b", "c"][usize::from(name % 4)];
        match kind % 7 {
            0 => parse_msg(name, &format!("SELECT {body}")),
            1 => bind_msg(name),
            2 => msg(b'D', |o| {
                o.put_u8(b'S');
                put_cstr(o, name.as_bytes());
            }),
            3 => msg(b'C', |o| {
                o.put_u8(b'S');
                put_cstr(o, name.as_bytes());
            }),
            4 => msg(b'E', |o| {
                put_cstr(o, b"");
                o.put_i32(0);
            }),
            5 => m0(b'S').to_vec(),
            _ => msg(b'Q', |o| put_cstr(o, b"SELECT 1")),
        }
    }

    /// How the pooler treats a message, drawn from every kind of substitution.
    fn some_sub(n: u8) -> Sub {
        match n % 6 {
            0 => Sub::Emulate("DEALLOCATE"),
            1 => Sub::Refuse(1),
            2 => Sub::Flag(2),
            _ => Sub::Forward,
        }
    }

    proptest::proptest! {
        /// The lazy path (`Outgoing`: unchanged messages sent from the client's buffer) sends
        /// exactly what copying every message gives, across rewrites, injected Parses, evictions,
        /// stand-ins, a server switch, bytes already queued, and a run cut short.
        #[test]
        fn a_run_sent_from_the_client_buffer_is_what_copying_it_gives(
            batches in proptest::collection::vec(
                (
                    proptest::collection::vec((0u8..7, 0u8..4, 0u8..5, 0u8..6), 1..8),
                    proptest::bool::ANY,
                    proptest::bool::ANY,
                    0usize..8,
                ),
                1..6,
            ),
        ) {
            let (mut copied, mut lazy) = (Statements::default(), Statements::default());
            let (mut server_c, mut server_l) = (Prepared::with_cap(2), Prepared::with_cap(2));
            let intern = |b: &[u8]| b.iter().fold(7u64, |h, &x| h.wrapping_mul(31) ^ u64::from(x));
            for (batch, new_server, queued, cut) in batches {
                if new_server {
                    (server_c, server_l) = (Prepared::with_cap(2), Prepared::with_cap(2));
                }
                let src: Vec<u8> = batch
                    .iter()
                    .flat_map(|&(k, n, b, _)| some_message(k, n, b))
                    .collect();
                let mut expected = BytesMut::new();
                let mut buf = BytesMut::new();
                if queued {
                    let begin = msg(b'Q', |o| put_cstr(o, b"BEGIN"));
                    expected.put_slice(&begin);
                    buf.put_slice(&begin);
                }
                let mut out = crate::outgoing::Outgoing::new(&mut buf, &src);
                let mut at = 0;
                let runs = crate::proto::messages(&src).zip(&batch).take(cut.max(1));
                for ((_, m), &(_, _, _, sub)) in runs {
                    out.at(at);
                    at += m.len();
                    copied.client_message(m, &mut server_c, (intern, |_| Lazy::Fresh), &mut expected, some_sub(sub));
                    lazy.client_message(m, &mut server_l, (intern, |_| Lazy::Fresh), &mut out, some_sub(sub));
                }
                proptest::prop_assert_eq!(out.bytes(at), &expected[..]);
                for t in [b'1', b'2', b'3', b'I', b'Z'] {
                    let _ = copied.server_message(&m0(t), &mut server_c);
                    let _ = lazy.server_message(&m0(t), &mut server_l);
                }
            }
        }
    }

    #[test]
    fn unnamed_statements_pass_untouched() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        let mut out = BytesMut::new();
        let p = parse_msg("", "SELECT 1");
        forward(&mut s, &p, &mut server, &mut out);
        assert_eq!(&out[..], &p[..]);
        assert_eq!(s.server_message(&m0(b'1'), &mut server), Action::Forward);
    }

    fn query_msg(q: &str) -> Vec<u8> {
        msg(b'Q', |o| put_cstr(o, q.as_bytes()))
    }

    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', |o| put_cstr(o, tag.as_bytes()))
    }

    #[test]
    fn an_emulated_query_is_answered_through_an_empty_one() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        server.insert(4);
        let mut out = BytesMut::new();
        s.client_message(
            &query_msg("DEALLOCATE ALL"),
            &mut server,
            (|_| unreachable!(), |_| Lazy::Fresh),
            &mut out,
            Sub::Emulate("DEALLOCATE ALL"),
        );
        assert_eq!(&out[..], b"Q\0\0\0\x05\0");
        assert_eq!(
            s.server_message(&m0(b'I'), &mut server),
            Action::Tag("DEALLOCATE ALL")
        );
        assert_eq!(s.server_message(&m0(b'Z'), &mut server), Action::Forward);
        assert!(server.contains(4), "the server still has every statement");
        // A client's own empty query is left alone.
        s.client_message(
            &query_msg(""),
            &mut server,
            (|_| 0, |_| Lazy::Fresh),
            &mut out,
            Sub::Forward,
        );
        assert_eq!(s.server_message(&m0(b'I'), &mut server), Action::Forward);
    }

    #[test]
    fn an_emulated_unnamed_statement_answers_at_its_execute() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        let mut out = BytesMut::new();
        let execute = msg(b'E', |o| {
            put_cstr(o, b"");
            o.put_i32(0);
        });
        s.client_message(
            &parse_msg("", "DEALLOCATE ALL"),
            &mut server,
            (|_| unreachable!(), |_| Lazy::Fresh),
            &mut out,
            Sub::Emulate("DEALLOCATE ALL"),
        );
        for m in [bind_msg(""), execute.clone(), msg(b'S', |_| {})] {
            forward(&mut s, &m, &mut server, &mut out);
        }
        assert_eq!(tags(&out), b"PBES");
        assert!(
            !out.windows(10).any(|w| w == b"DEALLOCATE"),
            "empty text sent"
        );
        for (m, want) in [
            (m0(b'1'), Action::Forward),
            (m0(b'2'), Action::Forward),
            (m0(b'I'), Action::Tag("DEALLOCATE ALL")),
            (m0(b'Z'), Action::Forward),
        ] {
            assert_eq!(s.server_message(&m, &mut server), want);
        }
        // The next unnamed statement is a real one.
        out.clear();
        for m in [parse_msg("", ""), bind_msg(""), execute, msg(b'S', |_| {})] {
            forward(&mut s, &m, &mut server, &mut out);
        }
        for t in [b'1', b'2'] {
            s.server_message(&m0(t), &mut server);
        }
        assert_eq!(s.server_message(&m0(b'I'), &mut server), Action::Forward);
    }

    #[test]
    fn a_refused_parse_fails_in_place_and_is_not_remembered() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        let mut out = BytesMut::new();
        s.client_message(
            &parse_msg("lock", "SELECT pg_advisory_lock($1)"),
            &mut server,
            (|_| unreachable!(), |_| Lazy::Fresh),
            &mut out,
            Sub::Refuse(4),
        );
        assert!(out.windows(REFUSED.len()).any(|w| w == REFUSED));
        assert!(s.is_empty());
        let other_error = msg(b'E', |o| put_cstr(o, b"Mboom"));
        assert_eq!(s.server_message(&other_error, &mut server), Action::Forward);
        let stand_in_error = msg(b'E', |o| {
            o.put_slice(b"Msyntax error at or near \"");
            o.put_slice(REFUSED);
            put_cstr(o, b"\"");
        });
        assert_eq!(
            s.server_message(&stand_in_error, &mut server),
            Action::Refused(4)
        );
    }

    #[test]
    fn a_forget_clears_the_record_and_an_unconfirmed_one_is_undone() {
        let mut s = Statements::default();
        let mut server = Prepared::default();
        let mut out = BytesMut::new();
        server.insert(1);
        server.insert(2);
        // Confirmed: the server said DISCARD ALL, and what was parsed after it stays recorded.
        s.server_forgets(&mut server);
        s.client_message(
            &query_msg("DISCARD ALL"),
            &mut server,
            (|_| 0, |_| Lazy::Fresh),
            &mut out,
            Sub::Forward,
        );
        s.client_message(
            &parse_msg("a", "SELECT 1"),
            &mut server,
            (|_| 1, |_| Lazy::Fresh),
            &mut out,
            Sub::Forward,
        );
        s.client_message(
            &msg(b'S', |_| {}),
            &mut server,
            (|_| 0, |_| Lazy::Fresh),
            &mut out,
            Sub::Forward,
        );
        assert_eq!(tags(&out), b"QPS", "statement 1 is parsed again");
        for m in [
            complete("DISCARD ALL"),
            m0(b'Z').to_vec(),
            m0(b'1').to_vec(),
            m0(b'Z').to_vec(),
        ] {
            s.server_message(&m, &mut server);
        }
        assert!(server.contains(1) && !server.contains(2));
        // Unconfirmed (the statement failed): the record comes back.
        server.insert(2);
        s.server_forgets(&mut server);
        s.client_message(
            &query_msg("DISCARD ALL"),
            &mut server,
            (|_| 0, |_| Lazy::Fresh),
            &mut out,
            Sub::Forward,
        );
        assert!(server.is_empty());
        s.server_message(&msg(b'E', |_| {}), &mut server);
        s.server_message(&m0(b'Z'), &mut server);
        assert!(server.contains(1) && server.contains(2));
        // A forget the pooler did not see coming clears the record when the server reports it.
        s.server_message(&complete("DEALLOCATE ALL"), &mut server);
        assert!(server.is_empty());
    }
}
