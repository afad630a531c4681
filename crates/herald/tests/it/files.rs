//! herald's data files are private to its user (issue #11, finding 5): the data
//! directory, the databases and SQLite's side files, wherever they are configured.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::auth::cli;
use crate::fixture::TestServer;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Sets `path`'s mode if it exists (SQLite removes `-wal` files on a clean close).
fn set_mode(path: &Path, mode: u32) {
    if path.exists() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// The data directory is 0700 and every database herald writes (SQLite's `-wal`
/// and `-shm` files included) 0600, wherever the files are configured to be; files
/// from older versions are tightened at start.
#[tokio::test]
async fn data_files_are_private_to_herald() {
    let elsewhere = tempfile::tempdir().unwrap();
    let hooks = elsewhere.path().join("hooks/webhooks.db");
    let mut s = TestServer::start(&[
        "--auth-default-access",
        "read-write",
        "--webhook-file",
        hooks.to_str().unwrap(),
    ]);
    cli(&s, &["user", "add", "phil"], Some("phil-secret"));
    s.publish("files", "on disk").await;
    let data = s.data_path().to_path_buf();
    let check = |when: &str| {
        assert_eq!(mode(&data), 0o700, "{when}: data dir");
        assert_eq!(
            mode(&elsewhere.path().join("hooks")),
            0o700,
            "{when}: hooks dir"
        );
        for file in [
            data.join("messages.db"),
            data.join("messages.db-wal"),
            data.join("messages.db-shm"),
            data.join("auth.db"),
            data.join("auth.db-wal"),
            hooks.clone(),
            elsewhere.path().join("hooks/webhooks.db-wal"),
        ] {
            assert_eq!(mode(&file), 0o600, "{when}: {}", file.display());
        }
    };
    check("new");

    // As an older version left them: readable by everyone.
    s.stop();
    set_mode(&data, 0o755);
    for name in [
        "messages.db",
        "messages.db-wal",
        "messages.db-shm",
        "auth.db",
    ] {
        set_mode(&data.join(name), 0o644);
    }
    set_mode(&hooks, 0o644);
    s.start_again();
    check("tightened");
    assert!(
        s.log_text().contains("tightened the permissions"),
        "{}",
        s.log_text()
    );
}
