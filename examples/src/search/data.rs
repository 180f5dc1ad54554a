//! The data directory, shared by every run that names it: a lock that
//! gives it to one run at a time, and files written whole, under names of
//! their own while they are written.
//!
//! Two runs writing `index.pb` through one temporary name (`index.partial`)
//! could rename each other's half-written file, or find theirs gone; with
//! the lock, runs take turns, and with names of their own, even writers
//! that ignore the lock never share a temporary file.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FlockOperation, flock};

/// The lock file's name in the data directory.
const LOCK_FILE: &str = "lock";

/// The data directory, held by this process until dropped: another run
/// (another process, or another [`DataLock`] in this one) waits for it.
/// An advisory lock (`flock`): the kernel releases it when the process
/// ends, however it ends.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
    dir: PathBuf,
}

impl DataLock {
    /// Takes the lock on `dir` (created if missing), waiting while another
    /// run holds it.
    pub async fn acquire(dir: &Path) -> io::Result<DataLock> {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || DataLock::take(dir, FlockOperation::LockExclusive))
            .await
            .map_err(io::Error::other)??
            .ok_or_else(|| io::Error::other("the lock was not taken"))
    }

    /// Takes the lock on `dir` (created if missing) if no other run holds
    /// it; `None` if one does.
    pub fn try_acquire(dir: &Path) -> io::Result<Option<DataLock>> {
        DataLock::take(dir.to_owned(), FlockOperation::NonBlockingLockExclusive)
    }

    fn take(dir: PathBuf, operation: FlockOperation) -> io::Result<Option<DataLock>> {
        std::fs::create_dir_all(&dir)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match flock(&file, operation) {
            Ok(()) => Ok(Some(DataLock { _file: file, dir })),
            Err(error) if error == rustix::io::Errno::WOULDBLOCK => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The directory it holds.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Writes `bytes` to `path` whole: to a file of its own beside it first,
/// named after this process and a count, then renamed over `path`, so that
/// a reader finds the old file or the new one, never part of one, and no
/// other writer shares the temporary file. It is removed if the write
/// fails.
pub fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    let partial = dir.join(format!(
        ".{}.{}-{}.partial",
        name.to_string_lossy(),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::write(&partial, bytes).and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "workerbus-search-data-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_data_directory_is_held_by_one_lock_at_a_time() {
        let dir = scratch("lock");
        let held = DataLock::try_acquire(&dir).unwrap().expect("a free lock");
        assert_eq!(held.dir(), dir);
        assert!(DataLock::try_acquire(&dir).unwrap().is_none());
        drop(held);
        assert!(DataLock::try_acquire(&dir).unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn acquiring_a_held_lock_waits_for_it() {
        let dir = scratch("wait");
        let held = DataLock::acquire(&dir).await.unwrap();
        let waiting = tokio::spawn({
            let dir = dir.clone();
            async move { DataLock::acquire(&dir).await }
        });
        // Still held: whatever the waiter has done so far, it has no lock.
        assert!(DataLock::try_acquire(&dir).unwrap().is_none());
        drop(held);
        let taken = waiting.await.unwrap().unwrap();
        assert!(DataLock::try_acquire(&dir).unwrap().is_none());
        drop(taken);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_is_written_whole_under_a_temporary_name_no_other_writer_uses() {
        let dir = scratch("whole");
        let path = dir.join("index.pb");
        // What another writer's temporary file at a shared name would be
        // (here a directory, which no write can replace).
        std::fs::create_dir_all(path.with_extension("partial")).unwrap();
        write_whole(&path, b"first").unwrap();
        write_whole(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["index.partial", "index.pb"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
