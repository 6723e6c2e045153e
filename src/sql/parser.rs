//! Parsing a pipeline file: Tidemill's `CREATE STREAM` and `CREATE SINK`
//! on top of DataFusion's SQL parser, which parses everything else.

use std::time::Duration;

use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, ColumnDef, Expr, Ident, Query, Statement as SQLStatement, TableObject, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan};
use tidemill_connectors::{ConnectorOptions, Position};
use tidemill_engine::watermark::parse_delay;

use super::PipelineError;

/// A statement with where it starts in the file.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// 1-based line of the statement's first token.
    pub line: u64,
    /// 1-based column of the statement's first token.
    pub column: u64,
    /// The statement.
    pub item: T,
}

/// One statement of a pipeline file.
#[derive(Debug, Clone)]
pub enum PipelineStatement {
    /// `CREATE STREAM name (columns…, WATERMARK FOR …) WITH (…)`.
    CreateStream(StreamDef),
    /// `CREATE SINK name WITH (…)`.
    CreateSink(SinkDef),
    /// `INSERT INTO sink SELECT …`: one streaming query.
    Insert(InsertDef),
    /// Any other statement, run by DataFusion (`CREATE EXTERNAL TABLE`,
    /// `CREATE VIEW`, `SET`, …).
    Sql(Box<DFStatement>),
}

/// A declared stream.
#[derive(Debug, Clone)]
pub struct StreamDef {
    /// The name queries read it by.
    pub name: String,
    /// The declared columns (may be empty for connectors with a fixed
    /// schema, such as `rate`).
    pub columns: Vec<ColumnDef>,
    /// The watermark, if declared.
    pub watermark: Option<WatermarkDef>,
    /// The `WITH (…)` options, read by the stream's or sink's connector.
    pub options: ConnectorOptions,
}

/// `WATERMARK FOR column AS column - INTERVAL '…'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkDef {
    /// The event-time column.
    pub column: String,
    /// How late rows may arrive.
    pub delay: Duration,
}

/// A declared sink.
#[derive(Debug, Clone)]
pub struct SinkDef {
    /// The name `INSERT INTO` writes to.
    pub name: String,
    /// The `WITH (…)` options, read by the stream's or sink's connector.
    pub options: ConnectorOptions,
}

/// `INSERT INTO sink <query>`.
#[derive(Debug, Clone)]
pub struct InsertDef {
    /// The sink's name.
    pub sink: String,
    /// The query whose results go to the sink.
    pub query: Box<Query>,
}

/// Parses a pipeline file into its statements.
pub fn parse_pipeline(text: &str) -> Result<Vec<Located<PipelineStatement>>, PipelineError> {
    let dialect = GenericDialect {};
    let mut parser = DFParserBuilder::new(text).with_dialect(&dialect).build()?;
    let mut statements = Vec::new();
    loop {
        while parser.parser.consume_token(&Token::SemiColon) {}
        let first = parser.parser.peek_token();
        if first.token == Token::EOF {
            break;
        }
        let at = (first.span.start.line, first.span.start.column);
        let second = parser.parser.peek_nth_token(1);
        let item = if is_word(&first, "CREATE") && is_word(&second, "STREAM") {
            PipelineStatement::CreateStream(parse_stream(&mut parser.parser, at)?)
        } else if is_word(&first, "CREATE") && is_word(&second, "SINK") {
            PipelineStatement::CreateSink(parse_sink(&mut parser.parser, at)?)
        } else {
            match parser.parse_statement()? {
                DFStatement::Statement(statement) => match *statement {
                    SQLStatement::Insert(insert) => {
                        let sink = match &insert.table {
                            TableObject::TableName(name) => name.to_string(),
                            other => {
                                return Err(error_at(at, format!("cannot insert into {other}")));
                            }
                        };
                        let Some(query) = insert.source else {
                            return Err(error_at(
                                at,
                                format!(
                                    "INSERT INTO {sink} needs a query (INSERT INTO {sink} SELECT …)"
                                ),
                            ));
                        };
                        PipelineStatement::Insert(InsertDef { sink, query })
                    }
                    other => {
                        PipelineStatement::Sql(Box::new(DFStatement::Statement(Box::new(other))))
                    }
                },
                other => PipelineStatement::Sql(Box::new(other)),
            }
        };
        statements.push(Located {
            line: at.0,
            column: at.1,
            item,
        });
        let next = parser.parser.peek_token();
        if next.token != Token::EOF && !parser.parser.consume_token(&Token::SemiColon) {
            return Err(error_at(
                (next.span.start.line, next.span.start.column),
                format!("expected ';' after the statement, found {}", next.token),
            ));
        }
    }
    Ok(statements)
}

