//! The table layout and its migrations.
//!
//! Rows keep the whole message as JSON next to the few columns the queries filter
//! on, so new message fields need no schema migration; `PRAGMA user_version` tracks
//! the schema for the migrations that will still be needed.

use rusqlite::Connection;

use super::backend;
use crate::store::StoreError;

/// The schema this code reads and writes (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 1;
const SCHEMA_V1: &str = "
CREATE TABLE messages (
    pk          INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL UNIQUE,
    topic       TEXT    NOT NULL,
    time        INTEGER NOT NULL,
    expires     INTEGER,
    published   INTEGER NOT NULL,
    sequence_id TEXT,
    event       TEXT    NOT NULL,
    json        TEXT    NOT NULL
);
CREATE INDEX messages_topic_time ON messages (topic, time, id);
CREATE INDEX messages_expires ON messages (expires);
-- Only scheduled messages need these two lookups (due time, cancel by sequence), so
-- the indexes are partial: an ordinary publish does not pay for them.
CREATE INDEX messages_due ON messages (time) WHERE published = 0;
CREATE INDEX messages_sequence ON messages (topic, sequence_id) WHERE published = 0;
";
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "store schema version {version} is newer than this herald supports ({SCHEMA_VERSION})"
        )));
    }
    if version < 1 {
        // The DDL and the version bump commit together, so a crash cannot leave a
        // half-created schema marked as current.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            StoreError::Backend(format!("creating the store schema: {e}"))
        })?;
    }
    // Later versions: `if version < 2 { ... }`, each in its own transaction.
    Ok(())
}
