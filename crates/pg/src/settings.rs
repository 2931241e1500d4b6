//! Session settings a client made with SET / RESET outside the pooler's sight of a single
//! server: in transaction mode they are tracked per client and replayed on whichever server
//! connection it gets next, so nothing leaks between clients.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// What a statement does to session settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `SET name ...`: the statement text is replayed as is.
    Set {
        /// Lower-cased setting name.
        name: String,
        /// The whole statement.
        sql: String,
    },
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`: every setting but the role and the session authorization (PostgreSQL
    /// leaves both in force).
    ResetAll,
    /// `DISCARD ALL`: every setting, the role too.
    DiscardAll,
}

/// What `RESET ALL` leaves in force.
const RESET_ALL_KEEPS: [&str; 2] = ["role", "session_authorization"];

/// Settings the server reports to the client when they change (ParameterStatus), and that the
/// client's driver reads: the text encoding, how dates, intervals and string literals are
/// written. A reset of one of them is followed, not undone: the server has told the client
/// its default (a regression hunt's finding: after `RESET ALL`, psycopg was told UTF8 and
/// wrote UTF-8 while the pooler had set the client's LATIN1 back, garbling text both ways).
/// The client then has the server's value, as with PgBouncer, and never one it was not told.
const REPORTED: [&str; 5] = [
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "standard_conforming_strings",
    "timezone",
];

/// Whether a reset of `name` goes back to a startup value the pooler puts back (see
/// [`REPORTED`]).
fn restored(name: &str) -> bool {
    !REPORTED.contains(&name)
}

/// Settings one client wants: those of its startup packet, which PostgreSQL makes a session's
/// defaults (`RESET` goes back to them), under those it made since with SET, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// From the startup packet: what RESET, RESET ALL and DISCARD ALL come back to.
    startup: Vec<(String, String)>,
    /// Made since, with SET or read back from a server.
    list: Vec<(String, String)>,
    fingerprint: u64,
    /// The startup search_path puts `pg_temp` first.
    temp_first: bool,
}

impl Settings {
    /// Settings from a startup packet's parameters (`options` `-c name=value` included).
    pub fn from_startup(params: &[(String, String)]) -> Settings {
        let mut s = Settings::default();
        for (k, v) in params {
            match k.as_str() {
                "options" => {
                    for (name, value) in parse_options(v) {
                        s.set(&name, &value);
                    }
                }
                "replication" => {}
                _ => s.set(k, v),
            }
        }
        s.refingerprint();
        s
    }

    /// A startup parameter. `set_config` reads its value as PostgreSQL reads one from a
    /// startup packet or a config file: `search_path=a,public` is two schemas, where
    /// `SET search_path = 'a,public'` would make it the one schema `"a,public"`.
    fn set(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        if name == "search_path" {
            self.temp_first = crate::effects::pg_temp_first(value);
        }
        let sql = set_config_sql(&name, value);
        self.startup.retain(|(n, _)| *n != name);
        self.startup.push((name, sql));
    }

    /// Whether the startup search_path puts `pg_temp` first: every table the client makes
    /// without a schema is temporary, session state no statement names.
    pub fn startup_temp_first(&self) -> bool {
        self.temp_first
    }

    /// Whether `c`, run on a server connection, leaves a setting at the server's default where
    /// this client's is its startup value: the connection no longer holds the client's
    /// settings (`RESET statement_timeout` after a startup `-c statement_timeout=5s`).
    pub fn resets_a_startup_value(&self, c: &Change) -> bool {
        match c {
            Change::Set { .. } => false,
            Change::Reset(name) => restored(name) && self.startup.iter().any(|(n, _)| n == name),
            Change::ResetAll => self
                .startup
                .iter()
                .any(|(n, _)| !RESET_ALL_KEEPS.contains(&n.as_str()) && restored(n)),
            Change::DiscardAll => self.startup.iter().any(|(n, _)| restored(n)),
        }
    }

    /// Drops `name` altogether, its startup value too (a parameter the server takes only at
    /// login, which cannot be replayed).
    pub fn forget(&mut self, name: &str) {
        self.startup.retain(|(n, _)| n != name);
        self.list.retain(|(n, _)| n != name);
        self.refingerprint();
    }

    /// Applies a change.
    pub fn apply(&mut self, c: &Change) {
        match c {
            Change::Set { name, sql } => {
                self.list.retain(|(n, _)| n != name);
                self.list.push((name.clone(), sql.clone()));
            }
            Change::Reset(name) => {
                self.list.retain(|(n, _)| n != name);
                self.startup.retain(|(n, _)| n != name || restored(n));
            }
            Change::ResetAll => {
                self.list
                    .retain(|(n, _)| RESET_ALL_KEEPS.contains(&n.as_str()));
                self.startup.retain(|(n, _)| restored(n));
            }
            Change::DiscardAll => {
                self.list.clear();
                self.startup.retain(|(n, _)| restored(n));
            }
        }
        self.refingerprint();
    }

    fn refingerprint(&mut self) {
        let mut h = DefaultHasher::new();
        let mut any = false;
        for e in self.effective() {
            e.hash(&mut h);
            any = true;
        }
        // 0 means "server defaults" and u64::MAX "unknown": keep clear of both.
        self.fingerprint = if any {
            h.finish().clamp(1, u64::MAX - 1)
        } else {
            0
        };
    }

    /// The settings in force, as (name, statement): startup values not made over since, then
    /// those made since, in order.
    fn effective(&self) -> impl Iterator<Item = &(String, String)> {
        let made = |name: &String| self.list.iter().any(|(n, _)| n == name);
        self.startup
            .iter()
            .filter(move |(n, _)| !made(n))
            .chain(self.list.iter())
    }

    /// 0 for no settings; equal settings give equal fingerprints.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Whether the client gave settings at startup (what a reset comes back to).
    pub fn has_startup(&self) -> bool {
        !self.startup.is_empty()
    }

    /// The SQL that makes every setting in force again on a connection that already holds
    /// this client's session (a reset on it went past a startup value), leaving what the
    /// session made otherwise alone; `None` when there is nothing to set.
    pub fn restore_sql(&self) -> Option<String> {
        let sets: Vec<&str> = self.effective().map(|(_, s)| s.as_str()).collect();
        (!sets.is_empty()).then(|| sets.join("; "))
    }

    /// The SQL that turns a server connection's session into this one. `RESET ALL` leaves the
    /// session authorization and the role alone (PostgreSQL excludes them), so another
    /// client's are undone on their own.
    pub fn replay_sql(&self) -> String {
        let mut sql = String::from("RESET ALL; RESET SESSION AUTHORIZATION; RESET ROLE");
        for (_, s) in self.effective() {
            sql.push_str("; ");
            sql.push_str(s);
        }
        sql
    }

    /// Records `value`, read back from a server, as this client's `name` (`None`: the server
    /// has it at its default, or does not know the name). A role of `none` is no role.
    /// Returns whether the server now differs from the client: at its default where the
    /// client's is a startup value, which a RESET on the server went past.
    pub fn adopt(&mut self, name: &str, value: Option<&str>) -> bool {
        let change = match value {
            Some(v) if !(name == "role" && v == "none") => Change::Set {
                name: name.to_string(),
                sql: set_config_sql(name, v),
            },
            _ => Change::Reset(name.to_string()),
        };
        let differs = self.resets_a_startup_value(&change);
        self.apply(&change);
        differs
    }

    /// The names of the settings in force (startup values included), in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.effective().map(|(n, _)| n.as_str())
    }

    /// Value in force for `name`, if any, as the statement text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.effective()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_str())
    }
}

impl Change {
    /// What `set_config('name', 'value', false)` does.
    pub fn set_config(name: &str, value: &str) -> Change {
        Change::Set {
            name: name.to_ascii_lowercase(),
            sql: set_config_sql(name, value),
        }
    }

    /// The setting it changes; `None` for all of them.
    pub fn name(&self) -> Option<&str> {
        match self {
            Change::Set { name, .. } | Change::Reset(name) => Some(name),
            Change::ResetAll | Change::DiscardAll => None,
        }
    }
}

/// One query whose row names every setting the session has made (comma-separated; setting
/// names have no commas), NULL when none.
pub const SESSION_SETTINGS_SQL: &str = "SELECT pg_catalog.string_agg(name, ',') \
    FROM pg_catalog.pg_settings WHERE source = 'session'";

/// One query whose row holds the current value of each of `names`, in order (NULL for a name
/// the server does not know).
pub fn read_back_sql(names: &[String]) -> String {
    let columns: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "pg_catalog.current_setting('{}', true)",
                n.replace('\'', "''")
            )
        })
        .collect();
    format!("SELECT {}", columns.join(", "))
}

/// `SELECT pg_catalog.set_config('name', 'value', false)`: the session's `name` becomes
/// `value`, parsed as a config-file value.
fn set_config_sql(name: &str, value: &str) -> String {
    format!(
        "SELECT pg_catalog.set_config('{}', '{}', false)",
        name.replace('\'', "''"),
        value.replace('\'', "''")
    )
}

/// `-c name=value` (or `--name=value`) pairs of a startup `options` string.
fn parse_options(opts: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = option_words(opts).into_iter();
    while let Some(w) = words.next() {
        let kv = if w == "-c" {
            words.next()
        } else {
            w.strip_prefix("--")
                .or_else(|| w.strip_prefix("-c"))
                .map(str::to_string)
        };
        if let Some((k, v)) = kv.as_deref().and_then(|kv| kv.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

/// The words of an `options` string as PostgreSQL splits them (`pg_split_opts`): on
/// whitespace, where a backslash makes the next character part of the word (`\ ` is a space
/// inside a value, `\\` a backslash).
fn option_words(opts: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = opts.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// What a query does to session settings; `None` for anything else (including SET LOCAL
/// and SET TRANSACTION, which end with the transaction).
pub fn classify(sql: &str) -> Option<Change> {
    let t = sql.trim().trim_end_matches(';').trim();
    let lower = t.to_ascii_lowercase();
    let mut w = lower.split_whitespace();
    match w.next()? {
        "set" => {
            let mut name = w.next()?;
            if name == "session" {
                name = w.next()?;
                if name == "characteristics" || name == "authorization" {
                    return None;
                }
            }
            if matches!(name, "local" | "transaction" | "constraints") {
                return None;
            }
            let rest: Vec<&str> = w.collect();
            let name = match name {
                "time" => "timezone".to_string(),
                "names" => "client_encoding".to_string(),
                "schema" => "search_path".to_string(),
                n => n
                    .split('=')
                    .next()
                    .unwrap_or(n)
                    .trim_matches('"')
                    .to_string(),
            };
            // `SET name TO DEFAULT` is `RESET name`: back to the startup value.
            let value = match rest.as_slice() {
                ["to" | "=", value @ ..] => value,
                value => value,
            };
            if value == ["default"] {
                return Some(Change::Reset(name));
            }
            Some(Change::Set {
                name,
                sql: t.to_string(),
            })
        }
        "reset" => match w.next()? {
            "all" => Some(Change::ResetAll),
            n => Some(Change::Reset(n.trim_matches('"').to_string())),
        },
        "discard" if w.next() == Some("all") => Some(Change::DiscardAll),
        _ => None,
    }
}

/// Whether `sql` holds more than one statement (a `;` before the end, outside quotes).
pub fn is_multi_statement(sql: &str) -> bool {
    let t = sql.trim().trim_end_matches(';');
    let mut quote: Option<char> = None;
    for c in t.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_session_settings() {
        assert_eq!(
            classify("SET search_path TO app, public;"),
            Some(Change::Set {
                name: "search_path".into(),
                sql: "SET search_path TO app, public".into()
            })
        );
        assert!(
            matches!(classify("set session statement_timeout = 5"), Some(Change::Set { name, .. }) if name == "statement_timeout")
        );
        assert!(
            matches!(classify("SET TIME ZONE 'UTC'"), Some(Change::Set { name, .. }) if name == "timezone")
        );
        assert_eq!(classify("SET LOCAL work_mem = '1MB'"), None);
        assert_eq!(
            classify("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            None
        );
        assert_eq!(
            classify("reset work_mem"),
            Some(Change::Reset("work_mem".into()))
        );
        assert_eq!(classify("RESET ALL"), Some(Change::ResetAll));
        for reset in ["SET work_mem TO DEFAULT", "set session work_mem = default"] {
            assert_eq!(classify(reset), Some(Change::Reset("work_mem".into())));
        }
        assert!(
            matches!(classify("SET SCHEMA 'app'"), Some(Change::Set { name, .. }) if name == "search_path")
        );
        assert_eq!(classify("DISCARD ALL"), Some(Change::DiscardAll));
        assert_eq!(classify("SELECT 1"), None);
    }

    #[test]
    fn fingerprints_follow_content() {
        let mut a = Settings::default();
        assert_eq!(a.fingerprint(), 0);
        a.apply(&classify("SET work_mem = '8MB'").unwrap_or(Change::ResetAll));
        let fa = a.fingerprint();
        assert_ne!(fa, 0);
        let b = Settings::from_startup(&[]);
        assert_ne!(b.fingerprint(), fa);
        a.apply(&Change::Reset("work_mem".into()));
        assert_eq!(a.fingerprint(), 0);
        assert_eq!(
            a.replay_sql(),
            "RESET ALL; RESET SESSION AUTHORIZATION; RESET ROLE"
        );
    }

    #[test]
    fn reset_all_leaves_the_role_as_postgresql_does() {
        let mut a = Settings::default();
        for sql in ["SET ROLE tenant_a", "SET work_mem = '8MB'", "RESET ALL"] {
            a.apply(&classify(sql).unwrap_or(Change::DiscardAll));
        }
        assert_eq!(
            a.replay_sql(),
            "RESET ALL; RESET SESSION AUTHORIZATION; RESET ROLE; SET ROLE tenant_a"
        );
        a.apply(&Change::DiscardAll);
        assert_eq!(a.fingerprint(), 0);
    }

    #[test]
    fn startup_parameters_become_settings() {
        let s = Settings::from_startup(&[
            ("application_name".into(), "it's".into()),
            (
                "options".into(),
                r"-c search_path=app,public --work-mem=4MB -c application_name=a\ b\\c".into(),
            ),
        ]);
        // set_config reads a list as PostgreSQL reads a startup value (`app, public`, not
        // the one schema "app,public"); a backslash keeps a space in a value.
        let set = |n: &str, v: &str| format!("SELECT pg_catalog.set_config('{n}', '{v}', false)");
        assert_eq!(
            s.replay_sql(),
            format!(
                "RESET ALL; RESET SESSION AUTHORIZATION; RESET ROLE; {}; {}; {}",
                set("search_path", "app,public"),
                set("work_mem", "4MB"),
                set("application_name", r"a b\c"),
            )
        );
    }

    #[test]
    fn resets_go_back_to_startup_values() {
        let mut s = Settings::from_startup(&[("statement_timeout".into(), "444".into())]);
        let startup = (s.replay_sql(), s.fingerprint());
        for sql in ["SET statement_timeout = 5", "SET work_mem = '8MB'"] {
            s.apply(&classify(sql).unwrap_or(Change::DiscardAll));
        }
        assert_eq!(
            s.get("statement_timeout"),
            Some("SET statement_timeout = 5")
        );
        for reset in [
            Change::Reset("statement_timeout".into()),
            Change::ResetAll,
            Change::DiscardAll,
        ] {
            assert!(s.resets_a_startup_value(&reset));
        }
        assert!(!s.resets_a_startup_value(&Change::Reset("work_mem".into())));
        s.apply(&Change::ResetAll);
        assert_eq!((s.replay_sql(), s.fingerprint()), startup);
        // A server read back at its default, where the client's is a startup value, differs.
        assert!(s.adopt("statement_timeout", None));
        assert!(!s.adopt("work_mem", None));
        assert_eq!((s.replay_sql(), s.fingerprint()), startup);
        s.forget("statement_timeout");
        assert_eq!(s.fingerprint(), 0);
    }

    #[test]
    fn a_reset_of_a_setting_the_server_reports_follows_the_server() {
        let params = [
            ("client_encoding".into(), "LATIN1".into()),
            ("statement_timeout".into(), "444".into()),
        ];
        for reset in [
            Change::Reset("client_encoding".into()),
            Change::ResetAll,
            Change::DiscardAll,
        ] {
            let mut s = Settings::from_startup(&params);
            s.apply(&reset);
            assert_eq!(s.get("client_encoding"), None, "{reset:?}");
            assert!(s.get("statement_timeout").is_some(), "{reset:?}");
            assert!(!s.replay_sql().contains("client_encoding"), "{reset:?}");
        }
        let s = Settings::from_startup(&params[..1]);
        for reset in [
            Change::Reset("client_encoding".into()),
            Change::ResetAll,
            Change::DiscardAll,
        ] {
            assert!(!s.resets_a_startup_value(&reset), "{reset:?}");
        }
    }

    #[test]
    fn multi_statements_are_spotted() {
        assert!(is_multi_statement("SET a = 1; SELECT 1"));
        assert!(!is_multi_statement("SET a = ';'"));
        assert!(!is_multi_statement("SELECT 1;"));
    }
}