fn error_at(at: (u64, u64), message: String) -> PipelineError {
    PipelineError::At {
        line: at.0,
        column: at.1,
        message,
    }
}

fn is_word(token: &TokenWithSpan, word: &str) -> bool {
    matches!(&token.token, Token::Word(w) if w.value.eq_ignore_ascii_case(word))
}

/// `CREATE STREAM name [(column, …, [WATERMARK FOR c AS c - INTERVAL …])]
/// WITH (…)`.
fn parse_stream(parser: &mut Parser, at: (u64, u64)) -> Result<StreamDef, PipelineError> {
    parser.expect_keyword(Keyword::CREATE)?;
    parser.next_token(); // STREAM
    let name = parser.parse_object_name(false)?.to_string();
    let mut columns = Vec::new();
    let mut watermark = None;
    if parser.consume_token(&Token::LParen) {
        loop {
            let next = parser.peek_token();
            if is_word(&next, "WATERMARK") {
                parser.next_token();
                parser.expect_keyword(Keyword::FOR)?;
                let column = parser.parse_identifier()?;
                parser.expect_keyword(Keyword::AS)?;
                let expr_at = parser.peek_token().span.start;
                let expr = parser.parse_expr()?;
                if watermark.is_some() {
                    return Err(error_at(
                        (next.span.start.line, next.span.start.column),
                        format!("stream {name} declares more than one watermark"),
                    ));
                }
                watermark = Some(watermark_def(&column, &expr, expr_at)?);
            } else {
                columns.push(parser.parse_column_def()?);
            }
            if parser.consume_token(&Token::Comma) {
                continue;
            }
            parser.expect_token(&Token::RParen)?;
            break;
        }
    }
    let declared = ConnectorOptions::new(format!("stream {name}"), Position::new(at.0, at.1))
        .with_reserved(&["connector"]);
    let options = parse_with_options(parser, declared)?;
    Ok(StreamDef {
        name,
        columns,
        watermark,
        options,
    })
}

/// `CREATE SINK name WITH (…)`.
fn parse_sink(parser: &mut Parser, at: (u64, u64)) -> Result<SinkDef, PipelineError> {
    parser.expect_keyword(Keyword::CREATE)?;
    parser.next_token(); // SINK
    let name = parser.parse_object_name(false)?.to_string();
    let declared = ConnectorOptions::new(format!("sink {name}"), Position::new(at.0, at.1))
        .with_reserved(&["connector", "output_mode"]);
    let options = parse_with_options(parser, declared)?;
    Ok(SinkDef { name, options })
}

/// The delay of `WATERMARK FOR column AS <expr>`: `<expr>` is the column
/// itself (no delay) or the column minus an interval.
fn watermark_def(column: &Ident, expr: &Expr, at: Location) -> Result<WatermarkDef, PipelineError> {
    let invalid = || {
        error_at(
            (at.line, at.column),
            format!(
                "WATERMARK FOR {column} AS … must be '{column}' or '{column} - INTERVAL …' \
                 (e.g. {column} - INTERVAL '10' SECOND), not '{expr}'"
            ),
        )
    };
    let same_column =
        |e: &Expr| matches!(e, Expr::Identifier(i) if i.value.eq_ignore_ascii_case(&column.value));
    let delay = match expr {
        e if same_column(e) => Duration::ZERO,
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if same_column(left) => match right.as_ref() {
            Expr::Interval(interval) => {
                let value = match interval.value.as_ref() {
                    Expr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
                        _ => return Err(invalid()),
                    },
                    _ => return Err(invalid()),
                };
                let text = match &interval.leading_field {
                    Some(unit) => format!("{value} {unit}"),
                    None => value,
                };
                parse_delay(&text).map_err(|e| error_at((at.line, at.column), e.to_string()))?
            }
            _ => return Err(invalid()),
        },
        _ => return Err(invalid()),
    };
    Ok(WatermarkDef {
        column: column.value.clone(),
        delay,
    })
}

