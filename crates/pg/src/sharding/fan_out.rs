//! Whether a SELECT can run on every shard with the rows concatenated, sorted and cut into
//! what one database holding all rows would answer — decided on the parsed statement. What
//! could come out different is refused, naming the construct: aggregates, GROUP BY, HAVING,
//! DISTINCT, window functions, OFFSET, FETCH … WITH TIES or PERCENT, set operations, WITH,
//! locking, INTO; a subquery over a sharded table unless it works row by row (a derived table
//! in FROM without those constructs) or is tied to the outer row by the sharding key
//! (`EXISTS (… WHERE o.user_id = u.user_id)`, `user_id IN (SELECT user_id …)`); a join of
//! sharded tables that is not on their keys. LIMIT and FETCH FIRST are re-applied after the
//! merge; ORDER BY (result columns, ASC/DESC, NULLS FIRST/LAST) drives it.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Function, FunctionArguments, GroupByExpr, InTarget, Join, JoinConstraint, JoinOperator,
    LimitClause, OrderByKind, OrderBySort, Query, Select, SelectItem, SetExpr, Statement,
    TableFactor, Value, Visit, Visitor, visit_relations,
};

use super::{Merge, Order, Param, Plan, ShardingSpec, SortKey, column_name, conjuncts, last_name};

/// Functions that aggregate over rows.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "xmlagg",
    "bit_xor",
    "any_value",
    "range_agg",
    "range_intersect_agg",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
];

