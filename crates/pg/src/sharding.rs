//! Which shard(s) a statement goes to. The sharding key is a column of listed tables (found in
//! `WHERE key = …` at the top level of the WHERE clause, or in an INSERT's column list), a bind
//! parameter position, or a comment hint (`/* scalegate:shard=2 */` names a shard,
//! `/* scalegate:key=42 */` a key). Literals and bind parameters both work. A SELECT without a key
//! is fanned out to every shard when its rows can simply be concatenated (ORDER BY and LIMIT are
//! re-applied while merging); a multi-row INSERT with literal keys is split per shard; anything
//! else without a key is rejected with the reason.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, Expr, OnConflictAction, OnInsert, Query, SetExpr,
    Statement, TableFactor, TableObject, TableWithJoins, UnaryOperator, UpdateTableFromKind, Value,
    visit_relations,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::shard::{ShardFn, virtual_shard};

mod fan_out;

/// One table's sharding column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardKey {
    /// Table name (lower case, no schema).
    pub table: String,
    /// Column name (lower case).
    pub column: String,
    /// The column is text (hashed as PostgreSQL hashes text); otherwise an integer.
    pub text: bool,
}

/// A sharded database's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardingSpec {
    /// Key → virtual shard.
    pub function: ShardFn,
    /// Number of virtual shards.
    pub virtual_shards: u32,
    /// Virtual shard → physical shard (index into the shard list).
    pub map: Vec<usize>,
    /// Sharding columns.
    pub keys: Vec<ShardKey>,
    /// A bind parameter (1-based) that carries the key in every statement, if so configured.
    pub param: Option<usize>,
}

/// Where a statement runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// One shard.
    One(usize),
    /// Any one shard gives the same answer: nothing sharded is read or written (a tableless
    /// SELECT such as `SELECT 1` or `now()`, SHOW).
    Any,
    /// Transaction control or a setting (BEGIN, SAVEPOINT, SET …): runs on the shard of the
    /// transaction it belongs to, or on any one shard outside a transaction.
    Control,
    /// Every shard, rows merged.
    FanOut(Merge),
    /// Per-shard statements (a multi-row INSERT split by key).
    Split(Vec<(usize, String)>),
    /// Not routable; the message says why.
    Reject(String),
}

/// How fanned-out rows are merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merge {
    /// Sort keys, most significant first.
    pub order_by: Vec<Order>,
    /// LIMIT (or FETCH FIRST) to re-apply after merging.
    pub limit: Option<u64>,
}

/// One merge sort key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// The result column.
    pub key: SortKey,
    /// Descending.
    pub desc: bool,
    /// NULLs before the values (PostgreSQL's default: only when descending).
    pub nulls_first: bool,
    /// `COLLATE "C"` was given: text may be merged in byte order.
    pub byte_order: bool,
}

/// A merge sort key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// A result column by name.
    Name(String),
    /// A result column by 1-based position.
    Position(usize),
}

/// A bind parameter's value as sent (text or binary format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// Raw bytes (None for NULL).
    pub value: Option<Vec<u8>>,
    /// Binary format.
    pub binary: bool,
}

impl Param {
    fn as_text(&self) -> Option<String> {
        // Text travels as UTF-8 in both formats.
        String::from_utf8(self.value.clone()?).ok()
    }

    fn as_i64(&self) -> Option<i64> {
        let v = self.value.as_ref()?;
        if self.binary {
            match v.len() {
                8 => Some(i64::from_be_bytes(v[..8].try_into().ok()?)),
                4 => Some(i64::from(i32::from_be_bytes(v[..4].try_into().ok()?))),
                2 => Some(i64::from(i16::from_be_bytes(v[..2].try_into().ok()?))),
                _ => None,
            }
        } else {
            std::str::from_utf8(v).ok()?.trim().parse().ok()
        }
    }
}

impl ShardingSpec {
    /// The physical shard of `key`.
    pub fn shard_of(&self, key: i64) -> usize {
        let v = virtual_shard(self.function, key, self.virtual_shards) as usize;
        self.map.get(v).copied().unwrap_or(0)
    }

