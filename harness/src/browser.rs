//! A real headless browser for the tests of Tidemill's web page: Chromium
//! from the Debian packages, run once per call on a URL of 127.0.0.1,
//! printing the page's DOM after its scripts ran ([`Chromium::dump_dom`])
//! or saving a screenshot of it ([`Chromium::screenshot`]).
//!
//! **Installing Chromium.** The first use in a process finds Chromium:
//! `$CHROMIUM_BIN` if set, else `/usr/bin/chromium`. If there is none it
//! runs `apt-get install -y chromium` (after `apt-get update` if that
//! fails, as it does on a machine whose package lists were never
//! fetched), as root, holding a file lock in the temporary directory so
//! that parallel tests and processes on the machine wait for one install
//! instead of racing; the install's output goes to
//! `<workspace>/target/tools/chromium-install.log`. Where that is
//! impossible (not root, no network), the error says what to install.
//!
//! **Running it.** Each call starts Chromium headless in a fresh profile
//! (a temporary directory, removed afterwards) with the flags a container
//! without a display or GPU needs, in a process group of its own that is
//! killed when the call returns, so no browser process outlives it.
//! Scripts run on *virtual time*: `wait` is how much page time passes
//! (timers fire at once, fetches are waited for) before the DOM is dumped
//! or the screenshot taken, so a page that polls every second shows its
//! second refresh after a `wait` of 1.5 s without the test sleeping.
//!
//! Besides the standard library it uses only `tempfile` and `libc`.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::results::workspace_root;

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM_PATH: &str = "/usr/bin/chromium";
/// How long installing Chromium (about 100 MB of packages) may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// How long one run may take beyond the page's virtual time.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The flags of every run: headless, no sandbox (the tests run as root
/// in a container), no GPU, nothing fetched from the network but the page.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--hide-scrollbars",
    "--mute-audio",
    "--force-device-scale-factor=1",
];

/// A headless Chromium (see the module docs).
#[derive(Debug, Clone)]
pub struct Chromium {
    binary: PathBuf,
}

impl Chromium {
    /// Chromium, installed first if there is none (see the module docs);
    /// the error says why it cannot be had.
    pub fn get() -> Result<Self, String> {
        static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        BINARY
            .get_or_init(find_or_install)
            .clone()
            .map(|binary| Self { binary })
    }

    /// The browser's executable.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The browser's version, as `chromium --version` prints it.
    pub fn version(&self) -> Option<String> {
        version_of(&self.binary)
    }

    /// The DOM of the page at `url` (serialized as HTML) after `wait` of
    /// page time (see the module docs).
    pub fn dump_dom(&self, url: &str, wait: Duration) -> Result<String, String> {
        let out = self.run(url, wait, &["--dump-dom".to_string()])?;
        if out.trim().is_empty() {
            return Err(format!("chromium dumped no DOM for {url}"));
        }
        Ok(out)
    }

