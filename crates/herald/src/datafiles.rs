//! Herald's data files are private to the user it runs as.
//!
//! `auth.db` holds password hashes and token digests, `webhooks.db` the webhook
//! signing secrets in plain text (a secret must be known to sign with it), and
//! `messages.db` every cached message. Created with the process umask (commonly
//! `022`), they would be readable by every local user. So the data directory is
//! created `0700` and every database `0600` before SQLite opens it; SQLite creates a
//! database's `-wal` and `-shm` files with the database file's permissions, so they
//! follow. Files and directories left readable by older versions are tightened at
//! start (group and other bits removed, with a warning in the log; one herald may
//! not change, say another user's, is only warned about); a directory herald did
//! not create for itself (the parent of an `auth-file` elsewhere, say) is left alone.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of directories herald creates: owner only.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of files herald creates: owner read and write.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Files SQLite keeps next to a database, which hold its data too.
const SQLITE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Creates `dir` (and its missing parents) with [`DIR_MODE`], or tightens an
/// existing `dir` to it.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    match std::fs::metadata(dir) {
        Ok(_) => tighten(dir, DIR_MODE),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir),
        Err(e) => Err(e),
    }
}

/// Prepares `path` for SQLite to open: creates missing parent directories with
/// [`DIR_MODE`] (an existing parent is not changed), creates the database as an
/// empty file with [`FILE_MODE`] if it does not exist (SQLite takes an empty file
/// as a new database), and tightens an existing database and its side files.
pub(crate) fn prepare_database(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(parent)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => tighten(path, FILE_MODE)?,
        Err(e) => return Err(e),
    }
    for suffix in SQLITE_SIDE_FILES {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match tighten(Path::new(&side), FILE_MODE) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// Removes from `path`'s mode whatever `allowed` does not allow (never adds a bit);
/// only a failure to read the mode is an error.
fn tighten(path: &Path, allowed: u32) -> io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    let tight = mode & allowed;
    if tight == mode {
        return Ok(());
    }
    // A file herald may use but not change (another owner's, shared through its
    // group) still works: say so rather than refuse to start.
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(tight)) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            from = format_args!("{mode:04o}"),
            to = format_args!("{tight:04o}"),
            "tightened the permissions of a data file or directory"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:04o}"),
            error = %e,
            "a data file or directory is readable by other users and cannot be made private"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_databases_and_directories_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("a/b/x.db");
        prepare_database(&db).unwrap();
        assert_eq!(mode(&db), FILE_MODE);
        assert_eq!(mode(&tmp.path().join("a")), DIR_MODE);
        assert_eq!(mode(&tmp.path().join("a/b")), DIR_MODE);
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
    }

    #[test]
    fn existing_files_and_directories_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = dir.join("x.db");
        let wal = dir.join("x.db-wal");
        for f in [&db, &wal] {
            std::fs::write(f, b"").unwrap();
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        prepare_database(&db).unwrap();
        // The parent existed: only `private_dir` changes it.
        assert_eq!(mode(&dir), 0o755);
        private_dir(&dir).unwrap();
        assert_eq!((mode(&dir), mode(&db), mode(&wal)), (0o700, 0o600, 0o600));
        // Bits are only removed: a read-only file stays read-only.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
        prepare_database(&db).unwrap();
        assert_eq!(mode(&db), 0o400);
    }
}

/// A small service database (webhooks, Web Push): prepared as above, opened in WAL
/// mode with `synchronous = NORMAL` (a commit survives a process crash) and a 5 s
/// busy timeout, behind one connection that blocking tasks take in turn.
#[derive(Debug, Clone)]
pub(crate) struct ServiceDb(std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>);

impl ServiceDb {
    pub(crate) fn open(path: &Path) -> Result<ServiceDb, String> {
        prepare_database(path).map_err(|e| e.to_string())?;
        let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .and_then(|()| conn.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
            .map_err(|e| e.to_string())?;
        Ok(ServiceDb(std::sync::Arc::new(std::sync::Mutex::new(conn))))
    }

    /// The connection, before the database is shared (schema, migrations).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a blocking thread with the connection.
    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || f(&mut db.lock()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}
