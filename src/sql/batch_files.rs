//! The files a stream's directory holds now, for `tidemill batch`: the same
//! files the streaming file source would read.
//!
//! The streaming source ignores every file whose path below the directory
//! has a component starting with `.` or `_` (half-written files, renamed
//! when complete, and sink metadata such as `_tidemill_sink`). DataFusion's
//! listing of a directory reads them all, so a batch job lists the
//! directory itself, applies the same rule, and hands DataFusion the
//! remaining files.

use datafusion::object_store::path::Path;
use datafusion::object_store::{self, ObjectMeta};
use datafusion::prelude::SessionContext;
use tidemill_engine::{Location, TidemillError};

/// Whether a path component hides what is below it.
fn hidden(part: &str) -> bool {
    part.starts_with('.') || part.starts_with('_')
}

/// The URLs of the files under `path` that the streaming file source would
/// read, ordered by (last modified, path) as that source orders new files.
/// A missing directory holds no files.
pub(super) async fn visible_files(
    ctx: &SessionContext,
    path: &str,
) -> Result<Vec<String>, TidemillError> {
    let location = Location::resolve(path, &ctx.runtime_env())?;
    let mut files: Vec<ObjectMeta> = Vec::new();
    // Directories to list, depth first; hidden ones are never entered.
    let mut pending: Vec<Path> = vec![location.path().clone()];
    while let Some(dir) = pending.pop() {
        let listed = match location.store().list_with_delimiter(Some(&dir)).await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => {
                return Err(TidemillError::Config(format!(
                    "cannot list {}: {e}",
                    location.url()
                )));
            }
        };
        for sub in listed.common_prefixes {
            if !sub.filename().is_some_and(hidden) {
                pending.push(sub);
            }
        }
        files.extend(
            listed
                .objects
                .into_iter()
                .filter(|meta| !meta.location.filename().is_some_and(hidden)),
        );
    }
    files.sort_by(|a, b| {
        a.last_modified
            .cmp(&b.last_modified)
            .then_with(|| a.location.as_ref().cmp(b.location.as_ref()))
    });
    Ok(files
        .iter()
        .map(|meta| {
            let mut url = location.url().clone();
            url.set_path(&format!("/{}", meta.location.as_ref()));
            url.to_string()
        })
        .collect())
}
