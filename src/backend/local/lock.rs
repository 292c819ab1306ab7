//! The data-dir lock: one `jac-orc serve` per data directory. An exclusive `flock` on
//! `<data-dir>/lock`, which also holds the holder's pid so a second serve can name it. The lock
//! goes with the process (a kill -9 releases it); the file descriptor is close-on-exec, so
//! workloads never inherit it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::error::{Error, Result};

const LOCK_FILE: &str = "lock";

/// Held for as long as this process owns the data dir; dropping it unlocks.
#[derive(Debug)]
pub(super) struct DataDirLock {
    _file: Flock<File>,
}

impl DataDirLock {
    /// Locks `dir` (which must exist) or says who holds it.
    pub(super) fn acquire(dir: &Path) -> Result<DataDirLock> {
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("open", &path))?;
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(Error::Locked { dir: dir.to_path_buf(), pid: holder_pid(&mut file) });
            }
            Err((_, source)) => return Err(Error::Lock { dir: dir.to_path_buf(), source }),
        };
        let mut f: &File = &locked;
        let pid = format!("{}\n", std::process::id());
        f.set_len(0)
            .and_then(|()| f.rewind())
            .and_then(|()| f.write_all(pid.as_bytes()))
            .map_err(Error::io("write", &path))?;
        Ok(DataDirLock { _file: locked })
    }
}

fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_dropping_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        match DataDirLock::acquire(dir.path()) {
            Err(Error::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again");
        assert!(dir.path().join(LOCK_FILE).exists());
    }
}