    /// The physical shard of a text key (hash sharding only).
    pub fn shard_of_text(&self, key: &str) -> usize {
        let v = (crate::shard::partition_hash_text(key) % u64::from(self.virtual_shards.max(1)))
            as usize;
        self.map.get(v).copied().unwrap_or(0)
    }

    /// The shard for the value `e` of sharding column `key`.
    fn shard_for(&self, key: &ShardKey, e: &Expr, params: &[Param]) -> Option<usize> {
        if key.text {
            let text = match e {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) => Some(s.clone()),
                    Value::Number(n, _) => Some(n.clone()),
                    Value::Placeholder(p) => {
                        let i: usize = p.strip_prefix('$')?.parse().ok()?;
                        params.get(i.checked_sub(1)?)?.as_text()
                    }
                    _ => None,
                },
                Expr::Nested(e) | Expr::Cast { expr: e, .. } => {
                    return self.shard_for(key, e, params);
                }
                _ => None,
            }?;
            Some(self.shard_of_text(&text))
        } else {
            self.key_value(e, params).map(|k| self.shard_of(k))
        }
    }

    fn shards(&self) -> usize {
        self.map.iter().max().map_or(1, |m| m + 1)
    }

    /// Plans `sql` with bind parameters `params` (empty for simple queries).
    pub fn plan(&self, sql: &str, params: &[Param]) -> Plan {
        if let Some(n) = hint(sql, "scalegate:shard=") {
            return match usize::try_from(n) {
                Ok(s) if s < self.shards() => Plan::One(s),
                _ => Plan::Reject(format!("shard hint {n} is out of range")),
            };
        }
        if let Some(k) = hint(sql, "scalegate:key=") {
            return Plan::One(self.shard_of(k));
        }
        if let Some(p) = self.param
            && let Some(k) = params.get(p.wrapping_sub(1)).and_then(Param::as_i64)
        {
            return Plan::One(self.shard_of(k));
        }
        let stmts = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(s) => s,
            Err(e) => {
                return Plan::Reject(format!("cannot route a statement that does not parse: {e}"));
            }
        };
        let [stmt] = stmts.as_slice() else {
            return Plan::Reject(
                "send one statement at a time to a sharded database (each may go to another shard)"
                    .into(),
            );
        };
        if let Some(p) = unsharded(stmt) {
            return p;
        }
        self.plan_statement(stmt, params)
    }

    fn key_value(&self, e: &Expr, params: &[Param]) -> Option<i64> {
        match e {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n.parse().ok(),
                Value::SingleQuotedString(s) => s.parse().ok(),
                Value::Placeholder(p) => {
                    let i: usize = p.strip_prefix('$')?.parse().ok()?;
                    params.get(i.checked_sub(1)?)?.as_i64()
                }
                _ => None,
            },
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => self.key_value(expr, params).map(|v| -v),
            Expr::Nested(e) => self.key_value(e, params),
            Expr::Cast { expr, .. } => self.key_value(expr, params),
            _ => None,
        }
    }

    /// The shard of `WHERE key = value [AND …]` for a statement over `tables`.
    fn key_in_where(
        &self,
        sel: Option<&Expr>,
        tables: &[String],
        params: &[Param],
    ) -> Option<usize> {
        let keys: Vec<&ShardKey> = self
            .keys
            .iter()
            .filter(|k| tables.contains(&k.table))
            .collect();
        if keys.is_empty() {
            return None;
        }
        let mut found = None;
        conjuncts(sel?, &mut |l, r| {
            for (col, val) in [(l, r), (r, l)] {
                if let Some(name) = column_name(col)
                    && let Some(key) = keys.iter().find(|k| k.column == name)
                    && let Some(shard) = self.shard_for(key, val, params)
                {
                    found = Some(shard);
                }
            }
        });
        found
    }

    fn plan_statement(&self, stmt: &Statement, params: &[Param]) -> Plan {
        let plan = self.plan_write(stmt, params);
        if let (Plan::One(_), Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)) =
            (&plan, stmt)
            && let Some(why) = self.statement_subquery_refusal(stmt)
        {
            return Plan::Reject(why);
        }
        plan
    }

    fn plan_write(&self, stmt: &Statement, params: &[Param]) -> Plan {
        match stmt {
            Statement::Query(q) => self.plan_query(q, params),
            Statement::Insert(ins) => {
                let TableObject::TableName(name) = &ins.table else {
                    return Plan::Reject("INSERT into a table function cannot be routed".into());
                };
                let table = last_name(&name.to_string());
                if let Some(OnInsert::OnConflict(c)) = &ins.on
                    && let OnConflictAction::DoUpdate(u) = &c.action
                    && let Some(why) =
                        self.key_assigned(&u.assignments, std::slice::from_ref(&table))
                {
                    return Plan::Reject(why);
                }
                let Some(key) = self.keys.iter().find(|k| k.table == table) else {
                    return Plan::Reject(format!(
                        "table {table} has no sharding key configured; add it to the database's sharding keys or use /* scalegate:shard=N */"
                    ));
                };
                let Some(pos) = ins
                    .columns
                    .iter()
                    .position(|c| last_name(&c.to_string()) == key.column)
                else {
                    return Plan::Reject(format!(
                        "INSERT into {table} must list the sharding column {}",
                        key.column
                    ));
                };
                let Some(SetExpr::Values(values)) = ins.source.as_ref().map(|q| q.body.as_ref())
                else {
                    return Plan::Reject("only INSERT … VALUES can be routed by key".into());
                };
                let mut shards = Vec::new();
                for row in &values.rows {
                    match row.content.get(pos).and_then(|e| self.shard_for(key, e, params)) {
                        Some(shard) => shards.push(shard),
                        None => {
                            return Plan::Reject(format!(
                                "every row must give {} as a literal or parameter",
                                key.column
                            ));
                        }
                    }
                }
                let first = shards.first().copied().unwrap_or(0);
                if shards.iter().all(|&s| s == first) {
                    return Plan::One(first);
                }
                if !params.is_empty() || ins.returning.is_some() {
                    return Plan::Reject(
                        "a multi-row INSERT spanning shards is split only with literal values and no RETURNING".into(),
                    );
                }
                let mut per: Vec<(usize, String)> = Vec::new();
                let mut targets: Vec<usize> = shards.clone();
                targets.sort_unstable();
                targets.dedup();
                for t in targets {
                    let mut part = ins.clone();
                    if let Some(src) = part.source.as_mut()
                        && let SetExpr::Values(v) = src.body.as_mut()
                    {
                        let rows = std::mem::take(&mut v.rows);
                        v.rows = rows
                            .into_iter()
                            .zip(&shards)
                            .filter(|(_, s)| **s == t)
                            .map(|(r, _)| r)
                            .collect();
                    }
                    per.push((t, Statement::Insert(part).to_string()));
                }
                Plan::Split(per)
            }
            Statement::Update(u) => {
                let tables = tables_of(std::slice::from_ref(&u.table));
                if let Some(why) = self.key_assigned(&u.assignments, &tables) {
                    return Plan::Reject(why);
                }
                if let Some(UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from)) =
                    &u.from
                    && let Some(why) = self.other_sharded(from, "UPDATE … FROM")
                {
                    return Plan::Reject(why);
                }
                match self.key_in_where(u.selection.as_ref(), &tables, params) {
                    Some(shard) => Plan::One(shard),
                    None => Plan::Reject(no_key("UPDATE", &self.keys)),
                }
            }
            Statement::Delete(d) => {
                let from = match &d.from {
                    sqlparser::ast::FromTable::WithFromKeyword(t)
                    | sqlparser::ast::FromTable::WithoutKeyword(t) => t,
                };
                let tables = tables_of(from);
                if let Some(using) = &d.using
                    && let Some(why) = self.other_sharded(using, "DELETE … USING")
                {
                    return Plan::Reject(why);
                }
                match self.key_in_where(d.selection.as_ref(), &tables, params) {
                    Some(shard) => Plan::One(shard),
                    None => Plan::Reject(no_key("DELETE", &self.keys)),
                }
            }
            _ => Plan::Reject(
                "this statement has no sharding key; run it on each shard with /* scalegate:shard=N */".into(),
            ),
        }
    }

    fn plan_query(&self, q: &Query, params: &[Param]) -> Plan {
        let SetExpr::Select(sel) = q.body.as_ref() else {
            return Plan::Reject("set operations cannot be routed across shards".into());
        };
        let tables = tables_of(&sel.from);
        if let Some(shard) = self.key_in_where(sel.selection.as_ref(), &tables, params) {
            // One shard, but a subquery over other rows, or another sharded table not joined
            // on the key, would see only that shard's rows.
            return match self.subquery_refusal(q).or_else(|| self.join_refusal(sel)) {
                Some(why) => Plan::Reject(why),
                None => Plan::One(shard),
            };
        }
        self.fan_out_plan(q, sel, params)
    }
}

