//! One writer per output directory, for both stages and `merge`: an exclusive advisory lock
//! (`flock` on a `.distill*.lock` file inside the directory), held while the command runs and
//! released when it ends, however it ends. A second writer is refused at once, naming the
//! directory, instead of two runs interleaving their files.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Every lock file's name starts with this (and is hidden), so readers and the stray-file
/// check of a new cache directory can tell it apart from content.
pub const LOCK_PREFIX: &str = ".distill";

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl DirLock {
    /// Lock `dir` (created if missing) for `what` (`a cache`, `a training run`); `name` tells
    /// locks that may be held together apart (the workers of a sharded capture each lock
    /// their own part).
    pub fn acquire(dir: &Path, name: &str, what: &str) -> Result<DirLock> {
        Self::take(dir, name, what, false)
    }

    /// A shared hold on the directory's main lock (`name` ""): many holders at once (the
    /// workers of a sharded capture), none while an exclusive one is held (a whole run,
    /// a merge), and the other way round.
    pub fn acquire_shared(dir: &Path, what: &str) -> Result<DirLock> {
        Self::take(dir, "", what, true)
    }

    fn take(dir: &Path, name: &str, what: &str, shared: bool) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!("{LOCK_PREFIX}{name}.lock"));
        let file = crate::untrusted::open_lock(&path)?;
        match if shared { file.try_lock_shared() } else { file.try_lock() } {
            Ok(()) => Ok(DirLock { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
                "{}: another distill process is writing {what} in this directory, or reading it (it holds {}); \
                 wait for it to finish or choose another --out",
                dir.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}

/// A reader's hold on a cache directory: a shared lock on the cache's own lock file, so a
/// writer (`cache-teacher --overwrite`, `merge`) cannot replace the shards while they are
/// read. `None` where the cache has no lock file (made elsewhere, or copied without it) or
/// it is not a regular file; nothing is created, so a read-only cache can be read.
pub fn read_hold(dir: &Path) -> Result<Option<DirLock>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("{LOCK_PREFIX}.lock"));
    let Ok(file) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC).open(&path)
    else {
        return Ok(None);
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(DirLock { _file: file, path })),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
            "{}: a distill process is writing this cache (it holds {}); wait for it to finish",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// A lock file's name (hidden, `.distill*.lock`).
pub fn is_lock_file(name: &str) -> bool {
    name.starts_with(LOCK_PREFIX) && name.ends_with(".lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock of the same name is refused while the first is held, taken once it is
    /// dropped; another name is independent; shared holds exclude an exclusive one.
    #[test]
    fn one_holder_per_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirLock::acquire(dir.path(), "", "a cache").unwrap();
        let err = DirLock::acquire(dir.path(), "", "a cache").unwrap_err().to_string();
        assert!(err.contains("another distill process is writing a cache"), "{err}");
        let _part = DirLock::acquire(dir.path(), ".part-0-of-2", "a cache").unwrap();
        assert!(DirLock::acquire_shared(dir.path(), "a part").is_err(), "a whole run excludes the parts");
        drop(a);
        let (s1, s2) = (DirLock::acquire_shared(dir.path(), "a part").unwrap(), DirLock::acquire_shared(dir.path(), "a part").unwrap());
        assert!(DirLock::acquire(dir.path(), "", "a cache").is_err(), "running parts exclude a whole run or a merge");
        drop((s1, s2));
        let writer = DirLock::acquire(dir.path(), "", "a cache").unwrap();
        // A reader waits for a writer, and a writer for readers.
        assert!(read_hold(dir.path()).unwrap_err().to_string().contains("a distill process is writing this cache"));
        drop(writer);
        let reader = read_hold(dir.path()).unwrap().expect("the lock file is there");
        assert!(DirLock::acquire(dir.path(), "", "a cache").unwrap_err().to_string().contains("or reading it"));
        drop(reader);
        assert!(read_hold(tempfile::tempdir().unwrap().path()).unwrap().is_none(), "no lock file: nothing to hold");
        assert!(is_lock_file(".distill.lock") && is_lock_file(".distill.part-0-of-2.lock") && !is_lock_file("shard-00000.parquet"));
    }
}
