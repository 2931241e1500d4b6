//! What a client's SQL does to its session beyond the transaction: session state that cannot be
//! shared (LISTEN, WITH HOLD cursors, session advisory locks, SQL PREPARE, TEMP tables,
//! untracked `set_config`), statements the pooler answers itself (`DEALLOCATE`), statements that
//! make the server forget every prepared statement (`DEALLOCATE ALL`, `DISCARD ALL`), and
//! setting changes (`SET`, `RESET`, `set_config(…, false)` with literal arguments).
//!
//! A byte-level prefilter ([`may_matter`]) keeps ordinary statements off the slow path; the
//! others are split into statements and read token by token with sqlparser's tokenizer, so
//! comments, string literals, quoted identifiers and dollar quoting never mislead it
//! (`SELECT 'with hold'` creates nothing).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Word};

use crate::settings::{self, Change};

/// Session state kinds, as bits of [`Effects::creates`].
pub mod state {
    /// `LISTEN`.
    pub const LISTEN: u8 = 1;
    /// A `WITH HOLD` cursor.
    pub const CURSOR: u8 = 2;
    /// A session-level advisory lock.
    pub const LOCK: u8 = 4;
    /// A statement prepared with SQL `PREPARE`.
    pub const PREPARE: u8 = 8;
    /// A temporary table (or view, sequence) outliving its transaction.
    pub const TEMP: u8 = 16;
    /// A setting the pooler cannot replay (`set_config(…, false)` with non-literal arguments).
    pub const CONFIG: u8 = 32;
    /// Anything else that lives as long as the session (`SET SESSION AUTHORIZATION`, `LOAD`).
    pub const OTHER: u8 = 64;
    /// Not a kind: marks a prepared statement whose execution may remove state.
    pub const VERIFY: u8 = 128;
    /// The kinds a query of the server's catalogs can see.
    pub const VISIBLE: u8 = LISTEN | CURSOR | LOCK | PREPARE | TEMP;

    /// Human names of the kinds in `bits`, comma-separated.
    pub fn names(bits: u8) -> String {
        const NAMES: [&str; 7] = [
            "listen",
            "hold_cursor",
            "advisory_lock",
            "sql_prepare",
            "temp_table",
            "set_config",
            "session_command",
        ];
        NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Why a statement with state `bits` cannot run without a session of its own.
    pub fn reason(bits: u8) -> &'static str {
        if bits & LISTEN != 0 {
            "LISTEN"
        } else if bits & CURSOR != 0 {
            "a WITH HOLD cursor"
        } else if bits & LOCK != 0 {
            "a session-level advisory lock"
        } else if bits & PREPARE != 0 {
            "SQL PREPARE"
        } else if bits & TEMP != 0 {
            "a temporary table that outlives its transaction"
        } else if bits & CONFIG != 0 {
            "set_config(…, false) with non-literal arguments"
        } else {
            "a session-level command (SET SESSION AUTHORIZATION, LOAD, a search_path that \
             puts pg_temp first, …)"
        }
    }

    /// What to do instead, for the hint of a refusal.
    pub fn hint(bits: u8) -> &'static str {
        if bits & LOCK != 0 {
            "use pg_advisory_xact_lock (released at commit), or set on_session_state = \"pin\" \
             or pool_mode = \"session\" for this database"
        } else if bits & PREPARE != 0 {
            "use protocol-level prepared statements (every driver's prepare), which the pooler \
             supports, or set on_session_state = \"pin\" for this database"
        } else if bits & TEMP != 0 {
            "use CREATE TEMP TABLE … ON COMMIT DROP inside a transaction, or set \
             on_session_state = \"pin\" for this database"
        } else if bits & CONFIG != 0 {
            "use SET, or set_config with literal arguments, or set_config(…, true) inside a \
             transaction"
        } else {
            "set on_session_state = \"pin\" or pool_mode = \"session\" for this database"
        }
    }
}

/// A statement the pooler answers for the client without running it on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emulate {
    /// `DEALLOCATE ALL`: forget this client's statement names.
    DeallocateAll,
    /// `DEALLOCATE name`: forget one name (when it is one of the client's).
    Deallocate(Vec<u8>),
}

