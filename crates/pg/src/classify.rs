//! Read or write? Statements are parsed with sqlparser (PostgreSQL dialect) and classified for
//! the read/write split; results are cached by statement text.
//!
//! A statement is a read only when it cannot change anything or take a lock: SELECT (and SHOW,
//! EXPLAIN without ANALYZE, VALUES) with no FOR UPDATE/SHARE, no SELECT INTO, no data-modifying
//! CTE, and calling only functions known to be read-only. Anything else — including SQL that
//! does not parse — is a write and goes to the primary. Row locks, data-modifying CTEs and
//! functions are looked for at every depth, table functions in FROM included. A comment
//! `/* scalegate:primary */` or `/* scalegate:replica */` decides instead (in a comment only: a
//! string that holds the words is data).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Mutex;

use sqlparser::ast::{
    Expr, ObjectName, Query, SetExpr, Statement, TableFactor, TransactionAccessMode,
    TransactionIsolationLevel, TransactionMode, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// Where a statement may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Reads only: a replica will do.
    Read,
    /// Writes, locks, or unknown: the primary.
    Write,
    /// `BEGIN READ ONLY` / `START TRANSACTION READ ONLY`: the whole transaction on a replica.
    ReadOnlyTransaction,
}

/// Functions that never write (lower case, without schema). Others send a query to the primary.
const READ_ONLY_FUNCTIONS: &[&str] = &[
    "abs",
    "array_agg",
    "array_length",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "ceil",
    "char_length",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "current_database",
    "current_date",
    "current_schema",
    "current_setting",
    "current_time",
    "current_timestamp",
    "current_user",
    "date_part",
    "date_trunc",
    "extract",
    "floor",
    "format",
    "generate_series",
    "greatest",
    "inet_server_addr",
    "inet_server_port",
    "json_agg",
    "json_build_object",
    "jsonb_agg",
    "jsonb_build_object",
    "least",
    "left",
    "length",
    "localtimestamp",
    "lower",
    "lpad",
    "ltrim",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nullif",
    "pg_backend_pid",
    "pg_is_in_recovery",
    "pg_last_wal_replay_lsn",
    "pg_sleep",
    "position",
    "power",
    "random",
    "regexp_replace",
    "replace",
    "right",
    "round",
    "row_number",
    "rank",
    "dense_rank",
    "rpad",
    "rtrim",
    "sqrt",
    "statement_timestamp",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "trim",
    "trunc",
    "upper",
    "version",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "unnest",
    "exists",
    // A client's session reset (asyncpg's on every pool release): a standby runs them, and a
    // client that holds a lock is pinned to its server, never routed.
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
];

/// Classifies `sql` (no cache).
pub fn classify(sql: &str) -> Class {
    match hint(sql) {
        Some(Hint::Primary) => return Class::Write,
        Some(Hint::Replica) => return Class::Read,
        None => {}
    }
    let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Class::Write;
    };
    let mut class = None;
    for s in &stmts {
        let c = statement(s);
        class = Some(match (class, c) {
            (None, c) => c,
            (Some(Class::Read), Class::Read) => Class::Read,
            _ => Class::Write,
        });
    }
    class.unwrap_or(Class::Write)
}

/// A routing comment.
enum Hint {
    Primary,
    Replica,
}

/// The routing comment in `sql`, if any: only a comment counts (a string literal that happens
/// to hold the words is data), and `scalegate:primary` wins over `scalegate:replica`.
fn hint(sql: &str) -> Option<Hint> {
    if !sql.contains("scalegate:") {
        return None;
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut found = None;
    for t in &tokens {
        let text = match t {
            Token::Whitespace(Whitespace::SingleLineComment { comment, .. }) => comment,
            Token::Whitespace(Whitespace::MultiLineComment(c)) => c,
            _ => continue,
        };
        if text.contains("scalegate:primary") {
            return Some(Hint::Primary);
        }
        if text.contains("scalegate:replica") {
            found = Some(Hint::Replica);
        }
    }
    found
}

/// Whether running `sql` a second time changes nothing: every statement reads (as [`classify`]
/// decides, routing comments ignored: `scalegate:replica` says where a statement may run, not
/// that it does not write) or starts a transaction. Text that does not parse is not.
pub fn replay_safe(sql: &str) -> bool {
    let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return false;
    };
    !stmts.is_empty()
        && stmts
            .iter()
            .all(|s| matches!(s, Statement::StartTransaction { .. }) || statement(s) == Class::Read)
}

fn statement(s: &Statement) -> Class {
    match s {
        Statement::Query(q) if set_reads(&q.body) && s.visit(&mut ReadsOnly).is_continue() => {
            Class::Read
        }
        Statement::ShowVariable { .. } => Class::Read,
        // The rest of a session reset (asyncpg's `CLOSE ALL; UNLISTEN *; RESET ALL`): a standby
        // runs them, and nothing they end can be left on a server the client is not pinned to.
        Statement::Close { .. } | Statement::UNLISTEN { .. } | Statement::Reset(_) => Class::Read,
        // A hot standby refuses SERIALIZABLE ("cannot use serializable mode in a hot
        // standby"): such a transaction stays on the primary, read only or not.
        Statement::StartTransaction { modes, .. }
            if modes.contains(&TransactionMode::AccessMode(
                TransactionAccessMode::ReadOnly,
            )) && !modes.contains(&TransactionMode::IsolationLevel(
                TransactionIsolationLevel::Serializable,
            )) =>
        {
            Class::ReadOnlyTransaction
        }
        _ => Class::Write,
    }
}

