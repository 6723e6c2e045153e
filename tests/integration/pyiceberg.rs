//! The Python `pyiceberg` package as an independent reader of the Iceberg
//! sink's tables.
//!
//! The first use in a process finds a virtual environment with pyiceberg
//! [`PYICEBERG_VERSION`] (and pyarrow, its `pyarrow` extra) in
//! `<workspace>/target/tools/pyiceberg-<version>`, or creates one with
//! `python3.11 -m venv` (`python3` if there is no 3.11) and installs the
//! package from PyPI with pip (about a minute, once per machine and target
//! directory), holding a file lock so that parallel tests and processes
//! wait for one install instead of racing. A `.installed` file marks a
//! finished install; a directory without it is removed and installed again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The pyiceberg version the tests read with.
pub(crate) const PYICEBERG_VERSION: &str = "0.12.0";

/// Reads the table `StaticTable.from_metadata` finds at its argument (a
/// table directory, through its version hint) and prints, as JSON: its
/// columns `[name, type, required]`, its partition fields `[column,
/// transform]`, its row count, the number of distinct `id`s, and its
/// snapshots in commit order `[operation, query id, batch id, added
/// records]`.
const READER: &str = r#"
import json, sys
from pyiceberg.table import StaticTable
table = StaticTable.from_metadata(sys.argv[1])
schema = table.schema()
rows = table.scan().to_arrow()
snapshots = sorted(table.snapshots(), key=lambda s: s.sequence_number)
print(json.dumps({
    "columns": [[f.name, str(f.field_type), f.required] for f in schema.fields],
    "partition": [[schema.find_field(p.source_id).name, str(p.transform)] for p in table.spec().fields],
    "rows": rows.num_rows,
    "distinct_ids": len(set(rows.column("id").to_pylist())) if "id" in rows.column_names else None,
    "snapshots": [
        [s.summary.operation.value, s.summary["tidemill.query-id"], s.summary["tidemill.batch-id"],
         s.summary["added-records"]]
        for s in snapshots
    ],
}))
"#;

fn installed_python(venv: &Path) -> Option<PathBuf> {
    let python = venv.join("bin").join("python");
    (venv.join(".installed").exists() && python.exists()).then_some(python)
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn find_or_install() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("tools");
    let venv = root.join(format!("pyiceberg-{PYICEBERG_VERSION}"));
    if let Some(python) = installed_python(&venv) {
        return Ok(python);
    }
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    // One install at a time, across test threads and processes.
    let lock_path = root.join(".pyiceberg-install.lock");
    let _lock = tidemill_harness::install_lock(&lock_path)?;
    if let Some(python) = installed_python(&venv) {
        return Ok(python);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).map_err(|e| format!("removing {}: {e}", venv.display()))?;
    }
    let base = ["python3.11", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import venv, ensurepip"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or("no python3.11 or python3 with venv and ensurepip on the PATH")?;
    eprintln!(
        "installing pyiceberg {PYICEBERG_VERSION} into {} for the Iceberg tests (once)",
        venv.display()
    );
    run(
        Command::new(base).args(["-m", "venv"]).arg(&venv),
        "creating the virtual environment",
    )?;
    let python = venv.join("bin").join("python");
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            &format!("pyiceberg[pyarrow]=={PYICEBERG_VERSION}"),
        ]),
        "pip install pyiceberg",
    )?;
    std::fs::write(venv.join(".installed"), PYICEBERG_VERSION)
        .map_err(|e| format!("marking the install: {e}"))?;
    Ok(python)
}

/// The Python of the virtual environment with pyiceberg, installed first
/// if there is none (see the module docs).
pub(crate) fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(find_or_install)
        .clone()
        .unwrap_or_else(|e| panic!("cannot provide pyiceberg: {e}"))
}

/// The Iceberg table in `dir` as pyiceberg reads it (see [`READER`]).
pub(crate) fn read(dir: &Path) -> serde_json::Value {
    let output = Command::new(python())
        .args(["-c", READER])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running pyiceberg");
    assert!(
        output.status.success(),
        "pyiceberg could not read {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("pyiceberg's JSON")
}
