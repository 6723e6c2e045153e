//! A real S3-compatible server for Tidemill's object storage tests:
//! [moto](https://pypi.org/project/moto/)'s standalone server (`moto[server]`
//! 5.2.1, from PyPI), started on a free port of 127.0.0.1, stopped when
//! dropped. Its objects live in the server's memory: each [`S3Server`] starts
//! empty.
//!
//! moto's S3 honours the conditional puts Tidemill's writes rely on
//! (checked before building on it, and by the tests): `If-None-Match: *`
//! on an existing key answers 412 (object_store's `PutMode::Create` →
//! `AlreadyExists`), `If-Match` with a stale e-tag answers 412
//! (`PutMode::Update` → `Precondition`), and with the current e-tag
//! replaces the object. A missing bucket answers `NoSuchBucket`, and
//! requests are checked for a signature by a configured key (any key
//! works; an unsigned request to a bucket is refused).
//!
//! **Installing moto.** The first use in a process finds a Python
//! environment with moto 5.2.1 in `<workspace>/target/tools/moto-5.2.1`; if
//! there is none it makes one: `python3 -m venv` there and `pip install
//! moto[server]==5.2.1` into it (about 30 seconds with PyPI at hand,
//! once per target directory), or, where the venv module is missing
//! (Debian's python3 without python3-venv), `pip install --target` into
//! `<dir>/lib`, run with `PYTHONPATH`. A file lock makes parallel tests and
//! processes wait for one install instead of racing; the log is
//! `target/tools/moto-install.log`. `$TIDEMILL_PYTHON` names another
//! Python 3 to build it with.
//!
//! Besides the standard library it uses only `tempfile`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::results::workspace_root;
use crate::{free_port, http_request};

/// The moto version the fixture runs.
pub const MOTO_VERSION: &str = "5.2.1";
/// The access key id the fixture's clients sign with (moto accepts any).
pub const ACCESS_KEY_ID: &str = "tidemill-test";
/// The secret access key the fixture's clients sign with.
pub const SECRET_ACCESS_KEY: &str = "tidemill-test-secret";
/// The region the fixture's clients name.
pub const REGION: &str = "us-east-1";
/// How long installing moto may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How to run the installed moto: a Python interpreter, and the
/// `PYTHONPATH` it needs (for an install without a venv).
#[derive(Debug, Clone)]
pub struct MotoPython {
    /// The interpreter.
    pub python: PathBuf,
    /// The directory moto was installed into with `pip install --target`.
    pub python_path: Option<PathBuf>,
}