impl ShardingSpec {
    /// The merge for fanning out `q` (whose body is `sel`), or why it cannot be.
    pub(super) fn fan_out_plan(&self, q: &Query, sel: &Select, params: &[Param]) -> Plan {
        if let Some(why) = self.subquery_refusal(q) {
            return Plan::Reject(why);
        }
        if let Some(other) = self.unsharded_source(sel) {
            return Plan::Reject(format!(
                "{other} is not a sharded table (no sharding key is configured for it): a SELECT over it without a key would run on every shard and return every shard's rows (a view's result once per shard); add it to the sharding keys, or query one shard with /* scalegate:shard=N */"
            ));
        }
        if let Some(c) = own_construct(q) {
            return Plan::Reject(format!(
                "a SELECT without the sharding key runs on every shard, so {c} would be computed per shard: add the key to WHERE, or query each shard with /* scalegate:shard=N */"
            ));
        }
        if !q.locks.is_empty() || q.with.is_some() || sel.into.is_some() {
            return Plan::Reject("a fanned-out SELECT cannot lock rows, use WITH or INTO".into());
        }
        if let Some(why) = self.join_refusal(sel) {
            return Plan::Reject(why);
        }
        let mut merge = Merge::default();
        match &q.limit_clause {
            None => {}
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                if offset
                    .as_ref()
                    .is_some_and(|o| self.key_value(&o.value, params) != Some(0))
                {
                    return Plan::Reject("OFFSET cannot be merged across shards: page by a key instead (WHERE user_id > last ORDER BY user_id LIMIT n)".into());
                }
                if !limit_by.is_empty() {
                    return Plan::Reject("LIMIT BY cannot be merged across shards".into());
                }
                if let Some(e) = limit {
                    match self.key_value(e, params) {
                        Some(n) if n >= 0 => merge.limit = Some(n as u64),
                        _ => return Plan::Reject("LIMIT must be a number to merge".into()),
                    }
                }
            }
            Some(LimitClause::OffsetCommaLimit { .. }) => {
                return Plan::Reject("OFFSET cannot be merged across shards".into());
            }
        }
        if let Some(f) = &q.fetch {
            if f.with_ties || f.percent {
                return Plan::Reject(
                    "FETCH FIRST … WITH TIES or PERCENT cannot be merged across shards".into(),
                );
            }
            let n = match &f.quantity {
                None => 1,
                Some(e) => match self.key_value(e, params) {
                    Some(n) if n >= 0 => n as u64,
                    _ => return Plan::Reject("FETCH FIRST must be a number to merge".into()),
                },
            };
            merge.limit = Some(merge.limit.map_or(n, |l| l.min(n)));
        }
        if let Some(ob) = &q.order_by {
            let OrderByKind::Expressions(exprs) = &ob.kind else {
                return Plan::Reject("ORDER BY ALL cannot be merged".into());
            };
            for e in exprs {
                match sort_order(e, sel) {
                    Ok(o) => merge.order_by.push(o),
                    Err(why) => return Plan::Reject(why),
                }
            }
        }
        Plan::FanOut(merge)
    }

    /// Why a subquery of `q` would answer differently per shard, if it would.
    pub(super) fn subquery_refusal(&self, q: &Query) -> Option<String> {
        let mut scan = Scan::new(self, Vec::new());
        let _ = q.visit(&mut scan);
        scan.refusal
    }

    /// The same for an INSERT, UPDATE or DELETE routed by its key: every query in it is a
    /// subquery and must not need other shards' rows.
    pub(super) fn statement_subquery_refusal(&self, stmt: &Statement) -> Option<String> {
        let mut scan = Scan::new(self, vec![false]);
        let _ = stmt.visit(&mut scan);
        scan.refusal
    }

    /// Why the sharded tables of `sel`'s FROM are not joined on their keys, if they are not.
    pub(super) fn join_refusal(&self, sel: &Select) -> Option<String> {
        let mut sources = 0;
        let mut links = 0;
        let mut on: Vec<&Expr> = sel.selection.iter().collect();
        for t in &sel.from {
            let factors = std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation));
            sources += factors.filter(|f| self.reads_sharded(f)).count();
            for j in &t.joins {
                match join_constraint(j) {
                    Some(JoinConstraint::On(e)) => on.push(e),
                    Some(JoinConstraint::Using(cols))
                        if cols
                            .iter()
                            .any(|c| self.is_key_column(&last_name(&c.to_string()))) =>
                    {
                        links += 1;
                    }
                    _ => {}
                }
            }
        }
        for e in on {
            conjuncts(e, &mut |l, r| {
                if self.key_link(l, r) {
                    links += 1;
                }
            });
        }
        (sources > links + 1).then(|| {
            "a join of sharded tables is fanned out only when they are joined on their sharding keys (o.user_id = u.user_id); otherwise rows on different shards would never meet".into()
        })
    }

    /// The first source in `sel`'s FROM that is not a configured sharded table (a view, a
    /// table without a key, a table function), if any.
    fn unsharded_source(&self, sel: &Select) -> Option<String> {
        sel.from
            .iter()
            .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
            .find_map(|f| match f {
                TableFactor::Table { name, args, .. } => {
                    let t = last_name(&name.to_string());
                    let sharded = args.is_none() && self.keys.iter().any(|k| k.table == t);
                    (!sharded).then_some(t)
                }
                TableFactor::Function { name, .. } => Some(last_name(&name.to_string())),
                _ => None,
            })
    }

    fn reads_sharded(&self, f: &TableFactor) -> bool {
        visit_relations(f, |name| {
            let t = last_name(&name.to_string());
            if self.keys.iter().any(|k| k.table == t) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .is_break()
    }

    fn is_key_column(&self, column: &str) -> bool {
        self.keys.iter().any(|k| k.column == column)
    }

    /// `a.key = b.key` between two differently qualified sharding-key columns.
    fn key_link(&self, l: &Expr, r: &Expr) -> bool {
        match (l, r) {
            (Expr::CompoundIdentifier(a), Expr::CompoundIdentifier(b)) => {
                let (Some(ac), Some(bc)) = (column_name(l), column_name(r)) else {
                    return false;
                };
                let qual = |p: &[sqlparser::ast::Ident]| {
                    p.iter().rev().nth(1).map(|i| i.value.to_ascii_lowercase())
                };
                self.is_key_column(&ac) && self.is_key_column(&bc) && qual(a) != qual(b)
            }
            (Expr::Nested(l), r) | (r, Expr::Nested(l)) => self.key_link(l, r),
            _ => false,
        }
    }

    /// Whether `q` is tied to its outer row by the sharding key (`WHERE inner.key = outer.key`).
    fn tied_by_key(&self, q: &Query) -> bool {
        let SetExpr::Select(sel) = q.body.as_ref() else {
            return false;
        };
        let mut tied = false;
        if let Some(w) = &sel.selection {
            conjuncts(w, &mut |l, r| tied |= self.key_link(l, r));
        }
        tied
    }
}

fn join_constraint(j: &Join) -> Option<&JoinConstraint> {
    match &j.join_operator {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c) => Some(c),
        _ => None,
    }
}

