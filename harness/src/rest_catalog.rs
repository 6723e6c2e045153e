//! A real Apache Iceberg REST catalog server for Tidemill's Iceberg tests:
//! [Rustberg](https://crates.io/crates/rustberg) 0.3.0 (an Iceberg REST
//! catalog written in Rust, from crates.io), started on a free port of
//! 127.0.0.1 in a temporary directory, stopped when dropped.
//!
//! The server keeps its catalog in an embedded database file in that
//! directory (`catalog/`) and the tables it creates under the warehouse
//! `file://<dir>/warehouse`, so the tables are on local disk, where the
//! Iceberg sink writes its data files. It runs in Rustberg's development
//! mode without authentication (`--dev --no-auth --insecure-http`): every
//! request is allowed. It implements the REST catalog's commit itself:
//! a commit whose requirements (`assert-ref-snapshot-id`, …) no longer hold
//! answers `409 Conflict`.
//!
//! **Installing Rustberg.** The first use in a process finds
//! `<workspace>/target/tools/rustberg-0.3.0/bin/rustberg`; if there is none
//! it runs `cargo install rustberg@0.3.0 --locked --no-default-features
//! --features cli --root <workspace>/target/tools/rustberg-0.3.0` (no
//! object-store or TLS support: the tests' warehouses are local; about 15
//! minutes on 2 cores, once per machine and target directory), holding a
//! file lock so that parallel tests and processes wait for one install
//! instead of racing. `$RUSTBERG_BIN` names another Rustberg 0.3.0
//! binary. The log is `target/tools/rustberg-install.log`.
//!
//! Besides the standard library it uses only `tempfile`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::cargo_install::CargoTool;
use crate::results::workspace_root;
use crate::{free_port, http_request};

/// The Rustberg version the fixture runs.
pub const RUSTBERG_VERSION: &str = "0.3.0";
/// How long installing Rustberg may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(45 * 60);

fn is_wanted(binary: &Path) -> bool {
    let Ok(output) = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    else {
        return false;
    };
    output.status.success()
        && String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .any(|w| w == RUSTBERG_VERSION)
}

/// The `rustberg` 0.3.0 binary, installed into `<workspace>/target/tools`
/// first if there is none (see the module docs).
pub fn rustberg_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(find_or_install)
        .clone()
        .unwrap_or_else(|e| panic!("cannot provide the Iceberg REST catalog (rustberg): {e}"))
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Ok(bin) = std::env::var("RUSTBERG_BIN") {
        let bin = PathBuf::from(bin);
        return if is_wanted(&bin) {
            Ok(bin)
        } else {
            Err(format!(
                "RUSTBERG_BIN={} is not rustberg {RUSTBERG_VERSION}",
                bin.display()
            ))
        };
    }
    let root = workspace_root().join("target").join("tools");
    let install_root = root.join(format!("rustberg-{RUSTBERG_VERSION}"));
    CargoTool {
        spec: &format!("rustberg@{RUSTBERG_VERSION}"),
        args: &["--locked", "--no-default-features", "--features", "cli"],
        root: install_root,
        binary: "rustberg",
        state_dir: root,
        stem: "rustberg",
        purpose: "for the Iceberg REST catalog tests (about 15 minutes on 2 cores, once)",
        timeout: INSTALL_TIMEOUT,
        cargo: CargoTool::default_cargo(),
    }
    .find_or_install(is_wanted)
}

/// A running Iceberg REST catalog (Rustberg) on 127.0.0.1, stopped on
/// drop; its catalog and warehouse are in a temporary directory removed
/// then.
pub struct RestCatalogServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    binary: PathBuf,
}

impl RestCatalogServer {
    /// Starts a server on a free port with an empty catalog and waits
    /// until it answers `GET /v1/config`.
    pub fn start() -> Self {
        let binary = rustberg_binary();
        let dir = tempfile::Builder::new()
            .prefix("rustberg-")
            .tempdir()
            .expect("temporary directory");
        std::fs::create_dir_all(dir.path().join("catalog")).expect("catalog directory");
        std::fs::create_dir_all(dir.path().join("warehouse")).expect("warehouse directory");
        let mut server = Self {
            port: 0,
            dir,
            child: None,
            binary,
        };
        server.launch();
        server
    }

    /// Starts the server process (again, after [`RestCatalogServer::stop`]:
    /// the catalog it kept in its directory is still there, and so is its
    /// URL: it listens on the port it had, which must be free) on a free
    /// port.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "the server runs already");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .expect("server log");
            let mut child = Command::new(&self.binary)
                .args([
                    "--dev",
                    "--no-auth",
                    "--insecure-http",
                    "--host",
                    "127.0.0.1",
                ])
                .arg("--port")
                .arg(port.to_string())
                .arg("--catalog-url")
                .arg(format!(
                    "file://{}",
                    self.dir.path().join("catalog").display()
                ))
                .arg("--warehouse")
                .arg(self.warehouse_url())
                .arg("--log-level")
                .arg("info")
                // Its configuration files are looked for in the current
                // directory (and /etc/rustberg): none here.
                .current_dir(self.dir.path())
                .env_remove("RUST_LOG")
                .env_remove("RUSTBERG_CONFIG")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
            let started = Instant::now();
            let mut up = false;
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port may have been taken meanwhile
                }
                if http_request(port, "GET", "/v1/config", &[], Duration::from_secs(10))
                    .is_ok_and(|(status, _)| status == 200)
                {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if up {
                self.port = port;
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!("rustberg did not start on 127.0.0.1; its log:\n{log}");
            }
        }
    }

    /// The catalog's URL, `http://127.0.0.1:<port>` (the `catalog_uri` of
    /// an Iceberg sink, the `uri` of pyiceberg's `RestCatalog`).
    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory under which the catalog creates its tables.
    pub fn warehouse(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }

    /// The warehouse as the URL the catalog was given.
    pub fn warehouse_url(&self) -> String {
        format!("file://{}", self.warehouse().display())
    }

    /// The server's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("rustberg.log")
    }

    /// Stops the server (SIGKILL); the catalog in its directory stays, for
    /// [`RestCatalogServer::launch`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RestCatalogServer {
    fn drop(&mut self) {
        self.stop();
    }
}