fn set_reads(s: &SetExpr) -> bool {
    match s {
        SetExpr::Select(sel) => sel.into.is_none(),
        SetExpr::Query(q) => set_reads(&q.body),
        SetExpr::SetOperation { left, right, .. } => set_reads(left) && set_reads(right),
        SetExpr::Values(_) => true,
        _ => false,
    }
}

/// Breaks at anything in a query, at any depth, that may write or lock: a row lock (`FOR
/// UPDATE`/`SHARE`, in a subquery too), a data-modifying CTE or subquery, a function not known
/// to be read-only (called in an expression or as a table in FROM).
struct ReadsOnly;

impl Visitor for ReadsOnly {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let reads = q.locks.is_empty()
            && q.with
                .as_ref()
                .is_none_or(|w| w.cte_tables.iter().all(|c| set_reads(&c.query.body)))
            && set_reads(&q.body);
        if reads {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => read_only_function(name),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(f) => read_only_function(&f.name),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Continues for a built-in known to be read-only, called bare or as `pg_catalog.name`; a
/// function of another schema (`audit.format`) may be the application's own, and may write.
fn read_only_function(name: &ObjectName) -> ControlFlow<()> {
    let name = name.to_string().to_ascii_lowercase();
    let (schema, name) = match name.rsplit_once('.') {
        Some((schema, name)) => (Some(schema.trim_matches('"')), name),
        None => (None, name.as_str()),
    };
    let name = name.trim_matches('"');
    if schema.is_none_or(|s| s == "pg_catalog") && READ_ONLY_FUNCTIONS.contains(&name) {
        ControlFlow::Continue(())
    } else {
        ControlFlow::Break(())
    }
}

/// Classification cached by statement text (bounded: cleared when full).
#[derive(Debug, Default)]
pub struct Classifier {
    cache: Mutex<HashMap<String, Class>>,
}

const CACHE_ENTRIES: usize = 10_000;

impl Classifier {
    /// The class of `sql`, from the cache when seen before.
    pub fn class(&self, sql: &str) -> Class {
        if let Ok(c) = self.cache.lock()
            && let Some(class) = c.get(sql)
        {
            return *class;
        }
        let class = classify(sql);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_ENTRIES {
                c.clear();
            }
            c.insert(sql.to_string(), class);
        }
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes() {
        for r in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "select count(*) from t",
            "SELECT 1 UNION SELECT 2",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SHOW search_path",
            "SELECT inet_server_port(), pg_is_in_recovery()",
            "/* scalegate:replica */ SELECT nextval('s')",
        ] {
            assert_eq!(classify(r), Class::Read, "{r}");
        }
        for w in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT nextval('s')",
            "SELECT my_function(1)",
            "SELECT * INTO newt FROM t",
            "CREATE TABLE x (a int)",
            "BEGIN",
            "this is not sql",
            "SELECT 1; UPDATE t SET a = 1",
            "/* scalegate:primary */ SELECT 1",
            "SELECT * FROM addlog('x')",
            "SELECT audit.count(1)",
            "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
            "SELECT * FROM t WHERE a IN (SELECT a FROM u FOR SHARE)",
            "INSERT INTO log(msg) VALUES ('see scalegate:replica docs')",
            "SELECT 'scalegate:replica', nextval('s')",
            "-- scalegate:replica\n/* scalegate:primary */ SELECT 1",
        ] {
            assert_eq!(classify(w), Class::Write, "{w}");
        }
        for r in [
            "SELECT * FROM generate_series(1, 3)",
            "SELECT pg_catalog.count(*) FROM t",
            "SELECT * FROM (SELECT a FROM t) s WHERE EXISTS (SELECT 1 FROM u)",
            "-- scalegate:replica\nSELECT nextval('s')",
        ] {
            assert_eq!(classify(r), Class::Read, "{r}");
        }
        assert_eq!(classify("BEGIN READ ONLY"), Class::ReadOnlyTransaction);
        // A probe's finding: SQLAlchemy's read-only serializable transactions went to the
        // replica, which refuses them (0A000).
        for sql in [
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
            "START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE",
        ] {
            assert_eq!(classify(sql), Class::Write, "{sql}");
        }
        assert_eq!(
            classify("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
            Class::ReadOnlyTransaction
        );
    }

    #[test]
    fn a_session_reset_runs_on_a_replica() {
        // asyncpg's reset query, sent on every pool release.
        let reset = "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;";
        assert_eq!(classify(reset), Class::Read);
        assert_eq!(classify("RESET statement_timeout"), Class::Read);
        assert_eq!(classify("SELECT pg_advisory_lock(1)"), Class::Write);
    }

    #[test]
    fn only_reads_and_transaction_starts_are_safe_to_run_twice() {
        for sql in [
            "BEGIN",
            "start transaction isolation level serializable",
            "SELECT 1",
            "BEGIN; SELECT * FROM t",
            "show search_path",
        ] {
            assert!(replay_safe(sql), "{sql}");
        }
        for sql in [
            "BEGIN; INSERT INTO dup(v) VALUES (1); COMMIT; SELECT 1",
            "START TRANSACTION; INSERT INTO t VALUES (1)",
            "/* scalegate:replica */ INSERT INTO t VALUES (1)",
            "SELECT 'scalegate:replica'; DELETE FROM t",
            "SELECT pg_terminate_backend(1)",
            "SELECT * FROM addlog('x')",
            "SET search_path = x",
            "COMMIT",
            "",
            "not sql at all",
        ] {
            assert!(!replay_safe(sql), "{sql}");
        }
    }

    #[test]
    fn the_cache_answers_the_same() {
        let c = Classifier::default();
        assert_eq!(c.class("SELECT 1"), Class::Read);
        assert_eq!(c.class("SELECT 1"), Class::Read);
        assert_eq!(c.class("DELETE FROM t"), Class::Write);
    }
}