/// What a query level computes over all of its rows, if anything (not looking into nested
/// queries): the construct, named for the client.
fn own_construct(q: &Query) -> Option<String> {
    let sel = match q.body.as_ref() {
        SetExpr::Select(sel) => sel,
        SetExpr::Query(inner) => return own_construct(inner),
        SetExpr::Values(_) => return None,
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
            return Some(
                "a data-modifying statement in WITH (INSERT, UPDATE, DELETE, MERGE)".into(),
            );
        }
        SetExpr::SetOperation { .. } => {
            return Some("a set operation (UNION, INTERSECT, EXCEPT)".into());
        }
        SetExpr::Table(_) => return Some("TABLE".into()),
    };
    if sel.distinct.is_some() {
        return Some("DISTINCT".into());
    }
    let grouped = match &sel.group_by {
        GroupByExpr::Expressions(e, _) => !e.is_empty(),
        GroupByExpr::All(_) => true,
    };
    if grouped {
        return Some("GROUP BY".into());
    }
    if sel.having.is_some() {
        return Some("HAVING".into());
    }
    let mut found = None;
    let mut level = Level::default();
    for item in &sel.projection {
        let _ = item.visit(&mut level);
    }
    if let Some(ob) = &q.order_by {
        let _ = ob.visit(&mut level);
    }
    if let Some(f) = level.window {
        found = Some(format!("the window function {f}"));
    } else if let Some(f) = level.aggregate {
        found = Some(format!("the aggregate {f}"));
    }
    found
}

/// Aggregate and window calls of one query level (nested queries are skipped).
#[derive(Default)]
struct Level {
    depth: usize,
    aggregate: Option<String>,
    window: Option<String>,
}

impl Visitor for Level {
    type Break = ();

    fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let (0, Expr::Function(f)) = (self.depth, e) {
            let name = last_name(&f.name.to_string());
            if f.over.is_some() {
                self.window.get_or_insert(name);
            } else if AGGREGATES.contains(&name.as_str()) || aggregate_syntax(f) {
                self.aggregate.get_or_insert(name);
            }
        }
        ControlFlow::Continue(())
    }
}

/// Whether a call is written as only an aggregate can be: FILTER, WITHIN GROUP, DISTINCT or
/// ORDER BY among its arguments (a user-defined aggregate called plainly is not recognised).
fn aggregate_syntax(f: &Function) -> bool {
    f.filter.is_some()
        || !f.within_group.is_empty()
        || matches!(&f.args, FunctionArguments::List(l)
            if l.duplicate_treatment.is_some() || !l.clauses.is_empty())
}

/// Walks every nested query of a statement: each one over a sharded table must work row by
/// row and be a derived table or tied to its outer row by the key.
struct Scan<'a> {
    spec: &'a ShardingSpec,
    /// Per open query level: whether it reads a sharded table (itself or below).
    stack: Vec<bool>,
    derived: HashSet<*const Query>,
    /// Correlated with the outer row by the key: every row they see is on its shard.
    correlated: HashSet<*const Query>,
    /// `key IN (SELECT key …)`: row by row on each shard, if they compute nothing over rows.
    keyed_in: HashSet<*const Query>,
    refusal: Option<String>,
}