impl MotoPython {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        if let Some(path) = &self.python_path {
            cmd.env("PYTHONPATH", path);
        }
        cmd
    }

    /// Whether this Python runs moto 5.2.1 with its server's
    /// dependencies, from the install directory when it has one (not a
    /// moto the system's Python happens to have).
    fn is_wanted(&self) -> bool {
        let Ok(output) = self
            .command()
            .args([
                "-c",
                "import moto, flask, flask_cors; print(moto.__version__); print(moto.__file__)",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            return false;
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        let (Some(version), Some(file)) = (lines.next(), lines.next()) else {
            return false;
        };
        output.status.success()
            && version.trim() == MOTO_VERSION
            && self
                .python_path
                .as_ref()
                .is_none_or(|dir| Path::new(file.trim()).starts_with(dir))
    }
}

/// The Python environment with moto 5.2.1, installed into
/// `<workspace>/target/tools` first if there is none (see the module docs).
pub fn moto_python() -> MotoPython {
    static PYTHON: OnceLock<Result<MotoPython, String>> = OnceLock::new();
    PYTHON
        .get_or_init(find_or_install)
        .clone()
        .unwrap_or_else(|e| panic!("cannot provide the S3 server (moto): {e}"))
}

fn find_or_install() -> Result<MotoPython, String> {
    let root = workspace_root().join("target").join("tools");
    let dir = root.join(format!("moto-{MOTO_VERSION}"));
    let venv = MotoPython {
        python: dir.join("venv").join("bin").join("python"),
        python_path: None,
    };
    let system = std::env::var("TIDEMILL_PYTHON").unwrap_or_else(|_| "python3".into());
    let target = MotoPython {
        python: PathBuf::from(&system),
        python_path: Some(dir.join("lib")),
    };
    if venv.is_wanted() {
        return Ok(venv);
    }
    if target.is_wanted() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // One install at a time, across test threads and processes.
    let lock_path = root.join(".moto-install.lock");
    let _lock = crate::install_lock(&lock_path)?;
    if venv.is_wanted() {
        return Ok(venv);
    }
    if target.is_wanted() {
        return Ok(target);
    }
    let log_path = root.join("moto-install.log");
    eprintln!(
        "installing moto[server] {MOTO_VERSION} into {} for the S3 tests (about 30 seconds, \
         once); log: {}",
        dir.display(),
        log_path.display()
    );
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let started = Instant::now();
    let requirement = format!("moto[server]=={MOTO_VERSION}");
    let venv_dir = dir.join("venv");
    let _ = std::fs::remove_dir_all(&venv_dir);
    let made_venv = run_logged(
        Command::new(&system).args(["-m", "venv"]).arg(&venv_dir),
        &log,
        started,
    )?;
    let installed = if made_venv {
        run_logged(
            Command::new(&venv.python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg(&requirement),
            &log,
            started,
        )? && venv.is_wanted()
    } else {
        false
    };
    let chosen = if installed {
        venv
    } else {
        // No venv module (or its pip failed): a plain target directory.
        let _ = std::fs::remove_dir_all(&venv_dir);
        let ok = run_logged(
            Command::new(&system)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--target",
                ])
                .arg(dir.join("lib"))
                .arg(&requirement),
            &log,
            started,
        )?;
        if !ok || !target.is_wanted() {
            return Err(format!(
                "pip install {requirement} failed (with {system} -m venv and with pip install \
                 --target); see {}",
                log_path.display()
            ));
        }
        target
    };
    eprintln!("installed moto {MOTO_VERSION} in {:?}", started.elapsed());
    Ok(chosen)
}

/// Runs `command` with its output appended to `log`; whether it succeeded.
/// Fails if the install has taken longer than [`INSTALL_TIMEOUT`].
fn run_logged(
    command: &mut Command,
    log: &std::fs::File,
    started: Instant,
) -> Result<bool, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log.try_clone().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status.success());
        }
        if started.elapsed() > INSTALL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "installing moto did not finish in {INSTALL_TIMEOUT:?} ({command:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running moto S3 server on 127.0.0.1, stopped on drop.
pub struct S3Server {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Self {
        let python = moto_python();
        let dir = tempfile::Builder::new()
            .prefix("moto-")
            .tempdir()
            .expect("temporary directory");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let port = free_port();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("moto.log"))
                .expect("server log");
            let mut child = python
                .command()
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting moto with {}: {e}", python.python.display()));
            let started = Instant::now();
            let mut up = false;
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port may have been taken meanwhile
                }
                if http_request(port, "GET", "/", &[], Duration::from_secs(30))
                    .is_ok_and(|(status, _)| status > 0)
                {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if up {
                return Self {
                    port,
                    dir,
                    child: Some(child),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default();
                panic!("moto did not start on 127.0.0.1; its log:\n{log}");
            }
        }
    }

    /// The server's URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's working directory (its log, `moto.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates the bucket `name` (3 to 63 lower-case letters, digits,
    /// dots and hyphens).
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = http_request(
            self.port,
            "PUT",
            &format!("/{name}"),
            &[],
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("creating bucket {name}: {e}"));
        assert!(
            status == 200,
            "creating bucket {name}: HTTP {status}: {body}"
        );
    }

    /// The environment variables that point object_store's
    /// `AmazonS3Builder::from_env()` (and so a `tidemill` process, or this
    /// test binary run as a child) at this server with the fixture's
    /// credentials.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The same settings as connector options (`aws_*`, see
    /// `tidemill_engine::storage`).
    pub fn options(&self) -> Vec<(&'static str, String)> {
        self.env()
            .into_iter()
            .map(|(k, v)| {
                let key = match k {
                    "AWS_ACCESS_KEY_ID" => "aws_access_key_id",
                    "AWS_SECRET_ACCESS_KEY" => "aws_secret_access_key",
                    "AWS_REGION" => "aws_region",
                    "AWS_ENDPOINT_URL" => "aws_endpoint",
                    _ => "aws_allow_http",
                };
                (key, v)
            })
            .collect()
    }

    /// Stops the server (SIGKILL); its objects are gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
