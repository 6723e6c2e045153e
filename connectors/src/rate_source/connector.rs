//! `connector = 'rate'` in a pipeline's `CREATE STREAM`: the options of a
//! [`RateSource`].

use std::sync::Arc;

use tidemill_engine::Source;

use super::RateSource;
use crate::registry::{OptionError, StreamConnector, StreamDeclaration};

/// Makes a [`RateSource`] from `rows_per_second` (required) and
/// `max_rows_per_trigger`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateConnector;

impl StreamConnector for RateConnector {
    fn source(&self, stream: &StreamDeclaration) -> Result<Arc<dyn Source>, OptionError> {
        let options = &stream.options;
        options.check_known(
            "a rate stream",
            &["rows_per_second", "max_rows_per_trigger"],
            None,
        )?;
        let rows_per_second = options.number("rows_per_second")?.ok_or_else(|| {
            options.error_at_declaration(format!(
                "{} needs the option 'rows_per_second'",
                options.subject()
            ))
        })?;
        let mut source = RateSource::new(rows_per_second);
        if let Some(n) = options.number("max_rows_per_trigger")? {
            source = source.max_rows_per_trigger(n);
        }
        Ok(Arc::new(source))
    }
}
