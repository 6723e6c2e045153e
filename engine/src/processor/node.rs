//! The logical node of `transform_with_state`.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use datafusion::common::{Column, DFSchema, DFSchemaRef};
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::prelude::DataFrame;

use super::{StatefulProcessor, TimeMode};
use crate::OutputMode;

/// Makes another instance of a processor: a clone of the one given.
pub(crate) type Fork = Arc<dyn Fn() -> Box<dyn StatefulProcessor> + Send + Sync>;

/// A processor shared by the logical plan and the running operator, and
/// how to make more instances of it. Compared by identity.
#[derive(Clone)]
pub(crate) struct ProcessorHandle {
    pub processor: Arc<Mutex<Box<dyn StatefulProcessor>>>,
    pub fork: Fork,
    pub output_schema: SchemaRef,
}

impl ProcessorHandle {
    fn address(&self) -> usize {
        Arc::as_ptr(&self.processor) as *const () as usize
    }
}

impl fmt::Debug for ProcessorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatefulProcessor@{:x}", self.address())
    }
}

impl PartialEq for ProcessorHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.processor, &other.processor)
    }
}

impl Eq for ProcessorHandle {}

impl Hash for ProcessorHandle {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.address().hash(state);
    }
}

impl PartialOrd for ProcessorHandle {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.address().partial_cmp(&other.address())
    }
}

/// A batch DataFrame seeding the state. Compared by identity.
#[derive(Clone)]
pub(crate) struct InitialState(pub Arc<DataFrame>);

impl InitialState {
    fn address(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

impl fmt::Debug for InitialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InitialState@{:x}", self.address())
    }
}

impl PartialEq for InitialState {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for InitialState {}

impl Hash for InitialState {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.address().hash(state);
    }
}

impl PartialOrd for InitialState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.address().partial_cmp(&other.address())
    }
}

/// Runs a [`StatefulProcessor`] per grouping key over a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransformWithStateNode {
    /// The plan below.
    pub input: LogicalPlan,
    /// The grouping key columns.
    pub keys: Vec<Column>,
    pub(crate) processor: ProcessorHandle,
    /// The clock of the processor's timers.
    pub time_mode: TimeMode,
    /// The output mode the processor's rows are meant for.
    pub output_mode: OutputMode,
    pub(crate) initial_state: Option<InitialState>,
    /// The output column that carries the input's event time and its
    /// watermark on to the operators after the processor (Spark's
    /// `eventTimeColumnName`), if the processor declares one.
    pub event_time_column: Option<String>,
    pub(crate) schema: DFSchemaRef,
    /// The query's number for this stateful operator (set when the plan's
    /// operators are numbered; 0 before).
    pub operator: usize,
}

impl TransformWithStateNode {
    /// A node applying `processor` to `input` grouped by `keys`.
    pub(crate) fn try_new(
        input: LogicalPlan,
        keys: Vec<Column>,
        processor: Box<dyn StatefulProcessor>,
        fork: Fork,
        time_mode: TimeMode,
        output_mode: OutputMode,
        initial_state: Option<DataFrame>,
        event_time_column: Option<String>,
    ) -> DFResult<Self> {
        let output_schema = processor.output_schema();
        let schema = Arc::new(DFSchema::try_from(output_schema.as_ref().clone())?);
        Ok(Self {
            input,
            keys,
            processor: ProcessorHandle {
                processor: Arc::new(Mutex::new(processor)),
                fork,
                output_schema,
            },
            time_mode,
            output_mode,
            initial_state: initial_state.map(|df| InitialState(Arc::new(df))),
            event_time_column,
            schema,
            operator: 0,
        })
    }

    /// The node if `plan` is one.
    pub fn of(plan: &LogicalPlan) -> Option<&TransformWithStateNode> {
        match plan {
            LogicalPlan::Extension(Extension { node }) => {
                node.as_any().downcast_ref::<TransformWithStateNode>()
            }
            _ => None,
        }
    }

    /// Wraps the node as a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// The key columns' names.
    pub fn key_names(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.name.clone()).collect()
    }

    /// What the operator is, for `explain` and the checkpoint's record of
    /// the query's operators (its variables are checked by their stores).
    pub fn describe(&self) -> String {
        let mut text = format!(
            "TransformWithState keys [{}] time mode {} output mode {}",
            self.key_names().join(", "),
            self.time_mode,
            self.output_mode
        );
        if let Some(column) = &self.event_time_column {
            text.push_str(&format!(" event time column {column}"));
        }
        text
    }
}

impl PartialOrd for TransformWithStateNode {
    /// By input, keys and processor (the schema follows from the processor).
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (
            &self.input,
            &self.keys,
            &self.processor,
            self.time_mode,
            self.output_mode,
            &self.initial_state,
            &self.event_time_column,
            self.operator,
        )
            .partial_cmp(&(
                &other.input,
                &other.keys,
                &other.processor,
                other.time_mode,
                other.output_mode,
                &other.initial_state,
                &other.event_time_column,
                other.operator,
            ))
    }
}

impl UserDefinedLogicalNodeCore for TransformWithStateNode {
    fn name(&self) -> &str {
        "TransformWithState"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.keys.iter().cloned().map(Expr::Column).collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.describe())
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        let keys = exprs
            .into_iter()
            .map(|e| match e {
                Expr::Column(c) => Ok(c),
                other => datafusion::common::plan_err!(
                    "TransformWithState keys are columns, got {other}"
                ),
            })
            .collect::<DFResult<_>>()?;
        Ok(Self {
            input: inputs.swap_remove(0),
            keys,
            ..self.clone()
        })
    }

    /// Its output columns are the processor's, none of the input's: the
    /// optimizer must not push projections through it.
    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        None
    }
}
