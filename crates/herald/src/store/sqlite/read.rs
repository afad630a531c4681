//! Reads: a small pool of read-only connections, and the history queries.
//!
//! Reads (`query`, `next_due`, `stats`) use a small pool of read-only connections on
//! the blocking thread pool. WAL lets them read the last committed state while the
//! writer is busy, so a history replay never waits behind a commit.

use std::path::Path;
use std::sync::{Condvar, Mutex};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Params};

use super::{BUSY_TIMEOUT, backend, lock};
use crate::model::Message;
use crate::store::{Cursor, Page, Query, Since, StoreError};

/// Read-only connections kept open. Reads are short; two let a replay and a stats or
/// scheduler lookup proceed side by side without holding many file handles.
pub(super) const READ_CONNECTIONS: usize = 2;
pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Backend(format!("opening {} to read: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(backend)?;
    Ok(conn)
}

/// A fixed set of read-only connections; a read borrows one for its duration.
pub(super) struct ReadPool {
    /// `None` once the store is closed.
    idle: Mutex<Option<Vec<Connection>>>,
    returned: Condvar,
}

impl ReadPool {
    pub(super) fn new(conns: Vec<Connection>) -> Self {
        ReadPool {
            idle: Mutex::new(Some(conns)),
            returned: Condvar::new(),
        }
    }

    /// Runs `f` on an idle connection, waiting for one if all are busy.
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut idle = lock(&self.idle);
        let conn = loop {
            match idle.as_mut() {
                None => return Err(StoreError::Closed),
                Some(conns) => {
                    if let Some(conn) = conns.pop() {
                        break conn;
                    }
                }
            }
            idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
        };
        drop(idle);
        // The lease gives the connection back even if `f` panics, so the pool never
        // shrinks into a deadlock.
        let lease = Lease {
            pool: self,
            conn: Some(conn),
        };
        f(lease.conn.as_ref().ok_or(StoreError::Closed)?)
    }

    pub(super) fn close(&self) {
        *lock(&self.idle) = None;
        self.returned.notify_all();
    }
}

struct Lease<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // After close the connection is simply dropped (closed).
        if let Some(conns) = lock(&self.pool.idle).as_mut() {
            conns.push(conn);
            self.pool.returned.notify_one();
        }
    }
}

// ---------------------------------------------------------------------------------
// Reads
pub(super) fn run_query(conn: &Connection, query: &Query) -> Result<Vec<Message>, StoreError> {
    let mut topics = query.topics.clone();
    topics.sort_unstable();
    topics.dedup();

    let placeholders = vec!["?"; topics.len()].join(", ");
    let mut sql = format!("SELECT id, json FROM messages WHERE topic IN ({placeholders})");
    let published_only = !query.include_scheduled;
    let mut since_param = None;
    match &query.since {
        Since::None => return Ok(Vec::new()),
        Since::Latest => return query_latest(conn, &topics),
        Since::All => {
            if published_only {
                sql.push_str(" AND published = 1");
            }
        }
        Since::AfterId(marker) => {
            // With `scheduled=1`, pending messages count as "after" any marker: they
            // are not delivered yet (ntfy: `id > marker OR published = 0`).
            sql.push_str(if published_only {
                " AND published = 1 AND id > ?"
            } else {
                " AND (id > ? OR published = 0)"
            });
            since_param = Some(Value::Text(marker.clone()));
        }
        Since::Time(t) => {
            sql.push_str(" AND time >= ?");
            if published_only {
                sql.push_str(" AND published = 1");
            }
            since_param = Some(Value::Integer(*t));
        }
    }
    // SQLite merges the topics itself, so no re-sort is needed.
    sql.push_str(" ORDER BY time, id");
    let params = topics.into_iter().map(Value::Text).chain(since_param);
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    decode_rows(&mut stmt, rusqlite::params_from_iter(params), None)
}

