//! What the figures were measured on: the machine, its load, the process's
//! CPU time and memory.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The machine a benchmark ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical cores available to the process.
    pub cores: usize,
    /// Total memory in GiB.
    pub memory_gib: f64,
    /// The CPU model (`/proc/cpuinfo`), if known.
    pub cpu: String,
    /// Operating system and architecture.
    pub os: String,
    /// The load average (1, 5, 15 minutes) when the description was taken.
    pub load_average: [f64; 3],
}

impl Machine {
    /// Describes this machine now.
    pub fn current() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
            .unwrap_or(0.0);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores,
            memory_gib,
            cpu,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            load_average: load_average(),
        }
    }

    /// One line: cores, memory, CPU, OS, load.
    pub fn summary(&self) -> String {
        format!(
            "{} cores, {:.0} GiB, {}, {}, load average {:.2} {:.2} {:.2}",
            self.cores,
            self.memory_gib,
            self.cpu,
            self.os,
            self.load_average[0],
            self.load_average[1],
            self.load_average[2]
        )
    }
}

/// The load average (1, 5, 15 minutes) from `/proc/loadavg`; zeros where
/// unavailable.
pub fn load_average() -> [f64; 3] {
    let mut out = [0.0; 3];
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        for (slot, v) in out.iter_mut().zip(text.split_whitespace()) {
            *slot = v.parse().unwrap_or(0.0);
        }
    }
    out
}

/// CPU time (user + system) the process has used so far, from
/// `getrusage(RUSAGE_SELF)`.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A `/proc/self/status` figure in MiB (`VmHWM`: peak RSS, `VmRSS`: now).
pub fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Flushes the file system's pending writes (`sync`), so that a timed run
/// does not share the disk with the writeback of files written before it.
/// Best effort: where `sync` is missing, nothing happens.
pub fn flush_file_writes() {
    let _ = std::process::Command::new("sync").status();
}