impl<'a> Scan<'a> {
    fn new(spec: &'a ShardingSpec, stack: Vec<bool>) -> Scan<'a> {
        Scan {
            spec,
            stack,
            derived: HashSet::new(),
            correlated: HashSet::new(),
            keyed_in: HashSet::new(),
            refusal: None,
        }
    }
}

impl Visitor for Scan<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.stack.push(false);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let sharded = self.stack.pop().unwrap_or(false);
        let Some(outer) = self.stack.last_mut() else {
            return ControlFlow::Continue(());
        };
        *outer |= sharded;
        if !sharded {
            return ControlFlow::Continue(());
        }
        let ptr = q as *const Query;
        if self.correlated.contains(&ptr) {
            return ControlFlow::Continue(());
        }
        let why = if let Some(c) = own_construct(q).or_else(|| limits(q)) {
            format!(
                "{c} inside a subquery over a sharded table would be computed on each shard separately"
            )
        } else if q.with.is_some() {
            "WITH inside a subquery over a sharded table cannot be fanned out".into()
        } else if self.derived.contains(&ptr) || self.keyed_in.contains(&ptr) {
            return ControlFlow::Continue(());
        } else {
            "a subquery over a sharded table that is not tied to the outer row by the sharding key (… WHERE o.user_id = u.user_id, or user_id IN (SELECT user_id …)) would see only one shard's rows".into()
        };
        self.refusal = Some(why);
        ControlFlow::Break(())
    }

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        match f {
            TableFactor::Derived { subquery, .. } => {
                self.derived.insert(subquery.as_ref() as *const Query);
            }
            TableFactor::Table { name, .. } => {
                let t = last_name(&name.to_string());
                if self.spec.keys.iter().any(|k| k.table == t)
                    && let Some(level) = self.stack.last_mut()
                {
                    *level = true;
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Exists { subquery: q, .. } | Expr::Subquery(q) if self.spec.tied_by_key(q) => {
                self.correlated.insert(q.as_ref() as *const Query);
            }
            Expr::In {
                expr,
                target: InTarget::Subquery(q),
                ..
            } if self.key_in(expr, q) => {
                self.keyed_in.insert(q.as_ref() as *const Query);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl Scan<'_> {
    /// `key IN (SELECT key FROM …)`: a row meets only the keys of its own shard.
    fn key_in(&self, outer: &Expr, q: &Query) -> bool {
        let SetExpr::Select(sel) = q.body.as_ref() else {
            return false;
        };
        let inner = match sel.projection.as_slice() {
            [SelectItem::UnnamedExpr(e)] | [SelectItem::ExprWithAlias { expr: e, .. }] => e,
            _ => return false,
        };
        let key = |e: &Expr| column_name(e).is_some_and(|c| self.spec.is_key_column(&c));
        key(outer) && key(inner)
    }
}

/// LIMIT, OFFSET or FETCH of a query level, named.
fn limits(q: &Query) -> Option<String> {
    match &q.limit_clause {
        Some(LimitClause::LimitOffset {
            offset: Some(_), ..
        })
        | Some(LimitClause::OffsetCommaLimit { .. }) => return Some("OFFSET".into()),
        Some(LimitClause::LimitOffset { limit: Some(_), .. }) => return Some("LIMIT".into()),
        _ => {}
    }
    q.fetch.as_ref().map(|_| "FETCH FIRST".into())
}

/// One ORDER BY item as a merge key: a result column by name or position.
fn sort_order(e: &sqlparser::ast::OrderByExpr, sel: &Select) -> Result<Order, String> {
    let desc = match e.options.sort {
        None | Some(OrderBySort::Asc) => false,
        Some(OrderBySort::Desc) => true,
        Some(OrderBySort::Using(_)) => return Err("ORDER BY … USING cannot be merged".into()),
    };
    // PostgreSQL's default: NULLs are larger than any value.
    let nulls_first = e.options.nulls_first.unwrap_or(desc);
    let (expr, byte_order) = match &e.expr {
        Expr::Collate { expr, collation } => {
            let c = last_name(&collation.to_string());
            if !matches!(c.as_str(), "c" | "posix" | "ucs_basic") {
                return Err(format!(
                    "ORDER BY … COLLATE {collation} cannot be merged across shards; COLLATE \"C\" can"
                ));
            }
            (expr.as_ref(), true)
        }
        other => (other, false),
    };
    let key = match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => match n.parse() {
                Ok(p) => SortKey::Position(p),
                Err(_) => return Err("bad ORDER BY position".into()),
            },
            _ => return Err("ORDER BY a constant cannot be merged".into()),
        },
        Expr::CompoundIdentifier(_) | Expr::Identifier(_) | Expr::Nested(_) => {
            let Some(n) = column_name(expr) else {
                return Err("a fanned-out SELECT can be ordered by result columns only".into());
            };
            if matches!(expr, Expr::CompoundIdentifier(_)) && shadowed(sel, &n, expr) {
                return Err(format!(
                    "ORDER BY {expr} names a table column while a result column is also called {n}; order by the result column's position"
                ));
            }
            SortKey::Name(n)
        }
        _ => return Err("a fanned-out SELECT can be ordered by result columns only".into()),
    };
    Ok(Order {
        key,
        desc,
        nulls_first,
        byte_order,
    })
}

/// Whether a result column called `name` is something other than `column`.
fn shadowed(sel: &Select, name: &str, column: &Expr) -> bool {
    sel.projection.iter().any(|item| match item {
        SelectItem::ExprWithAlias { expr, alias } => {
            alias.value.eq_ignore_ascii_case(name) && expr != column
        }
        _ => false,
    })
}
