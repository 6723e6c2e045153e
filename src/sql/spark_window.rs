//! Spark's implicit window column: `window.start`, `window.end` and `window`
//! in a query grouped by `window(…)` (and likewise `session_window`).
//!
//! In Spark SQL, `GROUP BY window(event_time, '1 hour')` adds a grouping
//! column named `window` (a struct of `start` and `end`), so the select list
//! can say `window.start`:
//!
//! ```sql
//! SELECT window.start AS window_start, window.end AS window_end, symbol, count(*)
//! FROM trades GROUP BY window(event_time, '1 hour'), symbol
//! ```
//!
//! DataFusion has no such column: the grouping expression is the call
//! itself. [`rewrite_query`] rewrites the query's syntax tree before it is
//! planned, replacing, in the select list, `HAVING`, `QUALIFY` and
//! `ORDER BY` of each `SELECT`:
//!
//! - `window.start` / `window.end` with the `GROUP BY`'s call indexed by the
//!   field, `window(event_time, '1 hour')['start']` (an unaliased select item
//!   is named `start` / `end`, as in Spark);
//! - a bare `window` with the call itself (an unaliased select item is named
//!   `window`);
//! - the same for `session_window`.
//!
//! A reference is rewritten only when nothing else in scope has that name:
//! no table, alias or column called `window` among the `SELECT`'s `FROM`
//! relations. It must then match exactly one `window(…)` (or
//! `session_window(…)`) call among the `SELECT`'s `GROUP BY` expressions;
//! none or several is an error pointing at the reference. Subqueries are
//! rewritten on their own, each with its own `GROUP BY`.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, GroupByExpr, Ident, ObjectName, ObjectNamePart, OrderBy, OrderByKind, Query,
    Select, SelectItem, SetExpr, TableFactor, TableWithJoins, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::PipelineError;

/// The names Spark gives the grouping window columns, one per window
/// function.
const WINDOW_COLUMNS: [&str; 2] = ["window", "session_window"];

/// The fields of a window struct.
const FIELDS: [&str; 2] = ["start", "end"];

/// Rewrites Spark's implicit window column references in `query` (see the
/// module docs). `columns_of` gives the column names of a table or view the
/// query reads (empty when unknown), so that a real column named `window`
/// is left alone.
pub fn rewrite_query(
    query: &mut Query,
    columns_of: &dyn Fn(&ObjectName) -> Vec<String>,
) -> Result<(), PipelineError> {
    Rewriter {
        columns_of,
        ctes: Vec::new(),
    }
    .query(query)
}

/// The tables and views `query` names (in `FROM` and joins, at any depth),
/// for gathering their columns before [`rewrite_query`].
pub fn referenced_relations(query: &Query) -> Vec<ObjectName> {
    let mut names = Vec::new();
    let _ = datafusion::sql::sqlparser::ast::visit_relations(query, |name| {
        if !names.contains(name) {
            names.push(name.clone());
        }
        ControlFlow::<()>::Continue(())
    });
    names
}

struct Rewriter<'a> {
    columns_of: &'a dyn Fn(&ObjectName) -> Vec<String>,
    /// Common table expressions in scope: name and output columns.
    ctes: Vec<(String, Vec<String>)>,
}

/// What a `SELECT`'s `FROM` brings into scope: relation names (and aliases)
/// and column names, lower-cased.
#[derive(Default)]
struct Scope {
    relations: Vec<String>,
    columns: Vec<String>,
}

impl Scope {
    fn shadows(&self, name: &str) -> bool {
        self.relations.iter().any(|r| r == name) || self.columns.iter().any(|c| c == name)
    }
}

fn lower(ident: &Ident) -> String {
    ident.value.to_ascii_lowercase()
}