/// What a query string does beyond its transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Session state it creates ([`state`] bits).
    pub creates: u8,
    /// Untracked state it removes when it succeeds (`RESET ALL`, `DISCARD ALL`).
    pub clears: u8,
    /// It may remove session state (UNLISTEN, CLOSE, an unlock, DROP, DISCARD, DEALLOCATE):
    /// worth asking the server what is left.
    pub verify: bool,
    /// The whole string is one statement the pooler can answer itself.
    pub emulate: Option<Emulate>,
    /// Run on the server, it makes the server forget every prepared statement.
    pub forgets: bool,
    /// The whole string is `DISCARD ALL`.
    pub discard_all: bool,
    /// Setting changes, in order.
    pub settings: Vec<Change>,
    /// Settings whose value is a parameter of the statement (`set_config('jit', $1, false)`,
    /// asyncpg's): (lower-cased name, 1-based parameter number), made when a Bind gives it.
    pub param_settings: Vec<(String, usize)>,
    /// Statements in the string.
    pub statements: usize,
    /// It runs code the pooler cannot read (a `DO` block) or changes settings out of its
    /// sight (`UPDATE pg_settings`): the server's session settings are unknown once it has run.
    pub opaque: bool,
    /// State it may create that the pooler cannot name (a `DO` block's dynamic SQL may
    /// `EXECUTE 'LISTEN …'` or `'PREPARE …'`): the client is held to its server until the
    /// server's catalogs, asked at the transaction's end, show none. Never refused: nothing
    /// is known to be created.
    pub suspect: u8,
    /// `SET LOCAL search_path …` (its text): the search_path until the transaction ends.
    pub local_search_path: Option<String>,
}

impl Effects {
    /// How it changes the search_path that names its client's statements: `Some(Some(text))`
    /// for a SET (session or LOCAL; the text stands for the value), `Some(None)` back to the
    /// session's default (RESET, RESET ALL, DISCARD ALL), `None` when it leaves it alone.
    pub fn search_path_change(&self) -> Option<Option<&str>> {
        let session = self.settings.iter().rev().find_map(|c| match c {
            Change::Set { name, sql } if name == "search_path" => Some(Some(sql.as_str())),
            Change::Reset(name) if name == "search_path" => Some(None),
            Change::ResetAll | Change::DiscardAll => Some(None),
            _ => None,
        });
        session.or(self.local_search_path.as_deref().map(Some))
    }
}

/// [`analyze`] with its results cached by text (bounded: cleared when full), behind the
/// [`may_matter`] prefilter.
#[derive(Debug, Default)]
pub struct Analyzer {
    cache: Mutex<HashMap<Box<[u8]>, Arc<Effects>>>,
}

const CACHE_ENTRIES: usize = 10_000;

impl Analyzer {
    /// What `sql` does beyond its transaction; `None` when it does nothing of interest.
    pub fn effects(&self, sql: &[u8]) -> Option<Arc<Effects>> {
        if !may_matter(sql) {
            return None;
        }
        if let Ok(c) = self.cache.lock()
            && let Some(fx) = c.get(sql)
        {
            return Some(fx.clone());
        }
        let fx = Arc::new(analyze(&String::from_utf8_lossy(sql)));
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_ENTRIES {
                c.clear();
            }
            c.insert(sql.into(), fx.clone());
        }
        Some(fx)
    }
}

/// Whether `sql` may do anything [`analyze`] looks for: a cheap scan that ordinary statements
/// (SELECT, INSERT, UPDATE … SET, DELETE) pass without allocating.
pub fn may_matter(sql: &[u8]) -> bool {
    let start = skip_space_and_comments(sql);
    let rest = &sql[start..];
    let word_len = rest
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    first_word_matters(&rest[..word_len]) || mentions_or_continues(rest)
}

/// Whether a statement's first word is one whose statement [`analyze`] must read.
fn first_word_matters(word: &[u8]) -> bool {
    // By length first: most first words (SELECT, INSERT, UPDATE, BEGIN …) are then compared
    // with one candidate or none.
    let candidates: &[&[u8]] = match word.len() {
        2 => &[b"do"],
        3 => &[b"set"],
        4 => &[b"load", b"drop"],
        5 => &[b"reset", b"close"],
        6 => &[b"listen"],
        7 => &[b"discard", b"declare", b"prepare"],
        8 => &[b"unlisten"],
        10 => &[b"deallocate"],
        _ => &[],
    };
    candidates.iter().any(|w| word.eq_ignore_ascii_case(w))
}

/// One pass over a statement (it runs for every statement a client sends): whether it names
/// what only [`analyze`] can judge wherever it stands (advisory locks, `set_config`, temporary
/// objects), or holds more than one statement (each is then looked at).
fn mentions_or_continues(sql: &[u8]) -> bool {
    // Sixteen bytes at a time, a word of interest is recognised by its first two letters and
    // the end of the first statement by its `;`; only where such a pair may start is the word
    // compared. Hits are taken in order, so the first `;` found is the first in the text, and
    // words past it are never looked at: past the first `;` only another statement can matter.
    let mut at = 0;
    while at < sql.len() {
        let mut hits = crate::candidates::candidates(sql, at);
        while hits != 0 {
            let i = at + hits.trailing_zeros() as usize;
            if sql.get(i) == Some(&b';') {
                let rest = sql.get(i + 1..).unwrap_or_default();
                return rest
                    .iter()
                    .any(|c| !c.is_ascii_whitespace() && *c != b';' && *c != 0);
            }
            if word_at(sql, i) {
                return true;
            }
            hits &= hits - 1;
        }
        at += 16;
    }
    false
}