/// `WITH (key = value, …)`: a key is an identifier, a dotted name
/// (`kafka.security.protocol`) or a quoted string (`'connector'`, as in
/// Flink); a value is a literal or an identifier. Keys are lower-cased.
/// The options are added to `options`.
fn parse_with_options(
    parser: &mut Parser,
    mut options: ConnectorOptions,
) -> Result<ConnectorOptions, PipelineError> {
    if !parser.parse_keyword(Keyword::WITH) {
        return Ok(options);
    }
    parser.expect_token(&Token::LParen)?;
    if parser.consume_token(&Token::RParen) {
        return Ok(options);
    }
    loop {
        let first = parser.next_token();
        let mut key = match &first.token {
            Token::Word(w) => w.value.clone(),
            Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s.clone(),
            other => {
                return Err(error_at(
                    (first.span.start.line, first.span.start.column),
                    format!("expected an option name, found {other}"),
                ));
            }
        };
        if matches!(first.token, Token::Word(_)) {
            while parser.consume_token(&Token::Period) {
                let part = parser.next_token();
                match &part.token {
                    Token::Word(w) => {
                        key.push('.');
                        key.push_str(&w.value);
                    }
                    other => {
                        return Err(error_at(
                            (part.span.start.line, part.span.start.column),
                            format!("expected the rest of the option name {key}., found {other}"),
                        ));
                    }
                }
            }
        }
        parser.expect_token(&Token::Eq)?;
        let value = parser.parse_expr()?;
        let text = match &value {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                Value::Number(n, _) => n.clone(),
                Value::Boolean(b) => b.to_string(),
                other => other.to_string(),
            },
            Expr::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        };
        let at = Position::new(first.span.start.line, first.span.start.column);
        options.insert(&key, text, at)?;
        if parser.consume_token(&Token::Comma) {
            continue;
        }
        parser.expect_token(&Token::RParen)?;
        break;
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_streams_sinks_inserts_and_datafusion_statements() {
        let text = "
            CREATE STREAM trades (
              symbol VARCHAR, price DOUBLE, event_time TIMESTAMP,
              WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
            ) WITH (connector = 'files', path = 'data/trades', format = 'json');
            CREATE SINK out WITH (connector = 'files', path = 'out', format = 'parquet',
                                  output_mode = 'append');
            CREATE EXTERNAL TABLE symbols STORED AS CSV LOCATION 'symbols.csv';
            INSERT INTO out SELECT symbol, count(*) FROM trades GROUP BY symbol;
        ";
        let statements = parse_pipeline(text).unwrap();
        assert_eq!(statements.len(), 4);
        let PipelineStatement::CreateStream(stream) = &statements[0].item else {
            panic!("{:?}", statements[0]);
        };
        assert_eq!(stream.name, "trades");
        assert_eq!(stream.columns.len(), 3);
        assert_eq!(
            stream.watermark,
            Some(WatermarkDef {
                column: "event_time".into(),
                delay: Duration::from_secs(10)
            })
        );
        assert_eq!(stream.options.get("format"), Some("json"));
        assert_eq!((statements[1].line, statements[1].column), (6, 13));
        assert!(matches!(&statements[2].item, PipelineStatement::Sql(_)));
        let PipelineStatement::Insert(insert) = &statements[3].item else {
            panic!("{:?}", statements[3]);
        };
        assert_eq!(insert.sink, "out");
    }

    #[test]
    fn errors_point_to_line_and_column() {
        let err = parse_pipeline("CREATE STREAM s (a INT) WITH (connector = 'files');\nSELEC 1;")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("2:1: SQL syntax error: "), "{err}");
        assert!(!err.contains("at Line:"), "said once: {err}");
        let err = parse_pipeline(
            "CREATE STREAM s (t TIMESTAMP,\n  WATERMARK FOR t AS t + INTERVAL '1' SECOND) WITH (connector = 'files')",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("2:22:"), "{err}");
        assert!(err.contains("t - INTERVAL"), "{err}");
    }

    #[test]
    fn option_keys_may_be_dotted_or_quoted_and_are_given_once() {
        let statements = parse_pipeline(
            "CREATE SINK s WITH ('connector' = 'kafka', kafka.security.protocol = 'PLAINTEXT',\n\
             \"kafka.Client.Id\" = x, max = 3)",
        )
        .unwrap();
        let PipelineStatement::CreateSink(sink) = &statements[0].item else {
            panic!("{:?}", statements[0]);
        };
        assert_eq!(sink.options.get("connector"), Some("kafka"));
        assert_eq!(
            sink.options.get("kafka.security.protocol"),
            Some("PLAINTEXT")
        );
        assert_eq!(
            sink.options.position("kafka.security.protocol"),
            Some(Position::new(1, 44))
        );
        assert_eq!(sink.options.get("max"), Some("3"));
        let prefixed: Vec<(&str, &str)> = sink.options.prefixed("kafka.").collect();
        assert_eq!(
            prefixed,
            [("security.protocol", "PLAINTEXT"), ("client.id", "x")]
        );
        sink.options
            .check_known("a sink", &["max"], Some("kafka."))
            .unwrap();
        let err = sink
            .options
            .check_known("a sink", &["max"], None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "1:44: unknown option 'kafka.security.protocol' for a sink (sink s); valid options: \
             connector, output_mode, max"
        );
        let err = parse_pipeline("CREATE SINK s WITH (a = 1,\n  A = 2)")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "2:3: option 'a' is given twice");
    }
}