impl ShardingSpec {
    /// Why assigning these columns of `tables` cannot be routed: a row whose sharding key
    /// changes would stay on the shard of its old key (unreachable by the new one).
    fn key_assigned(&self, assignments: &[Assignment], tables: &[String]) -> Option<String> {
        let keyed = |name: &sqlparser::ast::ObjectName| {
            let column = last_name(&name.to_string());
            self.keys
                .iter()
                .find(|k| tables.contains(&k.table) && k.column == column)
        };
        assignments.iter().find_map(|a| {
            let key = match &a.target {
                AssignmentTarget::ColumnName(n) => keyed(n),
                AssignmentTarget::Tuple(ns) => ns.iter().find_map(keyed),
            }?;
            Some(format!(
                "an UPDATE cannot change the sharding column {}.{}: the row would stay on the shard of its old key; DELETE it and INSERT it with the new key",
                key.table, key.column
            ))
        })
    }

    /// Why a statement whose extra tables (`UPDATE … FROM`, `DELETE … USING`) include a
    /// sharded one cannot be routed by its own key: that table's rows on other shards would
    /// be missed.
    fn other_sharded(&self, from: &[TableWithJoins], what: &str) -> Option<String> {
        let sharded = tables_of(from)
            .into_iter()
            .find(|t| self.keys.iter().any(|k| &k.table == t))?;
        Some(format!(
            "{what} the sharded table {sharded} is not routed: its rows on other shards would be missed; select the rows by key first, or use /* scalegate:shard=N */"
        ))
    }
}