/// Whether a word [`mentions_or_continues`] looks for starts at `sql[i]`.
fn word_at(sql: &[u8], i: usize) -> bool {
    let Some(rest) = sql.get(i..).filter(|r| !r.is_empty()) else {
        return false;
    };
    match WORD_START[usize::from(rest[0])] {
        0 => false,
        b'a' => starts_with_ci(rest, b"advisory"),
        b's' => starts_with_ci(rest, b"set_config") || starts_with_ci(rest, b"settings"),
        _ => starts_with_ci(rest, b"temp"),
    }
}

/// For each byte, the lower-case first letter of a word [`mentions_or_continues`] looks for
/// that it can start, or 0.
static WORD_START: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 3 {
        let c = [b'a', b's', b't'][i];
        t[c as usize] = c;
        t[c.to_ascii_uppercase() as usize] = c;
        i += 1;
    }
    t
};

/// Offset of the first byte after leading whitespace and comments.
fn skip_space_and_comments(sql: &[u8]) -> usize {
    let mut i = 0;
    loop {
        while i < sql.len() && sql[i].is_ascii_whitespace() {
            i += 1;
        }
        if sql[i..].starts_with(b"--") {
            while i < sql.len() && sql[i] != b'\n' {
                i += 1;
            }
        } else if sql[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < sql.len() {
                if sql[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if sql[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else {
            return i.min(sql.len());
        }
    }
}

/// Whether `hay` starts with `needle` (lower-case ASCII), ignoring ASCII case.
fn starts_with_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len()
        && hay
            .iter()
            .zip(needle)
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// Reads every statement of `sql`. Text the tokenizer cannot read (an unterminated quote) is
/// left to the server, which refuses it: nothing is created.
pub fn analyze(sql: &str) -> Effects {
    let mut fx = Effects::default();
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .with_unescape(false)
        .tokenize()
    else {
        return fx;
    };
    let mut statements: Vec<Vec<&Token>> = vec![Vec::new()];
    for t in &tokens {
        match t {
            Token::Whitespace(_) | Token::EOF => {}
            Token::SemiColon => statements.push(Vec::new()),
            t => {
                if let Some(s) = statements.last_mut() {
                    s.push(t);
                }
            }
        }
    }
    statements.retain(|s| !s.is_empty());
    fx.statements = statements.len();
    for s in &statements {
        statement(s, &mut fx);
    }
    if fx.statements != 1 {
        fx.emulate = None;
        fx.discard_all = false;
    }
    // Settings from literals and from parameters in one string: made in an order the pooler
    // does not keep (parameters are only known at Bind), so the state is the server's alone.
    if !fx.param_settings.is_empty() && !fx.settings.is_empty() {
        fx.param_settings.clear();
        fx.settings.clear();
        fx.creates |= state::CONFIG;
    }
    fx
}

fn word(t: &Token) -> Option<&Word> {
    match t {
        Token::Word(w) => Some(w),
        _ => None,
    }
}

/// Whether token `t` is the unquoted keyword `kw` (upper case).
fn is(t: Option<&&Token>, kw: &str) -> bool {
    t.and_then(|t| word(t))
        .is_some_and(|w| w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
}

/// An identifier as PostgreSQL folds it (unquoted: lower case).
fn ident(w: &Word) -> Vec<u8> {
    match w.quote_style {
        None => w.value.to_ascii_lowercase().into_bytes(),
        Some(_) => w.value.clone().into_bytes(),
    }
}

fn statement(s: &[&Token], fx: &mut Effects) {
    use state::*;
    let at = |i: usize| s.get(i);
    let first = at(0);
    if is(first, "EXPLAIN") {
        // EXPLAIN ANALYZE runs its statement (`EXPLAIN ANALYZE CREATE TEMP TABLE t AS …`).
        if let Some(inner) = explained(s) {
            statement(inner, fx);
        }
        return;
    }
    if is(first, "DO") {
        do_block(s, fx);
    } else if is(first, "LISTEN") {
        fx.creates |= LISTEN;
    } else if is(first, "UNLISTEN") || is(first, "CLOSE") || is(first, "DROP") {
        fx.verify = true;
    } else if is(first, "DECLARE") {
        let upto = s.iter().position(|t| is(Some(t), "FOR")).unwrap_or(s.len());
        if (1..upto).any(|i| is(at(i), "WITH") && is(at(i + 1), "HOLD")) {
            fx.creates |= CURSOR;
        }
    } else if is(first, "PREPARE") {
        if !is(at(1), "TRANSACTION") {
            fx.creates |= PREPARE;
        }
    } else if is(first, "DEALLOCATE") {
        fx.verify = true;
        let i = if is(at(1), "PREPARE") { 2 } else { 1 };
        if is(at(i), "ALL") {
            fx.forgets = true;
            fx.emulate = Some(Emulate::DeallocateAll);
        } else if let Some(w) = at(i).and_then(|t| word(t))
            && s.len() == i + 1
        {
            fx.emulate = Some(Emulate::Deallocate(ident(w)));
        }
    } else if is(first, "DISCARD") {
        fx.verify = true;
        if is(at(1), "ALL") {
            fx.discard_all = true;
            fx.forgets = true;
            fx.clears |= CONFIG | OTHER;
            fx.settings.push(Change::DiscardAll);
        }
    } else if is(first, "RESET") {
        if is(at(1), "ALL") {
            fx.clears |= CONFIG;
        }
        if is(at(1), "SESSION") && is(at(2), "AUTHORIZATION") {
            fx.clears |= OTHER;
        } else if let Some(c) = settings::classify(&render(s)) {
            fx.settings.push(c);
        }
    } else if is(first, "SET") {
        set(s, fx);
    } else if is(first, "LOAD") {
        fx.creates |= OTHER;
    } else if is(first, "CREATE") {
        let upto = s
            .iter()
            .position(|t| is(Some(t), "AS") || matches!(t, Token::LParen))
            .unwrap_or(s.len());
        let temp = (1..upto).any(|i| {
            is(at(i), "TEMP")
                || is(at(i), "TEMPORARY")
                || at(i)
                    .and_then(|t| word(t))
                    .is_some_and(|w| ident(w) == b"pg_temp")
        });
        let on_commit_drop = (0..s.len())
            .any(|i| is(at(i), "ON") && is(at(i + 1), "COMMIT") && is(at(i + 2), "DROP"));
        if temp && !on_commit_drop {
            fx.creates |= TEMP;
        }
    }
    // SELECT … INTO TEMP t (in any statement that can hold a SELECT).
    if !is(first, "CREATE")
        && (0..s.len()).any(|i| {
            is(at(i), "INTO")
                && (is(at(i + 1), "TEMP")
                    || is(at(i + 1), "TEMPORARY")
                    || at(i + 1)
                        .and_then(|t| word(t))
                        .is_some_and(|w| ident(w) == b"pg_temp"))
        })
    {
        fx.creates |= TEMP;
    }
    if updates_pg_settings(s) {
        fx.opaque = true;
    }
    calls(s, fx);
}

/// The statement an `EXPLAIN` runs: the one after its options when they ask for ANALYZE
/// (`EXPLAIN ANALYZE VERBOSE …`, `EXPLAIN (ANALYZE, BUFFERS) …`); `None` when it only plans.
fn explained<'a, 'b>(s: &'a [&'b Token]) -> Option<&'a [&'b Token]> {
    let analyze = |t: &&Token| is(Some(t), "ANALYZE") || is(Some(t), "ANALYSE");
    if matches!(s.get(1), Some(Token::LParen)) {
        let close = s.iter().position(|t| matches!(t, Token::RParen))?;
        return s[2..close].iter().any(analyze).then(|| &s[close + 1..]);
    }
    let start = 1 + s[1..]
        .iter()
        .take_while(|t| analyze(t) || is(Some(t), "VERBOSE"))
        .count();
    s[1..start].iter().any(analyze).then(|| &s[start..])
}

/// Whether a search_path value puts `pg_temp` first, where tables made without a schema are
/// temporary: `CREATE TABLE t` then makes session state no statement names.
pub(crate) fn pg_temp_first(value: &str) -> bool {
    value.split(',').next().is_some_and(|v| {
        v.trim()
            .trim_matches(['\'', '"'])
            .eq_ignore_ascii_case("pg_temp")
    })
}

/// Whether a statement updates `pg_settings`, which PostgreSQL documents as the same as SET.
fn updates_pg_settings(s: &[&Token]) -> bool {
    let names = |i: usize| {
        s.get(i)
            .and_then(|t| word(t))
            .is_some_and(|w| ident(w) == b"pg_settings")
    };
    (0..s.len()).any(|i| {
        if !is(s.get(i), "UPDATE") {
            return false;
        }
        let i = if is(s.get(i + 1), "ONLY") { i + 1 } else { i };
        names(i + 1)
            || (s.get(i + 1).and_then(|t| word(t)).map(ident).as_deref() == Some(b"pg_catalog")
                && matches!(s.get(i + 2), Some(Token::Period))
                && names(i + 3))
    })
}

/// `SET …`: a tracked setting, a session-level command, or nothing (SET LOCAL, SET TRANSACTION).
fn set(s: &[&Token], fx: &mut Effects) {
    let at = |i: usize| s.get(i);
    if is(at(1), "SESSION") && (is(at(2), "AUTHORIZATION") || is(at(2), "CHARACTERISTICS")) {
        fx.creates |= state::OTHER;
        return;
    }
    if is(at(1), "LOCAL")
        && at(2)
            .and_then(|t| word(t))
            .is_some_and(|w| ident(w) == b"search_path")
    {
        fx.local_search_path = Some(render(s));
    }
    let name = if is(at(1), "LOCAL") || is(at(1), "SESSION") {
        2
    } else {
        1
    };
    let value = if is(at(name + 1), "TO") || matches!(at(name + 1), Some(Token::Eq)) {
        name + 2
    } else {
        name + 1
    };
    let first_schema = match at(value) {
        Some(Token::SingleQuotedString(v)) => Some(v.clone()),
        Some(t) => word(t).map(|w| String::from_utf8_lossy(&ident(w)).into_owned()),
        None => None,
    };
    if at(name)
        .and_then(|t| word(t))
        .is_some_and(|w| ident(w) == b"search_path" || ident(w) == b"schema")
        && first_schema.is_some_and(|v| v == "pg_temp")
    {
        fx.creates |= state::OTHER;
    }
    if let Some(c) = settings::classify(&render(s)) {
        fx.settings.push(c);
    }
}

/// A `DO` block: its code may change settings (so they become unknown) and, when its text
/// names them, take a session advisory lock or create a temporary table (pinned, then verified
/// against the server's catalogs at the transaction's end).
fn do_block(s: &[&Token], fx: &mut Effects) {
    use state::*;
    fx.opaque = true;
    // Whatever its text says, its dynamic SQL may leave any of them: the catalogs are asked.
    fx.suspect |= VISIBLE;
    fx.verify = true;
    for t in s {
        let code = match t {
            Token::DollarQuotedString(d) => d.value.as_str(),
            Token::SingleQuotedString(v) => v.as_str(),
            _ => continue,
        };
        let code = code
            .split_ascii_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase();
        if code.contains("pg_advisory_lock") || code.contains("pg_try_advisory_lock") {
            fx.creates |= LOCK;
            fx.verify = true;
        }
        if [
            "temp table",
            "temporary table",
            "create temp",
            "create temporary",
        ]
        .iter()
        .any(|w| code.contains(w))
        {
            fx.creates |= TEMP;
            fx.verify = true;
        }
    }
}

/// Function calls: advisory locks and unlocks, set_config.
fn calls(s: &[&Token], fx: &mut Effects) {
    for (i, t) in s.iter().enumerate() {
        let Some(w) = word(t) else { continue };
        if !matches!(s.get(i + 1), Some(Token::LParen)) {
            continue;
        }
        let name = ident(w);
        match &name[..] {
            // The lock may not be taken (a `try` that found it held, a lock wait cancelled):
            // pinned, then the catalogs are asked at the transaction's end.
            b"pg_advisory_lock"
            | b"pg_advisory_lock_shared"
            | b"pg_try_advisory_lock"
            | b"pg_try_advisory_lock_shared" => {
                fx.creates |= state::LOCK;
                fx.verify = true;
            }
            b"pg_advisory_unlock" | b"pg_advisory_unlock_shared" | b"pg_advisory_unlock_all" => {
                fx.verify = true;
            }
            b"set_config" => set_config(s, i, fx),
            _ => {}
        }
    }
}

/// `set_config(name, value, is_local)` at token `i`: nothing when local, a tracked setting when
/// the statement is exactly `SELECT set_config('name', 'value', false)`, else untracked state.
fn set_config(s: &[&Token], i: usize, fx: &mut Effects) {
    let args = call_args(&s[i + 2..]);
    let literal = |a: &[&Token]| match a {
        [Token::SingleQuotedString(v)] => Some(v.replace("''", "'")),
        _ => None,
    };
    let local = match args.get(2).map(|a| &a[..]) {
        Some([t]) if is(Some(t), "TRUE") => Some(true),
        Some([t]) if is(Some(t), "FALSE") => Some(false),
        Some([Token::SingleQuotedString(v)]) => match v.to_ascii_lowercase().as_str() {
            "t" | "true" | "on" | "yes" | "1" => Some(true),
            "f" | "false" | "off" | "no" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    };
    if args
        .first()
        .and_then(|a| literal(a))
        .is_some_and(|n| n.eq_ignore_ascii_case("search_path"))
        && args
            .get(1)
            .and_then(|a| literal(a))
            .is_some_and(|v| pg_temp_first(&v))
    {
        fx.creates |= state::OTHER;
    }
    if local == Some(true) {
        return;
    }
    // The statement must read nothing else: `SELECT set_config(…) [AS alias]`, perhaps beside
    // other such calls and `current_setting(…)` (asyncpg: `SELECT current_setting('jit') AS
    // cur, set_config('jit', 'off', false) AS new`).
    let whole = only_setting_calls(s);
    let param = |a: &[&Token]| match a {
        [Token::Placeholder(p)] => p.strip_prefix('$')?.parse::<usize>().ok(),
        _ => None,
    };
    if let (3, Some(name), Some(n), Some(false), true) = (
        args.len(),
        args.first().and_then(|a| literal(a)),
        args.get(1).and_then(|a| param(a)),
        local,
        whole,
    ) {
        fx.param_settings.push((name.to_ascii_lowercase(), n));
        return;
    }
    match (
        args.len(),
        args.first().and_then(|a| literal(a)),
        args.get(1).and_then(|a| literal(a)),
        local,
    ) {
        (3, Some(name), Some(value), Some(false)) if whole => {
            let q = |v: &str| v.replace('\'', "''");
            fx.settings.push(Change::Set {
                name: name.to_ascii_lowercase(),
                sql: format!(
                    "SELECT pg_catalog.set_config('{}', '{}', false)",
                    q(&name),
                    q(&value)
                ),
            });
        }
        _ => fx.creates |= state::CONFIG,
    }
}

/// Whether statement `s` is `SELECT` of nothing but calls of `set_config` and
/// `current_setting` (perhaps `pg_catalog.`-qualified), each perhaps with an alias.
fn only_setting_calls(s: &[&Token]) -> bool {
    if !is(s.first(), "SELECT") {
        return false;
    }
    let mut i = 1;
    loop {
        if is(s.get(i), "pg_catalog") && matches!(s.get(i + 1), Some(Token::Period)) {
            i += 2;
        }
        let named = s.get(i).and_then(|t| word(t)).map(ident);
        if !matches!(named.as_deref(), Some(b"set_config" | b"current_setting"))
            || !matches!(s.get(i + 1), Some(Token::LParen))
        {
            return false;
        }
        // Past the call's matching parenthesis.
        let mut depth = 0usize;
        i += 1;
        loop {
            match s.get(i) {
                None => return false,
                Some(Token::LParen) => depth += 1,
                Some(Token::RParen) if depth == 1 => break,
                Some(Token::RParen) => depth -= 1,
                Some(_) => {}
            }
            i += 1;
        }
        i += 1;
        if is(s.get(i), "AS") {
            i += 1;
        }
        if s.get(i).and_then(|t| word(t)).is_some() {
            i += 1;
        }
        match s.get(i) {
            None => return true,
            Some(Token::Comma) => i += 1,
            Some(_) => return false,
        }
    }
}

/// The comma-separated arguments of a call whose tokens start after its `(`.
fn call_args<'a>(s: &[&'a Token]) -> Vec<Vec<&'a Token>> {
    let mut args = vec![Vec::new()];
    let mut depth = 0usize;
    for t in s {
        match t {
            Token::LParen => depth += 1,
            Token::RParen if depth == 0 => break,
            Token::RParen => depth -= 1,
            Token::Comma if depth == 0 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if let Some(a) = args.last_mut() {
            a.push(*t);
        }
    }
    if args.len() == 1 && args[0].is_empty() {
        args.clear();
    }
    args
}

/// A statement's text again, from its tokens (comments and extra spaces gone).
fn render(s: &[&Token]) -> String {
    let mut out = String::new();
    for (i, t) in s.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&t.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::state::*;
    use super::*;

    fn creates(sql: &str) -> u8 {
        assert!(may_matter(sql.as_bytes()), "prefilter let through: {sql}");
        analyze(sql).creates
    }

    #[test]
    fn session_state_is_found_in_every_spelling() {
        assert_eq!(creates("LISTEN jobs"), LISTEN);
        assert_eq!(creates("/* c */ LISTEN x"), LISTEN);
        assert_eq!(creates("-- hi\n  listen x"), LISTEN);
        assert_eq!(creates("SELECT 1; LISTEN x"), LISTEN);
        assert_eq!(creates("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), CURSOR);
        assert_eq!(
            creates("declare c no scroll cursor with hold for select 1"),
            CURSOR
        );
        assert_eq!(creates("SELECT pg_advisory_lock($1)"), LOCK);
        assert_eq!(
            creates("select pg_catalog.pg_try_advisory_lock(1, 2)"),
            LOCK
        );
        assert_eq!(creates("PREPARE p AS SELECT 1"), PREPARE);
        assert_eq!(creates("CREATE TEMP TABLE t (a int)"), TEMP);
        assert_eq!(creates("create temporary table t as select 1"), TEMP);
        // Probe findings: the statement EXPLAIN ANALYZE runs, and a search_path that makes
        // every new table temporary.
        assert_eq!(
            creates("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1"),
            TEMP
        );
        assert_eq!(
            creates("explain (analyze, buffers) create temp table t as select 1"),
            TEMP
        );
        assert_eq!(creates("EXPLAIN CREATE TEMP TABLE t AS SELECT 1"), 0);
        assert_eq!(creates("SET search_path = pg_temp, public"), OTHER);
        assert_eq!(creates("set local search_path to \"pg_temp\""), OTHER);
        assert_eq!(
            creates("SELECT set_config('search_path', 'pg_temp,public', true)"),
            OTHER
        );
        assert_eq!(creates("SET search_path = public, pg_temp"), 0);
        assert_eq!(creates("SET SCHEMA 'pg_temp'"), OTHER);
        assert_eq!(creates("SET search_path = 'pg_temp, public'"), 0);
        assert_eq!(creates("CREATE TABLE pg_temp.t (a int)"), TEMP);
        assert_eq!(creates("SELECT 1 AS a INTO TEMP t"), TEMP);
        assert_eq!(
            creates("SELECT set_config(current_user, $1, false)"),
            CONFIG
        );
        assert_eq!(creates("SELECT set_config('a.b', 'c', false), 1"), CONFIG);
        assert_eq!(
            creates("SELECT set_config('a.b', 'c', false) FROM t"),
            CONFIG
        );
        assert_eq!(creates("SET SESSION AUTHORIZATION bob"), OTHER);
    }

    #[test]
    fn literals_comments_and_transaction_scoped_state_are_not_state() {
        for sql in [
            "SELECT 'with hold'",
            "SELECT 'LISTEN x; pg_advisory_lock(1)'",
            "SELECT $$ listen x $$",
            "SELECT 1 /* DECLARE c CURSOR WITH HOLD */",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT pg_advisory_unlock(1)",
            "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
            "SELECT set_config('search_path', 's1', true)",
            "DECLARE c CURSOR FOR SELECT 'with hold'",
            "PREPARE TRANSACTION 'x'",
            "SELECT \"listen\" FROM t",
        ] {
            assert_eq!(analyze(sql).creates, 0, "{sql}");
        }
    }

    #[test]
    fn ordinary_statements_skip_the_slow_path() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            "INSERT INTO t VALUES (1);",
            "BEGIN",
            "SELECT 1 OFFSET 5",
        ] {
            assert!(!may_matter(sql.as_bytes()), "{sql}");
        }
    }

    proptest::proptest! {
        /// The sixteen-bytes-at-a-time scan finds exactly what a byte-by-byte search finds,
        /// wherever the word stands relative to the blocks and in any case.
        #[test]
        fn the_block_scan_finds_what_a_byte_scan_finds(
            pre in "[a-zA-Z_ ;(]{0,20}",
            word in proptest::sample::select(vec!["advisory", "ADVISORY", "Set_Config", "temp", "TeMp", "ad", "se", "te", "x"]),
            post in "[a-zA-Z_ ]{0,20}",
        ) {
            let sql = format!("{pre}{word}{post}");
            let (head, tail) = sql.split_once(';').unwrap_or((&sql, ""));
            let continues = tail.bytes().any(|c| !c.is_ascii_whitespace() && c != b';');
            let lower = head.to_ascii_lowercase();
            let named = ["advisory", "set_config", "temp"].iter().any(|w| lower.contains(w));
            proptest::prop_assert_eq!(mentions_or_continues(sql.as_bytes()), continues || named, "{}", sql);
        }
    }

    #[test]
    fn deallocate_and_discard_are_understood() {
        let fx = analyze("DEALLOCATE ALL");
        assert_eq!(fx.emulate, Some(Emulate::DeallocateAll));
        assert!(fx.forgets);
        assert_eq!(
            analyze("/* x */ deallocate prepare \"_pg3_1\"").emulate,
            Some(Emulate::Deallocate(b"_pg3_1".to_vec()))
        );
        assert_eq!(
            analyze("DEALLOCATE _PG3_1;").emulate,
            Some(Emulate::Deallocate(b"_pg3_1".to_vec()))
        );
        let multi = analyze("SELECT 1; DEALLOCATE ALL");
        assert_eq!(multi.emulate, None);
        assert!(multi.forgets);
        let d = analyze("DISCARD ALL");
        assert!(d.discard_all && d.forgets);
        assert_eq!(d.settings, vec![Change::DiscardAll]);
        assert!(!analyze("DISCARD PLANS").forgets);
    }

    #[test]
    fn do_blocks_make_settings_unknown_and_pin_what_they_name() {
        let set = "DO $$BEGIN PERFORM set_config('search_path','x',false); END$$";
        assert_eq!(creates(set), 0);
        assert!(analyze(set).opaque);
        assert!(analyze("SELECT 1; do 'BEGIN NULL; END'").opaque);
        let temp = "DO $x$ BEGIN EXECUTE 'CREATE   TEMP TABLE t(x int)'; END $x$";
        assert_eq!(creates(temp), state::TEMP);
        assert!(analyze(temp).verify);
        let lock = "do $$ begin perform pg_advisory_lock(42); end $$";
        assert_eq!(creates(lock), state::LOCK);
        let xact = "DO $$ BEGIN PERFORM pg_advisory_xact_lock(42); END $$";
        assert_eq!(creates(xact), 0);
        assert!(!analyze("SELECT 'DO'").opaque);
        // Dynamic SQL may leave anything the catalogs show: asked, never refused.
        let listen = "DO $$BEGIN EXECUTE 'LIS' || 'TEN ch'; END$$";
        assert_eq!(creates(listen), 0);
        assert_eq!(analyze(listen).suspect, state::VISIBLE);
        assert!(analyze(listen).verify);
        assert_eq!(analyze("SELECT 1").suspect, 0);
    }

    /// asyncpg's type lookup on a server with JIT: a literal `set_config` beside a
    /// `current_setting`, then `set_config` with the old value as a parameter. Both are
    /// tracked settings, neither is untracked state.
    #[test]
    fn asyncpg_jit_settings_are_tracked() {
        let first = analyze(
            "\n SELECT\n current_setting('jit') AS cur,\n set_config('jit', 'off', false) AS new\n",
        );
        assert_eq!(first.creates, 0);
        assert_eq!(first.settings.len(), 1);
        assert_eq!(first.settings[0].name(), Some("jit"));
        let restore = analyze("\n SELECT\n set_config('jit', $1, false)\n ");
        assert_eq!(restore.creates, 0);
        assert_eq!(restore.param_settings, vec![("jit".to_string(), 1)]);
        let mixed = analyze("SELECT set_config('a.b', $1, false), set_config('a.b', 'x', false)");
        assert_eq!((mixed.creates, mixed.settings.len()), (state::CONFIG, 0));
        let qualified = analyze("SELECT pg_catalog.set_config('Work_Mem', $2, false) w");
        assert_eq!(qualified.param_settings, vec![("work_mem".to_string(), 2)]);
        assert_eq!(qualified.creates, 0);
    }

    #[test]
    fn updating_pg_settings_makes_settings_unknown() {
        for sql in [
            "UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'",
            "update PG_CATALOG.Pg_Settings set setting = 'x' where name = 'work_mem'",
            "WITH u AS (UPDATE ONLY pg_settings SET setting = '1' WHERE name = 'x') SELECT 1",
        ] {
            assert!(may_matter(sql.as_bytes()), "{sql}");
            assert!(analyze(sql).opaque, "{sql}");
        }
        for sql in [
            "SELECT setting FROM pg_settings",
            "UPDATE user_settings SET v = 1",
            "UPDATE \"PG_SETTINGS\" SET v = 1",
        ] {
            assert!(!analyze(sql).opaque, "{sql}");
        }
    }

    #[test]
    fn settings_are_read_per_statement() {
        let fx = analyze("/* app */ SET search_path TO app; SELECT 1");
        assert_eq!(fx.statements, 2);
        assert!(
            matches!(&fx.settings[..], [Change::Set { name, .. }] if name == "search_path"),
            "{fx:?}"
        );
        assert_eq!(analyze("RESET ALL").settings, vec![Change::ResetAll]);
        let fx = analyze("SELECT set_config('Search_Path', 'it''s', false)");
        assert_eq!(fx.creates, 0);
        assert_eq!(
            fx.settings,
            vec![Change::Set {
                name: "search_path".into(),
                sql: "SELECT pg_catalog.set_config('Search_Path', 'it''s', false)".into()
            }]
        );
        assert!(analyze("SET LOCAL work_mem = '1MB'").settings.is_empty());
    }

    #[test]
    fn the_search_path_statements_are_named_under_follows_set_local_and_reset() {
        let change = |sql: &str| {
            analyze(sql)
                .search_path_change()
                .map(|p| p.map(str::to_string))
        };
        let local = "SET LOCAL search_path = s2";
        assert_eq!(change(local), Some(Some(local.to_string())));
        assert_eq!(
            change("BEGIN; SET LOCAL SEARCH_PATH TO s2, public"),
            Some(Some("SET LOCAL SEARCH_PATH TO s2 , public".to_string()))
        );
        assert_eq!(
            change("SET search_path = s3"),
            Some(Some("SET search_path = s3".into()))
        );
        assert_eq!(change("RESET search_path"), Some(None));
        assert_eq!(change("DISCARD ALL"), Some(None));
        assert_eq!(change("SET LOCAL work_mem = '1MB'"), None);
        assert_eq!(change("SET work_mem = '1MB'"), None);
    }
}