impl Rewriter<'_> {
    fn query(&mut self, query: &mut Query) -> Result<(), PipelineError> {
        let saved = self.ctes.len();
        if let Some(with) = &mut query.with {
            for cte in &mut with.cte_tables {
                self.query(&mut cte.query)?;
                let columns = if cte.alias.columns.is_empty() {
                    self.output_names(&cte.query)
                } else {
                    cte.alias.columns.iter().map(|c| lower(&c.name)).collect()
                };
                self.ctes.push((lower(&cte.alias.name), columns));
            }
        }
        let result = self.set_expr(&mut query.body, query.order_by.as_mut());
        self.ctes.truncate(saved);
        result
    }

    fn set_expr(
        &mut self,
        body: &mut SetExpr,
        order_by: Option<&mut OrderBy>,
    ) -> Result<(), PipelineError> {
        match body {
            SetExpr::Select(select) => self.select(select, order_by),
            SetExpr::Query(query) => self.query(query),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left, None)?;
                self.set_expr(right, None)
            }
            _ => Ok(()),
        }
    }

    fn select(
        &mut self,
        select: &mut Select,
        order_by: Option<&mut OrderBy>,
    ) -> Result<(), PipelineError> {
        for table in &mut select.from {
            self.table_factor(&mut table.relation)?;
            for join in &mut table.joins {
                self.table_factor(&mut join.relation)?;
            }
        }
        let scope = self.scope(&select.from);
        let calls: Vec<Function> = match &select.group_by {
            GroupByExpr::Expressions(exprs, _) => exprs
                .iter()
                .filter_map(|e| match e {
                    Expr::Function(f) => Some(f.clone()),
                    _ => None,
                })
                .collect(),
            GroupByExpr::All(_) => Vec::new(),
        };
        // WHERE comes before grouping: only its subqueries are rewritten.
        if let Some(selection) = &mut select.selection {
            self.visit(selection, &scope, None)?;
        }
        for item in &mut select.projection {
            match item {
                SelectItem::UnnamedExpr(expr) => {
                    // Spark names `window.start` `start`, `window` `window`.
                    let name = match window_reference(expr, &scope) {
                        Some((_, Some(field))) if FIELDS.contains(&lower(field).as_str()) => {
                            Some(Ident::new(lower(field)))
                        }
                        Some((column, None)) => Some(Ident::new(lower(column))),
                        _ => None,
                    };
                    self.visit(expr, &scope, Some(&calls))?;
                    if let Some(alias) = name {
                        *item = SelectItem::ExprWithAlias {
                            expr: expr.clone(),
                            alias,
                        };
                    }
                }
                SelectItem::ExprWithAlias { expr, .. } => {
                    self.visit(expr, &scope, Some(&calls))?;
                }
                _ => {}
            }
        }
        if let Some(having) = &mut select.having {
            self.visit(having, &scope, Some(&calls))?;
        }
        if let Some(qualify) = &mut select.qualify {
            self.visit(qualify, &scope, Some(&calls))?;
        }
        if let Some(OrderBy {
            kind: OrderByKind::Expressions(exprs),
            ..
        }) = order_by
        {
            for e in exprs {
                self.visit(&mut e.expr, &scope, Some(&calls))?;
            }
        }
        Ok(())
    }

    fn table_factor(&mut self, factor: &mut TableFactor) -> Result<(), PipelineError> {
        match factor {
            TableFactor::Derived { subquery, .. } => self.query(subquery),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                self.table_factor(&mut table_with_joins.relation)?;
                for join in &mut table_with_joins.joins {
                    self.table_factor(&mut join.relation)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Replaces window references in `expr` with `calls` (the `GROUP BY`'s
    /// function calls), or with `None` only rewrites nested queries.
    fn visit(
        &mut self,
        expr: &mut Expr,
        scope: &Scope,
        calls: Option<&[Function]>,
    ) -> Result<(), PipelineError> {
        let mut visitor = Replace {
            rewriter: self,
            scope,
            calls,
            depth: 0,
        };
        match expr.visit(&mut visitor) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(e) => Err(e),
        }
    }

    fn scope(&self, from: &[TableWithJoins]) -> Scope {
        let mut scope = Scope::default();
        for table in from {
            self.factor_scope(&table.relation, &mut scope);
            for join in &table.joins {
                self.factor_scope(&join.relation, &mut scope);
            }
        }
        scope
    }

    fn factor_scope(&self, factor: &TableFactor, scope: &mut Scope) {
        match factor {
            TableFactor::Table { name, alias, .. } => {
                if let Some(ObjectNamePart::Identifier(last)) = name.0.last() {
                    scope.relations.push(lower(last));
                }
                let cte = match name.0.as_slice() {
                    [ObjectNamePart::Identifier(single)] => {
                        self.ctes.iter().rev().find(|(n, _)| *n == lower(single))
                    }
                    _ => None,
                };
                match cte {
                    Some((_, columns)) => scope.columns.extend(columns.iter().cloned()),
                    None => scope.columns.extend(
                        (self.columns_of)(name)
                            .iter()
                            .map(|c| c.to_ascii_lowercase()),
                    ),
                }
                if let Some(alias) = alias {
                    scope.relations.push(lower(&alias.name));
                    scope
                        .columns
                        .extend(alias.columns.iter().map(|c| lower(&c.name)));
                }
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                scope.columns.extend(self.output_names(subquery));
                if let Some(alias) = alias {
                    scope.relations.push(lower(&alias.name));
                    scope
                        .columns
                        .extend(alias.columns.iter().map(|c| lower(&c.name)));
                }
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                self.factor_scope(&table_with_joins.relation, scope);
                for join in &table_with_joins.joins {
                    self.factor_scope(&join.relation, scope);
                }
                if let Some(alias) = alias {
                    scope.relations.push(lower(&alias.name));
                }
            }
            other => {
                if let Some(alias) = table_factor_alias(other) {
                    scope.relations.push(lower(&alias.name));
                    scope
                        .columns
                        .extend(alias.columns.iter().map(|c| lower(&c.name)));
                }
            }
        }
    }

    /// The column names a query produces, as far as the syntax tells.
    fn output_names(&self, query: &Query) -> Vec<String> {
        let mut body = query.body.as_ref();
        loop {
            match body {
                SetExpr::Query(q) => body = q.body.as_ref(),
                SetExpr::SetOperation { left, .. } => body = left.as_ref(),
                _ => break,
            }
        }
        let SetExpr::Select(select) = body else {
            return Vec::new();
        };
        let mut names = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::ExprWithAlias { alias, .. } => names.push(lower(alias)),
                SelectItem::UnnamedExpr(Expr::Identifier(i)) => names.push(lower(i)),
                SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                    if let Some(last) = parts.last() {
                        names.push(lower(last));
                    }
                }
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    names.extend(self.scope(&select.from).columns);
                }
                _ => {}
            }
        }
        names
    }
}

