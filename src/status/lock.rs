//! Whether a run holds a checkpoint, found without touching its lock.
//!
//! A running query holds an OS lock (`flock`) on `<checkpoint>/lock`.
//! Trying to take it, even shared and briefly, could make a query that is
//! starting at that moment refuse the checkpoint; so the lock is not
//! tried. On Linux the kernel lists the locks held in `/proc/locks` by
//! device and inode, with the holder's process id; elsewhere the state is
//! unknown.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Whether a run holds a query's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LockState {
    /// A process holds the lock: the query is running.
    Held {
        /// The process holding it, as the kernel lists it.
        pid: Option<u32>,
    },
    /// Nobody holds it: the query is not running.
    Free,
    /// It cannot be told (not Linux, or `/proc/locks` is unreadable).
    Unknown,
}

/// The lock state of the checkpoint in `dir`.
pub(super) fn state(dir: &Path) -> LockState {
    let meta = match std::fs::metadata(dir.join("lock")) {
        Ok(meta) => meta,
        // No lock file: no run ever locked it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LockState::Free,
        Err(_) => return LockState::Unknown,
    };
    held(&meta)
}

#[cfg(target_os = "linux")]
fn held(meta: &std::fs::Metadata) -> LockState {
    use std::os::unix::fs::MetadataExt;
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return LockState::Unknown;
    };
    let dev = meta.dev();
    // The kernel's encoding of a device number.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    match holder(&locks, major, minor, meta.ino()) {
        Some(pid) => LockState::Held { pid },
        None => LockState::Free,
    }
}

#[cfg(not(target_os = "linux"))]
fn held(_meta: &std::fs::Metadata) -> LockState {
    LockState::Unknown
}

/// The holder of a lock on the file `major:minor:inode` in `/proc/locks`'
/// text: `Some(pid)` if one is held (`Some(None)` if its pid is not
/// shown), `None` if none is.
///
/// A line reads `1: FLOCK  ADVISORY  WRITE 13569 fe:00:10011744 0 EOF`;
/// a process waiting for a lock has `->` after the number.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn holder(locks: &str, major: u64, minor: u64, inode: u64) -> Option<Option<u32>> {
    for line in locks.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&"->") {
            continue;
        }
        let Some(at) = fields.iter().position(|f| f.matches(':').count() == 2) else {
            continue;
        };
        let mut parts = fields[at].split(':');
        let (Some(maj), Some(min), Some(ino)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let matches = u64::from_str_radix(maj, 16) == Ok(major)
            && u64::from_str_radix(min, 16) == Ok(minor)
            && ino.parse::<u64>() == Ok(inode);
        if matches {
            let pid = at
                .checked_sub(1)
                .and_then(|i| fields[i].parse::<u32>().ok());
            return Some(pid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_holder_of_an_inode() {
        let locks = "1: FLOCK  ADVISORY  WRITE 13569 fe:00:10011744 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 200 fe:00:77 0 EOF\n\
                     3: POSIX  ADVISORY  READ 12832 08:01:77 0 EOF\n";
        assert_eq!(holder(locks, 0xfe, 0, 10011744), Some(Some(13569)));
        assert_eq!(holder(locks, 0xfe, 0, 77), None);
        assert_eq!(holder(locks, 8, 1, 77), Some(Some(12832)));
        assert_eq!(holder(locks, 8, 1, 78), None);
    }
}
