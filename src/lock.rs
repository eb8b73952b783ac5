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
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        match if shared { file.try_lock_shared() } else { file.try_lock() } {
            Ok(()) => Ok(DirLock { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
                "{}: another distill process is writing {what} in this directory (it holds {}); \
                 wait for it to finish or choose another --out",
                dir.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
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
        DirLock::acquire(dir.path(), "", "a cache").unwrap();
        assert!(is_lock_file(".distill.lock") && is_lock_file(".distill.part-0-of-2.lock") && !is_lock_file("shard-00000.parquet"));
    }
}