fn table_factor_alias(
    factor: &TableFactor,
) -> Option<&datafusion::sql::sqlparser::ast::TableAlias> {
    match factor {
        TableFactor::Table { alias, .. }
        | TableFactor::Derived { alias, .. }
        | TableFactor::TableFunction { alias, .. }
        | TableFactor::Function { alias, .. }
        | TableFactor::UNNEST { alias, .. }
        | TableFactor::NestedJoin { alias, .. } => alias.as_ref(),
        _ => None,
    }
}

/// `window.<field>` (or `session_window.<field>`) or a bare `window`, when
/// nothing in scope has that name: the column and the field, if any.
fn window_reference<'e>(expr: &'e Expr, scope: &Scope) -> Option<(&'e Ident, Option<&'e Ident>)> {
    let (column, field) = match expr {
        Expr::Identifier(column) => (column, None),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => (&parts[0], Some(&parts[1])),
        _ => return None,
    };
    let name = lower(column);
    (WINDOW_COLUMNS.contains(&name.as_str()) && !scope.shadows(&name)).then_some((column, field))
}

fn function_name(f: &Function) -> Option<String> {
    match f.name.0.as_slice() {
        [ObjectNamePart::Identifier(name)] => Some(lower(name)),
        _ => None,
    }
}

struct Replace<'r, 'a> {
    rewriter: &'r mut Rewriter<'a>,
    scope: &'r Scope,
    calls: Option<&'r [Function]>,
    /// How many queries deep the visitor is inside the expression: nested
    /// queries are rewritten on their own.
    depth: usize,
}