    /// Saves a PNG screenshot of the page at `url`, in a window of
    /// `width` × `height` CSS pixels, to `path` after `wait` of page time.
    pub fn screenshot(
        &self,
        url: &str,
        path: &Path,
        (width, height): (u32, u32),
        wait: Duration,
    ) -> Result<(), String> {
        let path = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let _ = std::fs::remove_file(&path);
        self.run(
            url,
            wait,
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={width},{height}"),
            ],
        )?;
        let png = std::fs::read(&path)
            .map_err(|e| format!("chromium wrote no screenshot {}: {e}", path.display()))?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            return Err(format!("{} is not a PNG", path.display()));
        }
        Ok(())
    }

    /// Runs Chromium on `url` with `extra` flags and returns its standard
    /// output; its process group is killed before returning.
    fn run(&self, url: &str, wait: Duration, extra: &[String]) -> Result<String, String> {
        let profile = tempfile::Builder::new()
            .prefix("chromium-profile-")
            .tempdir()
            .map_err(|e| format!("a temporary profile directory: {e}"))?;
        let mut stderr_file =
            tempfile::tempfile().map_err(|e| format!("a temporary file for stderr: {e}"))?;
        let mut stdout_file =
            tempfile::tempfile().map_err(|e| format!("a temporary file for stdout: {e}"))?;
        let mut child = Command::new(&self.binary)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--virtual-time-budget={}", wait.as_millis()))
            .args(extra)
            .arg(url)
            .env("HOME", profile.path())
            .stdin(Stdio::null())
            .stdout(stdout_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(stderr_file.try_clone().map_err(|e| e.to_string())?)
            // A group of its own: the renderer and helper processes are
            // killed with the browser.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        let group = child.id() as libc::pid_t;
        let kill_group = || {
            // SAFETY: signals only the process group this call started.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        };
        // Whether the browser exited, without reaping it: until it is
        // reaped its id cannot be reused, so the group kill below reaches
        // only what it started.
        let exited = || {
            // SAFETY: a zeroed siginfo_t is valid; waitid only writes it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waits (without blocking or reaping) on our own child.
            let found = unsafe {
                libc::waitid(
                    libc::P_PID,
                    group as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            // SAFETY: si_pid is set when waitid found an exited child.
            found == 0 && unsafe { info.si_pid() } != 0
        };
        let deadline = Instant::now() + wait + RUN_TIMEOUT;
        while !exited() {
            if Instant::now() > deadline {
                kill_group();
                let _ = child.wait();
                return Err(format!(
                    "chromium did not finish on {url} in {:?}",
                    wait + RUN_TIMEOUT
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Helpers the browser left behind go with it.
        kill_group();
        let status = child
            .wait()
            .map_err(|e| format!("waiting for chromium: {e}"))?;
        let read = |file: &mut std::fs::File| {
            use std::io::Seek as _;
            let mut text = String::new();
            let _ = file.seek(std::io::SeekFrom::Start(0));
            let _ = file.read_to_string(&mut text);
            text
        };
        let stdout = read(&mut stdout_file);
        if !status.success() {
            let stderr = read(&mut stderr_file);
            return Err(format!(
                "chromium on {url} failed ({status}):\n{}",
                stderr.trim()
            ));
        }
        Ok(stdout)
    }
}

fn version_of(binary: &Path) -> Option<String> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Ok(bin) = std::env::var("CHROMIUM_BIN") {
        let bin = PathBuf::from(bin);
        return match version_of(&bin) {
            Some(_) => Ok(bin),
            None => Err(format!(
                "CHROMIUM_BIN={} does not run (`--version` failed)",
                bin.display()
            )),
        };
    }
    let bin = PathBuf::from(CHROMIUM_PATH);
    if version_of(&bin).is_some() {
        return Ok(bin);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "{CHROMIUM_PATH} is missing and only root can install it: run \
             `sudo apt-get install -y chromium`, or set CHROMIUM_BIN to a Chromium or Chrome"
        ));
    }
    // One install at a time on the machine, across test threads,
    // processes and checkouts.
    let lock_path = std::env::temp_dir().join("tidemill-chromium-install.lock");
    let _lock = crate::install_lock(&lock_path)?;
    if version_of(&bin).is_some() {
        return Ok(bin);
    }
    let tools = workspace_root().join("target").join("tools");
    std::fs::create_dir_all(&tools).map_err(|e| format!("creating {}: {e}", tools.display()))?;
    let log_path = tools.join("chromium-install.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    eprintln!(
        "installing chromium with apt-get for the web page tests (once per machine); log: {}",
        log_path.display()
    );
    let started = Instant::now();
    let apt = |args: &[&str]| -> Result<bool, String> {
        let mut child = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log.try_clone().map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("running apt-get (is this Debian?): {e}"))?;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status.success());
            }
            if started.elapsed() > INSTALL_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "apt-get {} did not finish in {INSTALL_TIMEOUT:?}; see {}",
                    args.join(" "),
                    log_path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let install = ["install", "-y", "chromium"];
    // Without package lists (a fresh machine) the install fails: fetch
    // them and try again.
    let installed = apt(&install)? || (apt(&["update"])? && apt(&install)?);
    if !installed || version_of(&bin).is_none() {
        return Err(format!(
            "`apt-get install -y chromium` failed, and the web page tests need Chromium at \
             {CHROMIUM_PATH} (or CHROMIUM_BIN); see {}",
            log_path.display()
        ));
    }
    eprintln!("installed chromium in {:?}", started.elapsed());
    Ok(bin)
}
