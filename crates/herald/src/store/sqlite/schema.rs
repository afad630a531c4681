//! The table layout and its migrations.
//!
//! Rows keep the whole message as JSON next to the few columns the queries filter
//! on, so new message fields need no schema migration; `PRAGMA user_version` tracks
//! the schema for the migrations that will still be needed.
//!
//! Every index is a B-tree that each publish inserts into, and under callgrind each
//! of them cost about 4,000 instructions of a ~62,000-instruction durable publish
//! (docs/BENCHMARKS.md, "Store indexes and the writer's answers (round 4)"). So the schema keeps only the
//! indexes that reads need (`id` for `since=<id>` across topics, `(topic, time, id)`
//! for a topic's history) and the two partial ones that only scheduled messages pay
//! for. Expiry (version 2) has no index of its own: `expiry_ranges` records, per
//! expiry second, the ranges of row keys (`pk`) that hold the rows expiring then.
//! Rows are inserted in publish order and expire in publish order, so one range row
//! per second covers them all, and the writer updates it once per commit, not once
//! per message (`writer.rs`, `ExpiryRanges`).

use rusqlite::Connection;

use super::backend;
use crate::store::StoreError;

/// The schema this code reads and writes (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 2;
pub(super) const SCHEMA_V1: &str = "
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

/// Version 2: the `expires` index becomes `expiry_ranges` (see the module docs). The
/// ranges of the rows already stored are read off the old index before it goes: one
/// pass over the index, no rewrite of the table.
const MIGRATE_V2: &str = "
CREATE TABLE expiry_ranges (
    expires INTEGER NOT NULL,
    lo      INTEGER NOT NULL,
    hi      INTEGER NOT NULL,
    PRIMARY KEY (expires, lo)
) WITHOUT ROWID;
INSERT INTO expiry_ranges (expires, lo, hi)
    SELECT expires, MIN(pk), MAX(pk) FROM messages WHERE expires IS NOT NULL GROUP BY expires;
DROP INDEX messages_expires;
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
        step(conn, SCHEMA_V1, 1, "creating the store schema")?;
    }
    if version < 2 {
        step(
            conn,
            MIGRATE_V2,
            2,
            "upgrading the store schema to version 2",
        )?;
    }
    // Later versions: `if version < 3 { ... }`, each a `step` of its own.
    Ok(())
}

/// Runs `sql` and sets the version to `to` in one transaction, so a crash cannot
/// leave a half-applied step marked as done.
fn step(conn: &Connection, sql: &str, to: i64, what: &str) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {sql} PRAGMA user_version = {to}; COMMIT;"
    ))
    .map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        StoreError::Backend(format!("{what}: {e}"))
    })
}