/// One page of [`run_query`]'s answer (not for `Since::Latest`): up to `limit` rows
/// after `after`. Each topic is read on its own, one range of the `(topic, time, id)`
/// index of at most `limit` rows, and the topics merged here: a page costs at most
/// `limit` rows per topic however long the history is (one query over several topics
/// would sort everything after the cursor on every page).
pub(super) fn run_page(
    conn: &Connection,
    query: &Query,
    after: Option<(i64, String)>,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut topics = query.topics.clone();
    topics.sort_unstable();
    topics.dedup();
    let published_only = !query.include_scheduled;
    // The published messages after a marker are not a range of `(topic, time, id)`
    // (a message's time need not follow its ID): that index would scan every message
    // of the topic before the marker. When few messages follow it (a client
    // resuming from a recent one), they are read from the `id` index and sorted.
    let by_id = match &query.since {
        Since::AfterId(marker) if published_only => few_after(conn, marker)?,
        _ => false,
    };
    let mut sql = String::from(match by_id {
        true => {
            "SELECT id, json, time FROM messages INDEXED BY sqlite_autoindex_messages_1 \
                 WHERE topic = ?"
        }
        false => "SELECT id, json, time FROM messages WHERE topic = ?",
    });
    let mut since_param = None;
    match &query.since {
        Since::None | Since::Latest => return Ok(Page::default()),
        Since::All => {}
        Since::AfterId(marker) => {
            sql.push_str(if published_only {
                " AND id > ?"
            } else {
                " AND (id > ? OR published = 0)"
            });
            since_param = Some(Value::Text(marker.clone()));
        }
        Since::Time(t) => {
            sql.push_str(" AND time >= ?");
            since_param = Some(Value::Integer(*t));
        }
    }
    if published_only {
        sql.push_str(" AND published = 1");
    }
    if after.is_some() {
        sql.push_str(" AND (time, id) > (?, ?)");
    }
    sql.push_str(" ORDER BY time, id LIMIT ?");
    let limit_param = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    // Every row read, decodable or not, so the cursor moves past a malformed one.
    let mut rows: Vec<(i64, String, Option<Message>)> = Vec::new();
    let mut more = false;
    for topic in topics {
        let mut params = vec![Value::Text(topic)];
        params.extend(since_param.clone());
        if let Some((time, id)) = &after {
            params.push(Value::Integer(*time));
            params.push(Value::Text(id.clone()));
        }
        params.push(Value::Integer(limit_param));
        let before = rows.len();
        let mut found = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(backend)?;
        while let Some(row) = found.next().map_err(backend)? {
            let id: String = row.get(0).map_err(backend)?;
            let time: i64 = row.get(2).map_err(backend)?;
            let decoded = row
                .get_ref(1)
                .map_err(|e| e.to_string())
                .and_then(|v| v.as_str().map_err(|e| e.to_string()))
                .and_then(|json| serde_json::from_str::<Message>(json).map_err(|e| e.to_string()));
            let message = match decoded {
                Ok(message) => Some(message),
                Err(error) => {
                    tracing::warn!(id, %error, "skipping a malformed stored message");
                    None
                }
            };
            rows.push((time, id, message));
        }
        // A topic that filled the page may have more after it.
        more |= rows.len() - before >= limit;
    }
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    if rows.len() > limit {
        rows.truncate(limit);
        more = true;
    }
    let next = match rows.last() {
        Some((time, id, _)) if more => Some(Cursor::TimeId(*time, id.clone())),
        _ => None,
    };
    Ok(Page {
        messages: rows.into_iter().filter_map(|(_, _, m)| m).collect(),
        next,
    })
}

/// Below this many messages after a `since=<id>` marker, a page reads them by ID
/// ([`run_page`]). (Tiny in tests so that both ways are exercised.)
const BY_ID_BELOW: i64 = if cfg!(test) { 5 } else { 10_000 };

/// Whether fewer than [`BY_ID_BELOW`] messages (of any topic) have an ID above
/// `marker`: at most that many steps along the `id` index.
pub(super) fn few_after(conn: &Connection, marker: &str) -> Result<bool, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT count(*) FROM (SELECT 1 FROM messages WHERE id > ?1 LIMIT ?2)")
        .map_err(backend)?;
    let after: i64 = stmt
        .query_row(rusqlite::params![marker, BY_ID_BELOW], |row| row.get(0))
        .map_err(backend)?;
    Ok(after < BY_ID_BELOW)
}

/// The most recent published message of each topic, ordered by `(time, id)`.
fn query_latest(conn: &Connection, topics: &[String]) -> Result<Vec<Message>, StoreError> {
    // Per topic, so each lookup is one backwards step on (topic, time, id).
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, json FROM messages WHERE topic = ?1 AND published = 1
             ORDER BY time DESC, id DESC",
        )
        .map_err(backend)?;
    let mut out = Vec::with_capacity(topics.len());
    for topic in topics {
        // Stops at the first decodable row: a corrupt latest row yields the one before.
        out.extend(decode_rows(&mut stmt, [topic], Some(1))?);
    }
    out.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    Ok(out)
}

/// Decodes `(id, json)` rows into messages, skipping (with a warning) rows whose JSON
/// does not decode, so one bad row cannot hide a topic's whole history.
pub(super) fn decode_rows(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl Params,
    limit: Option<usize>,
) -> Result<Vec<Message>, StoreError> {
    let mut rows = stmt.query(params).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        let id = row
            .get_ref(0)
            .ok()
            .and_then(|v| v.as_str().ok())
            .unwrap_or("?");
        let decoded = row
            .get_ref(1)
            .map_err(|e| e.to_string())
            .and_then(|v| v.as_str().map_err(|e| e.to_string()))
            .and_then(|json| serde_json::from_str::<Message>(json).map_err(|e| e.to_string()));
        match decoded {
            Ok(message) => out.push(message),
            Err(error) => tracing::warn!(id, %error, "skipping a malformed stored message"),
        }
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
    }
    Ok(out)
}
