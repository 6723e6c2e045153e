//! Installing a test server's binary from crates.io with `cargo install`,
//! once per target directory: the Kafka broker (Tansu) and the Iceberg REST
//! catalog (Rustberg) come this way.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A binary `cargo install`ed into a directory of `target/tools` on first
/// use.
pub(crate) struct CargoTool<'a> {
    /// The crate and version, as `cargo install` takes them:
    /// `tansu@0.6.0`.
    pub spec: &'a str,
    /// The arguments after the spec: `--locked`, the features.
    pub args: &'a [&'a str],
    /// The `--root` the binary is installed under (`<root>/bin/<binary>`).
    pub root: PathBuf,
    /// The binary's file name.
    pub binary: &'a str,
    /// The directory of the install's lock file (`.<stem>-install.lock`)
    /// and log (`<stem>-install.log`).
    pub state_dir: PathBuf,
    /// The lock and log files' stem.
    pub stem: &'a str,
    /// Who needs the tool and how long installing it takes, for the
    /// message printed when the install starts: `for the Kafka tests (about
    /// 12 minutes on 2 cores, once)`.
    pub purpose: &'a str,
    /// How long the install may take.
    pub timeout: Duration,
    /// The `cargo` to run (`$CARGO` when the harness runs under cargo).
    pub cargo: String,
}

impl CargoTool<'_> {
    /// `$CARGO`, else `cargo` on the `PATH`.
    pub(crate) fn default_cargo() -> String {
        std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
    }

    /// The installed binary, if `wanted` accepts it, else the one this
    /// installs: one install at a time across test threads and processes
    /// (a file lock; whoever waited finds the binary installed), with its
    /// output in the log and a bound on its time. An error names the log.
    pub(crate) fn find_or_install(
        &self,
        wanted: impl Fn(&Path) -> bool,
    ) -> Result<PathBuf, String> {
        let bin = self.root.join("bin").join(self.binary);
        if wanted(&bin) {
            return Ok(bin);
        }
        let dir = &self.state_dir;
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let lock_path = dir.join(format!(".{}-install.lock", self.stem));
        let _lock = crate::install_lock(&lock_path)?;
        if wanted(&bin) {
            return Ok(bin);
        }
        let log_path = dir.join(format!("{}-install.log", self.stem));
        let command = format!("cargo install {} {}", self.spec, self.args.join(" "));
        eprintln!(
            "installing {} into {} {}; log: {}",
            self.spec,
            self.root.display(),
            self.purpose,
            log_path.display()
        );
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut child = Command::new(&self.cargo)
            .arg("install")
            .arg(self.spec)
            .args(self.args)
            .arg("--root")
            .arg(&self.root)
            // Build in cargo's own temporary directory, not a shared target
            // directory a running `cargo test` may hold.
            .env_remove("CARGO_TARGET_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("running {command}: {e}"))?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{command} did not finish in {:?}; see {}",
                    self.timeout,
                    log_path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        if !status.success() || !wanted(&bin) {
            return Err(format!(
                "{command} failed ({status}); see {}",
                log_path.display()
            ));
        }
        eprintln!("installed {} in {:?}", self.spec, started.elapsed());
        Ok(bin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `cargo` that "installs" a binary printing `tool 1.0`
    /// under its `--root` (the real installs run in the Kafka and REST
    /// catalog tests, against crates.io).
    fn fake_cargo(dir: &Path, succeed: bool) -> String {
        let script = dir.join("fake-cargo");
        let body = if succeed {
            "root=''\nwhile [ $# -gt 0 ]; do [ \"$1\" = --root ] && root=$2; shift; done\n\
             mkdir -p \"$root/bin\"\nprintf '#!/bin/sh\\necho tool 1.0\\n' > \"$root/bin/tool\"\n\
             chmod +x \"$root/bin/tool\"\necho \"$(date +%s%N)\" >> \"$root/installs\"\n"
        } else {
            "echo 'no such crate' >&2\nexit 101\n"
        };
        std::fs::write(&script, format!("#!/bin/sh\n{body}")).unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        script.display().to_string()
    }

    fn wanted(bin: &Path) -> bool {
        Command::new(bin)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "tool 1.0")
    }

    fn tool(dir: &Path, cargo: String) -> CargoTool<'static> {
        CargoTool {
            spec: "tool@1.0",
            args: &["--locked"],
            root: dir.join("root"),
            binary: "tool",
            state_dir: dir.to_path_buf(),
            stem: "tool",
            purpose: "for a unit test",
            timeout: Duration::from_secs(60),
            cargo,
        }
    }

    #[test]
    fn installs_once_across_threads_then_finds_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let cargo = fake_cargo(dir.path(), true);
        let bins: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let cargo = cargo.clone();
                    let dir = dir.path();
                    s.spawn(move || tool(dir, cargo).find_or_install(wanted).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let expected = dir.path().join("root/bin/tool");
        assert!(bins.iter().all(|b| *b == expected), "{bins:?}");
        let installs = std::fs::read_to_string(dir.path().join("root/installs")).unwrap();
        assert_eq!(installs.lines().count(), 1, "one install for four callers");
        assert!(dir.path().join("tool-install.log").exists());
    }

    #[test]
    fn a_failed_install_names_the_command_and_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let error = tool(dir.path(), fake_cargo(dir.path(), false))
            .find_or_install(wanted)
            .unwrap_err();
        assert!(
            error.contains("cargo install tool@1.0 --locked failed"),
            "{error}"
        );
        assert!(error.contains("tool-install.log"), "{error}");
        let log = std::fs::read_to_string(dir.path().join("tool-install.log")).unwrap();
        assert!(log.contains("no such crate"), "{log}");
    }
}