/// `Any` or `Control` for a statement that touches no table, else `None`.
fn unsharded(stmt: &Statement) -> Option<Plan> {
    match stmt {
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Set(_)
        | Statement::Reset(_)
        | Statement::Discard { .. } => Some(Plan::Control),
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => Some(Plan::Any),
        Statement::Query(q)
            if visit_relations(q.as_ref(), |_| ControlFlow::Break(())).is_continue() =>
        {
            Some(Plan::Any)
        }
        _ => None,
    }
}

fn no_key(what: &str, keys: &[ShardKey]) -> String {
    let list: Vec<String> = keys
        .iter()
        .map(|k| format!("{}.{}", k.table, k.column))
        .collect();
    format!(
        "{what} without the sharding key would touch every shard; add WHERE {} = … (sharding keys: {})",
        keys.first().map_or("key", |k| k.column.as_str()),
        list.join(", ")
    )
}

fn hint(sql: &str, prefix: &str) -> Option<i64> {
    let at = sql.find(prefix)? + prefix.len();
    let digits: String = sql[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

fn last_name(s: &str) -> String {
    s.rsplit('.')
        .next()
        .unwrap_or(s)
        .trim_matches('"')
        .to_ascii_lowercase()
}

fn column_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.to_ascii_lowercase()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.to_ascii_lowercase()),
        Expr::Nested(e) => column_name(e),
        _ => None,
    }
}