impl VisitorMut for Replace<'_, '_> {
    type Break = PipelineError;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<PipelineError> {
        self.depth += 1;
        if self.depth == 1
            && let Err(e) = self.rewriter.query(query)
        {
            return ControlFlow::Break(e);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &mut Query) -> ControlFlow<PipelineError> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<PipelineError> {
        let Some(calls) = self.calls else {
            return ControlFlow::Continue(());
        };
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        let Some((column, field)) = window_reference(expr, self.scope) else {
            return ControlFlow::Continue(());
        };
        match replacement(column, field, calls) {
            Ok(new) => {
                *expr = new;
                ControlFlow::Continue(())
            }
            Err(e) => ControlFlow::Break(e),
        }
    }
}

/// The expression a window reference stands for.
fn replacement(
    column: &Ident,
    field: Option<&Ident>,
    calls: &[Function],
) -> Result<Expr, PipelineError> {
    let name = lower(column);
    let at = |message: String| PipelineError::At {
        line: column.span.start.line,
        column: column.span.start.column,
        message,
    };
    let reference = match field {
        Some(f) => format!("{}.{}", column.value, f.value),
        None => column.value.clone(),
    };
    if let Some(field) = field
        && !FIELDS.contains(&lower(field).as_str())
    {
        return Err(at(format!(
            "{reference}: the {name} struct has the fields start and end, not '{}'",
            field.value
        )));
    }
    let matching: Vec<&Function> = calls
        .iter()
        .filter(|f| function_name(f).as_deref() == Some(name.as_str()))
        .collect();
    let call = match matching.as_slice() {
        [call] => *call,
        [] => {
            let other = WINDOW_COLUMNS.iter().find(|&&o| {
                o != name && calls.iter().any(|f| function_name(f).as_deref() == Some(o))
            });
            let hint = match other {
                Some(other) => format!(
                    "; the GROUP BY has {other}(…), whose column is {other} (e.g. {other}.start)"
                ),
                None => format!(
                    "; add {name}(<event time>, <size>) to the GROUP BY, or name a column or table {name}"
                ),
            };
            return Err(at(format!(
                "{reference} refers to the grouping {name} of the query, but its GROUP BY has no {name}(…) call{hint}"
            )));
        }
        several => {
            let list: Vec<String> = several.iter().map(|f| f.to_string()).collect();
            return Err(at(format!(
                "{reference} is ambiguous: the GROUP BY has {} {name}(…) calls ({}); write the one meant in place, e.g. {}{}",
                several.len(),
                list.join(", "),
                list[0],
                field
                    .map(|f| format!("['{}']", lower(f)))
                    .unwrap_or_default(),
            )));
        }
    };
    let text = match field {
        Some(f) => format!("{call}['{}']", lower(f)),
        None => call.to_string(),
    };
    Parser::new(&GenericDialect {})
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| at(format!("cannot rewrite {reference} as {text}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast::Statement;

    fn rewrite_with(sql: &str, columns: &[(&str, &[&str])]) -> Result<String, PipelineError> {
        let mut statements = Parser::parse_sql(&GenericDialect {}, sql).unwrap();
        let Statement::Query(query) = &mut statements[0] else {
            panic!("not a query: {sql}");
        };
        let columns_of = |name: &ObjectName| -> Vec<String> {
            columns
                .iter()
                .find(|(t, _)| name.to_string() == *t)
                .map(|(_, c)| c.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default()
        };
        rewrite_query(query, &columns_of)?;
        Ok(query.to_string())
    }

    fn rewrite(sql: &str) -> Result<String, PipelineError> {
        rewrite_with(sql, &[("trades", &["symbol", "event_time", "quantity"])])
    }

    #[test]
    fn window_fields_become_the_grouping_call_indexed() {
        let out = rewrite(
            "SELECT window.start AS window_start, window.end AS window_end, symbol, count(*) \
             FROM trades GROUP BY window(event_time, '1 hour'), symbol",
        )
        .unwrap();
        assert_eq!(
            out,
            "SELECT window(event_time, '1 hour')['start'] AS window_start, \
             window(event_time, '1 hour')['end'] AS window_end, symbol, count(*) \
             FROM trades GROUP BY window(event_time, '1 hour'), symbol"
        );
    }

    #[test]
    fn unaliased_references_are_named_as_in_spark() {
        let out = rewrite(
            "SELECT window, window.start, WINDOW.END, count(*) FROM trades \
             GROUP BY window(event_time, '1 minute', '30 seconds') \
             HAVING window.end > TIMESTAMP '2024-01-01 00:00:00' ORDER BY window.start",
        )
        .unwrap();
        assert_eq!(
            out,
            "SELECT window(event_time, '1 minute', '30 seconds') AS window, \
             window(event_time, '1 minute', '30 seconds')['start'] AS start, \
             window(event_time, '1 minute', '30 seconds')['end'] AS end, count(*) FROM trades \
             GROUP BY window(event_time, '1 minute', '30 seconds') \
             HAVING window(event_time, '1 minute', '30 seconds')['end'] > TIMESTAMP '2024-01-01 00:00:00' \
             ORDER BY window(event_time, '1 minute', '30 seconds')['start']"
        );
    }

    #[test]
    fn session_window_has_its_own_column() {
        let out = rewrite(
            "SELECT session_window.start AS s, session_window.end AS e, symbol, count(*) \
             FROM trades GROUP BY session_window(event_time, '5 minutes'), symbol",
        )
        .unwrap();
        assert!(
            out.starts_with(
                "SELECT session_window(event_time, '5 minutes')['start'] AS s, \
                 session_window(event_time, '5 minutes')['end'] AS e"
            ),
            "{out}"
        );
        let err = rewrite(
            "SELECT window.start, count(*) FROM trades \
             GROUP BY session_window(event_time, '5 minutes')",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("1:8: window.start refers to the grouping window of the query, but its GROUP BY has no window(…) call; the GROUP BY has session_window(…)"),
            "{err}"
        );
    }

    #[test]
    fn no_or_several_window_calls_are_errors_at_the_reference() {
        let err = rewrite("SELECT symbol,\n  window.start FROM trades GROUP BY symbol")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("2:3: window.start refers to the grouping window of the query, but its GROUP BY has no window(…) call; add window(<event time>, <size>) to the GROUP BY"),
            "{err}"
        );
        let err = rewrite(
            "SELECT window.end FROM trades \
             GROUP BY window(event_time, '1 minute'), window(event_time, '1 hour')",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("1:8: window.end is ambiguous: the GROUP BY has 2 window(…) calls (window(event_time, '1 minute'), window(event_time, '1 hour')); write the one meant in place, e.g. window(event_time, '1 minute')['end']"),
            "{err}"
        );
        let err = rewrite("SELECT window.size FROM trades GROUP BY window(event_time, '1 minute')")
            .unwrap_err()
            .to_string();
        assert!(err.contains("has the fields start and end"), "{err}");
    }

    #[test]
    fn a_real_table_or_column_named_window_is_left_alone() {
        for sql in [
            // a table alias
            "SELECT window.start FROM trades AS window GROUP BY window.start",
            // a column of the table read
            "SELECT window.start, count(*) FROM windows GROUP BY window.start",
            // a column of a subquery
            "SELECT window.start FROM (SELECT w AS window FROM x) GROUP BY window(a, '1 minute')",
            // a column of a common table expression
            "WITH c AS (SELECT w AS window FROM x) SELECT window.start FROM c",
        ] {
            let out = rewrite_with(sql, &[("windows", &["window", "n"])]).unwrap();
            assert_eq!(out, sql);
        }
    }

    #[test]
    fn each_query_level_uses_its_own_group_by() {
        let out = rewrite(
            "SELECT window.start AS minute, n FROM (\
               SELECT window, count(*) AS n FROM trades GROUP BY window(event_time, '1 minute')) \
             WHERE window.start > TIMESTAMP '2024-01-01 00:00:00'",
        )
        .unwrap();
        // The inner query's `window` is its grouping window; the outer
        // query reads the inner's column named window.
        assert_eq!(
            out,
            "SELECT window.start AS minute, n FROM (\
               SELECT window(event_time, '1 minute') AS window, count(*) AS n FROM trades \
               GROUP BY window(event_time, '1 minute')) \
             WHERE window.start > TIMESTAMP '2024-01-01 00:00:00'"
        );
        let out = rewrite(
            "SELECT symbol FROM trades WHERE quantity > (SELECT max(n) FROM (\
               SELECT window.end AS e, count(*) AS n FROM trades GROUP BY window(event_time, '1 minute')))",
        )
        .unwrap();
        assert!(
            out.contains("SELECT window(event_time, '1 minute')['end'] AS e"),
            "{out}"
        );
    }

    #[test]
    fn referenced_relations_lists_tables_at_any_depth() {
        let statements = Parser::parse_sql(
            &GenericDialect {},
            "SELECT * FROM a JOIN (SELECT * FROM b) ON true WHERE x IN (SELECT y FROM c)",
        )
        .unwrap();
        let Statement::Query(query) = &statements[0] else {
            unreachable!()
        };
        let names: Vec<String> = referenced_relations(query)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    /// The rewritten queries plan and run in DataFusion with the window
    /// functions, in batch: the implicit columns hold the grouping windows.
    #[tokio::test]
    async fn rewritten_queries_run() {
        use datafusion::prelude::SessionContext;
        let ctx = SessionContext::new();
        tidemill_engine::window::register_window_functions(&ctx);
        ctx.sql(
            "CREATE TABLE trades AS SELECT * FROM (VALUES \
               ('a', TIMESTAMP '2024-01-01 10:00:05'), ('a', TIMESTAMP '2024-01-01 10:00:50'), \
               ('b', TIMESTAMP '2024-01-01 10:01:10'), ('a', TIMESTAMP '2024-01-01 10:03:00')) \
             AS t(symbol, event_time)",
        )
        .await
        .unwrap();
        let run = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let sql = rewrite_with(sql, &[("trades", &["symbol", "event_time"])]).unwrap();
                let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string()
            }
        };
        assert_eq!(
            run(
                "SELECT window.start, window.end AS e, symbol, count(*) AS n FROM trades \
                 GROUP BY window(event_time, '1 minute'), symbol ORDER BY window.start, symbol"
            )
            .await,
            "+---------------------+---------------------+--------+---+\n\
             | start               | e                   | symbol | n |\n\
             +---------------------+---------------------+--------+---+\n\
             | 2024-01-01T10:00:00 | 2024-01-01T10:01:00 | a      | 2 |\n\
             | 2024-01-01T10:01:00 | 2024-01-01T10:02:00 | b      | 1 |\n\
             | 2024-01-01T10:03:00 | 2024-01-01T10:04:00 | a      | 1 |\n\
             +---------------------+---------------------+--------+---+"
        );
        assert_eq!(
            run(
                "SELECT session_window.start AS s, session_window.end AS e, count(*) AS n \
                 FROM trades GROUP BY session_window(event_time, '1 minute') ORDER BY s"
            )
            .await,
            "+---------------------+---------------------+---+\n\
             | s                   | e                   | n |\n\
             +---------------------+---------------------+---+\n\
             | 2024-01-01T10:00:05 | 2024-01-01T10:02:10 | 3 |\n\
             | 2024-01-01T10:03:00 | 2024-01-01T10:04:00 | 1 |\n\
             +---------------------+---------------------+---+"
        );
        let struct_column = run("SELECT window, count(*) AS n FROM trades \
             GROUP BY window(event_time, '2 minutes') ORDER BY window.start")
        .await;
        assert!(
            struct_column.starts_with("+---") && struct_column.contains("| window "),
            "{struct_column}"
        );
        assert!(
            struct_column.contains("{start: 2024-01-01T10:00:00, end: 2024-01-01T10:02:00}"),
            "{struct_column}"
        );
    }
}