fn tables_of(from: &[TableWithJoins]) -> Vec<String> {
    let mut out = Vec::new();
    for t in from {
        for f in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)) {
            if let TableFactor::Table { name, .. } = f {
                out.push(last_name(&name.to_string()));
            }
        }
    }
    out
}

/// Calls `f(left, right)` for every `left = right` joined by AND at the top of `e`.
fn conjuncts(e: &Expr, f: &mut dyn FnMut(&Expr, &Expr)) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, f);
            conjuncts(right, f);
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => f(left, right),
        Expr::Nested(inner) => conjuncts(inner, f),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::default_map;

    fn spec(f: ShardFn) -> ShardingSpec {
        ShardingSpec {
            function: f,
            virtual_shards: 4,
            map: default_map(4, 2),
            keys: vec![
                ShardKey {
                    table: "users".into(),
                    column: "user_id".into(),
                    text: false,
                },
                ShardKey {
                    table: "orders".into(),
                    column: "user_id".into(),
                    text: false,
                },
                ShardKey {
                    table: "tenants".into(),
                    column: "slug".into(),
                    text: true,
                },
            ],
            param: None,
        }
    }

    fn text(v: &str) -> Param {
        Param {
            value: Some(v.as_bytes().to_vec()),
            binary: false,
        }
    }

    #[test]
    fn keys_in_where_and_insert() {
        let s = spec(ShardFn::Modulus);
        assert_eq!(
            s.plan("SELECT * FROM users WHERE user_id = 5", &[]),
            Plan::One(1)
        );
        assert_eq!(
            s.plan(
                "SELECT * FROM users u WHERE u.user_id = 6 AND name = 'x'",
                &[]
            ),
            Plan::One(0)
        );
        assert_eq!(
            s.plan("SELECT * FROM users WHERE user_id = $1", &[text("7")]),
            Plan::One(1)
        );
        let bin = Param {
            value: Some(8i64.to_be_bytes().to_vec()),
            binary: true,
        };
        assert_eq!(
            s.plan("UPDATE users SET n = 1 WHERE user_id = $1", &[bin]),
            Plan::One(0)
        );
        assert_eq!(
            s.plan("DELETE FROM orders WHERE 3 = user_id", &[]),
            Plan::One(1)
        );
        assert_eq!(
            s.plan("INSERT INTO users (user_id, name) VALUES (4, 'a')", &[]),
            Plan::One(0)
        );
        assert_eq!(
            s.plan("/* scalegate:shard=1 */ CREATE TABLE x (a int)", &[]),
            Plan::One(1)
        );
        assert_eq!(s.plan("/* scalegate:key=9 */ SELECT 1", &[]), Plan::One(1));
    }

    /// Found from outside: each of these ran on one shard and lost rows or left a row where
    /// its key no longer finds it, with no error.
    #[test]
    fn statements_that_would_lose_rows_on_other_shards_are_refused() {
        let s = spec(ShardFn::Modulus);
        for sql in [
            "UPDATE users SET user_id = 100 WHERE user_id = 1",
            "UPDATE users SET (name, user_id) = ('x', 100) WHERE user_id = 1",
            "INSERT INTO users (user_id, name) VALUES (1, 'a') \
             ON CONFLICT (user_id) DO UPDATE SET user_id = 100",
            "SELECT o.order_id FROM orders o JOIN users u ON true WHERE u.user_id = 3",
            "UPDATE orders SET amount = 99 FROM users WHERE users.user_id = 2 AND orders.user_id = 2",
            "DELETE FROM orders USING users WHERE users.user_id = 2 AND orders.user_id = 2",
            // One row per shard: aggregates not on the list, a view, other sources.
            "SELECT bit_xor(user_id) FROM users",
            "SELECT regr_count(user_id, user_id) FROM users",
            "SELECT my_agg(user_id ORDER BY user_id) FROM users",
            "SELECT my_agg(user_id) FILTER (WHERE user_id > 1) FROM users",
            "SELECT * FROM user_count",
            "SELECT * FROM users u JOIN countries c ON c.code = u.name",
            "SELECT * FROM generate_series(1, 3)",
        ] {
            assert!(matches!(s.plan(sql, &[]), Plan::Reject(_)), "{sql}");
        }
        // Still routed: the key is not assigned, and a join on the keys.
        for sql in [
            "UPDATE users SET name = 'x' WHERE user_id = 1",
            "INSERT INTO users (user_id, name) VALUES (1, 'a') \
             ON CONFLICT (user_id) DO UPDATE SET name = 'b'",
            "SELECT o.order_id FROM orders o JOIN users u ON o.user_id = u.user_id \
             WHERE u.user_id = 3",
        ] {
            assert!(matches!(s.plan(sql, &[]), Plan::One(_)), "{sql}");
        }
    }

    #[test]
    fn text_keys_hash_like_postgres_text() {
        let s = spec(ShardFn::Hash);
        let want = s.shard_of_text("acme");
        assert_eq!(
            s.plan("SELECT * FROM tenants WHERE slug = 'acme'", &[]),
            Plan::One(want)
        );
        assert_eq!(
            s.plan("SELECT * FROM tenants WHERE slug = $1", &[text("acme")]),
            Plan::One(want)
        );
        assert_eq!(
            s.plan("INSERT INTO tenants (slug, name) VALUES ('acme', 'A')", &[]),
            Plan::One(want)
        );
    }

    #[test]
    fn multi_row_inserts_are_split() {
        let s = spec(ShardFn::Modulus);
        let Plan::Split(parts) = s.plan(
            "INSERT INTO users (user_id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
            &[],
        ) else {
            panic!("not split")
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0],
            (
                0,
                "INSERT INTO users (user_id, name) VALUES (2, 'b')".to_string()
            )
        );
        assert_eq!(
            parts[1],
            (
                1,
                "INSERT INTO users (user_id, name) VALUES (1, 'a'), (3, 'c')".to_string()
            )
        );
    }

    #[test]
    fn fan_out_or_reject() {
        let s = spec(ShardFn::Hash);
        assert_eq!(
            s.plan(
                "SELECT user_id, name FROM users ORDER BY user_id DESC LIMIT 3",
                &[]
            ),
            Plan::FanOut(Merge {
                order_by: vec![Order {
                    key: SortKey::Name("user_id".into()),
                    desc: true,
                    nulls_first: true,
                    byte_order: false,
                }],
                limit: Some(3)
            })
        );
        for bad in [
            "SELECT count(*) FROM users",
            "SELECT name FROM users GROUP BY name",
            "SELECT * FROM users OFFSET 2",
            "UPDATE users SET name = 'x'",
            "DELETE FROM users",
            "CREATE TABLE x (a int)",
            "SELECT 1; SELECT 2",
        ] {
            assert!(matches!(s.plan(bad, &[]), Plan::Reject(_)), "{bad}");
        }
    }

    fn rejected_naming(s: &ShardingSpec, sql: &str, construct: &str) {
        match s.plan(sql, &[]) {
            Plan::Reject(why) => assert!(why.contains(construct), "{sql}: {why}"),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn fan_out_is_right_or_refused_naming_the_construct() {
        let s = spec(ShardFn::Hash);
        let merge = |sql: &str| match s.plan(sql, &[]) {
            Plan::FanOut(m) => m,
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(
            merge("SELECT user_id FROM users ORDER BY user_id FETCH FIRST 3 ROWS ONLY").limit,
            Some(3)
        );
        assert_eq!(
            merge("SELECT user_id FROM users FETCH FIRST ROW ONLY").limit,
            Some(1)
        );
        let m =
            merge("SELECT user_id, score FROM users ORDER BY score NULLS FIRST, 1 DESC NULLS LAST");
        assert!(m.order_by[0].nulls_first && !m.order_by[0].desc);
        assert!(!m.order_by[1].nulls_first && m.order_by[1].desc);
        assert!(merge("SELECT name FROM users ORDER BY name COLLATE \"C\"").order_by[0].byte_order);
        assert!(merge("SELECT * FROM users OFFSET 0").limit.is_none());
        // Row-by-row subqueries and ones tied by the key are fine.
        merge("SELECT * FROM (SELECT user_id FROM users WHERE score > 1) t");
        merge(
            "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.user_id)",
        );
        merge("SELECT * FROM users WHERE user_id IN (SELECT user_id FROM orders WHERE total > 5)");
        merge("SELECT * FROM users u JOIN orders o ON o.user_id = u.user_id");
        // Correlated by the key: every row the subquery sees is on the outer row's shard.
        merge(
            "SELECT * FROM users u WHERE score < (SELECT count(*) FROM orders o WHERE o.user_id = u.user_id)",
        );
        assert!(matches!(
            s.plan("UPDATE users u SET score = (SELECT max(total) FROM orders o WHERE o.user_id = u.user_id) WHERE user_id = 1", &[]),
            Plan::One(_)
        ));
        for (sql, construct) in [
            (
                "SELECT * FROM users WHERE score = (SELECT max(score) FROM users)",
                "max",
            ),
            (
                "SELECT * FROM users WHERE user_id IN (SELECT user_id FROM users ORDER BY score LIMIT 3)",
                "LIMIT",
            ),
            (
                "SELECT * FROM (SELECT DISTINCT name FROM users) t",
                "DISTINCT",
            ),
            (
                "SELECT * FROM users WHERE name IN (SELECT name FROM users WHERE user_id = 5)",
                "not tied",
            ),
            (
                "SELECT user_id, row_number() OVER (ORDER BY user_id) FROM users",
                "window",
            ),
            ("SELECT * FROM users OFFSET 2", "OFFSET"),
            (
                "SELECT * FROM users ORDER BY user_id FETCH FIRST 2 ROWS WITH TIES",
                "WITH TIES",
            ),
            (
                "SELECT user_id FROM users UNION SELECT user_id FROM orders",
                "set operation",
            ),
            // A probe's finding (session 24): refused, but as "a set operation".
            (
                "WITH x AS (DELETE FROM users WHERE score > 1 RETURNING *) SELECT count(*) FROM x",
                "data-modifying",
            ),
            (
                "SELECT * FROM users u JOIN orders o ON o.total = u.score",
                "join",
            ),
            (
                "SELECT name FROM users ORDER BY name COLLATE \"en_US\"",
                "COLLATE",
            ),
            ("SELECT max(score) FROM users", "max"),
            // Routed to one shard, but the subquery would see only that shard.
            (
                "UPDATE users SET score = (SELECT max(score) FROM users) WHERE user_id = 1",
                "max",
            ),
            (
                "DELETE FROM users WHERE user_id = 1 AND name IN (SELECT name FROM users)",
                "not tied",
            ),
            (
                "SELECT * FROM users WHERE user_id = 1 AND score = (SELECT max(score) FROM users)",
                "max",
            ),
        ] {
            rejected_naming(&s, sql, construct);
        }
    }

    #[test]
    fn tableless_statements_need_no_shard() {
        let s = spec(ShardFn::Hash);
        for sql in [
            "SELECT 1",
            "SELECT now()",
            "SELECT version()",
            "SHOW search_path",
        ] {
            assert_eq!(s.plan(sql, &[]), Plan::Any, "{sql}");
        }
        for sql in [
            "BEGIN",
            "SAVEPOINT a",
            "SET search_path = x",
            "ROLLBACK TO SAVEPOINT a",
        ] {
            assert_eq!(s.plan(sql, &[]), Plan::Control, "{sql}");
        }
        assert!(matches!(
            s.plan("SELECT (SELECT count(*) FROM users)", &[]),
            Plan::Reject(_)
        ));
    }
}
