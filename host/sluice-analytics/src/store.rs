//! The embedded SQLite store: the one place Sluice keeps history across restarts.
//!
//! It owns the database file, its schema and every SQL statement run against it: minute
//! rollups of the metrics, insights, scaling decisions, samples of routing decisions and
//! generated reports. Everything else in the crate reads and writes history through [`Store`].
//!
//! What it must not do:
//! - sit on a stream's path. Every call is short and synchronous (one statement or one small
//!   transaction under a mutex) and blocks the calling thread; callers run it from
//!   `tokio::task::spawn_blocking` or from small periodic loops, never from a task that carries
//!   traffic;
//! - decide anything: it keeps what it is given and answers queries, nothing more;
//! - keep more than the retention: [`Store::prune`] deletes rows older than it, and the loop
//!   that owns the store calls it periodically.
//!
//! What it guarantees when the wall clock jumps (the timestamps it is given are wall-clock
//! Unix ms, so a clock set forward or back shows up here first):
//! - pruning never deletes past the newest stored timestamp minus the retention: the cutoff is
//!   `min(now - retention, newest - retention)` where `newest` is the newest timestamp in any
//!   table. A clock that jumps forward by more than the retention therefore keeps the last
//!   retention's worth of history instead of emptying the store. Once rows are written at the
//!   new time they are the newest, and the older history ages out relative to them as usual,
//!   so the store stays bounded whichever way the clock was wrong. The newest over all tables,
//!   not per table, so that a table nobody writes any more (scaling quiet, learning off) is
//!   still pruned;
//! - a rollup never replaces one stored for an earlier minute than the newest of its metric:
//!   after a clock jumps back, the minutes it revisits keep what was stored for them (the
//!   rollups that would have replaced them are skipped, counted in
//!   [`WriteStats::rollups_skipped`] and logged at debug). New `(metric, minute)` pairs are
//!   always stored, so writes resume as soon as the clock moves on. The metric's newest minute
//!   is the minute in progress, which the engine stores every few seconds and again once it
//!   ends: there a rollup replaces the stored one only if it counts more samples, which is true
//!   of the minute growing and false of a revisited minute that was already complete. The
//!   price: after a clock that ran ahead is set right, the minutes before the rows it wrote
//!   ahead keep the first rollup stored for them (usually a partial one, of their first
//!   seconds) until real time passes those rows.
//!
//! File databases run in WAL mode so that `sluice report` can read a database with
//! [`Store::open_read_only`] while the running process writes it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::types::Type;
use rusqlite::{
    CachedStatement, Connection, ErrorCode, OpenFlags, OptionalExtension, Row, ToSql, params,
};

use crate::records::{
    DecisionSample, Insight, InsightKind, OutcomeRecord, ReportPeriod, Rollup, ScalingRecord,
    Severity,
};

/// The schema version this build writes and reads (`PRAGMA user_version`).
///
/// 1: rollups, insights, scaling actions, decisions, reports; 2: adds `route_outcomes`. The
/// schema only ever grows by tables and indexes created `IF NOT EXISTS`, so opening an older
/// store for writing brings it up to date, and an older store can still be read. The step is
/// one-way: a build that knows only version 1 refuses a store once a newer build has opened it.
pub const SCHEMA_VERSION: i64 = 2;

/// The first schema version: a database without one is not a Sluice store.
const FIRST_SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for a lock held by another connection before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The path that opens an in-memory database.
pub const IN_MEMORY: &str = ":memory:";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollups (
    ts_ms INTEGER NOT NULL,
    metric TEXT NOT NULL,
    avg REAL,
    min REAL,
    max REAL,
    count INTEGER NOT NULL,
    PRIMARY KEY (metric, ts_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollups_ts ON rollups (ts_ms);

CREATE TABLE IF NOT EXISTS insights (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    occurrences INTEGER NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    metric TEXT,
    value REAL,
    score REAL,
    source TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS insights_ts ON insights (ts_ms);
CREATE INDEX IF NOT EXISTS insights_last_seen ON insights (last_seen_ms);

CREATE TABLE IF NOT EXISTS scaling (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    class TEXT NOT NULL,
    requested INTEGER NOT NULL,
    applied INTEGER NOT NULL,
    from_connections INTEGER NOT NULL,
    to_connections INTEGER NOT NULL,
    reason TEXT NOT NULL,
    policy TEXT NOT NULL,
    metrics TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS scaling_ts ON scaling (ts_ms);

CREATE TABLE IF NOT EXISTS decisions (
    ts_ms INTEGER NOT NULL,
    monitor TEXT NOT NULL,
    method TEXT NOT NULL,
    policy TEXT NOT NULL,
    fallback INTEGER NOT NULL,
    connection_id INTEGER NOT NULL,
    candidates INTEGER NOT NULL,
    confidence REAL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts_ms);
CREATE INDEX IF NOT EXISTS decisions_monitor_ts ON decisions (monitor, ts_ms);

CREATE TABLE IF NOT EXISTS route_outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    monitor TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    connection_id INTEGER NOT NULL,
    candidates INTEGER NOT NULL,
    reason TEXT NOT NULL,
    columns INTEGER NOT NULL,
    features BLOB NOT NULL,
    first_message_ms REAL,
    failed INTEGER NOT NULL,
    throughput REAL NOT NULL,
    observed_ms REAL NOT NULL,
    quality REAL NOT NULL,
    predicted REAL,
    shadow_predicted REAL,
    shadow_agreed INTEGER
);
CREATE INDEX IF NOT EXISTS route_outcomes_ts ON route_outcomes (ts_ms);

CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    period TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    generated_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_period_generated ON reports (period, generated_ms);
CREATE INDEX IF NOT EXISTS reports_generated ON reports (generated_ms);
";

/// What went wrong in the store. Open errors name the database file; the others name the
/// operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder for the database file could not be created.
    #[error("cannot create the folder {} for the store: {source}", path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database file could not be opened or set up.
    #[error("cannot open the store {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The file exists but is not a SQLite database.
    #[error("{} is not a SQLite database (wrong store path?)", path.display())]
    NotSqlite {
        /// The file.
        path: PathBuf,
    },
    /// The file is a SQLite database without Sluice's schema (read-only opens only).
    #[error("{} is a SQLite database but not a Sluice store (no schema version)", path.display())]
    NotAStore {
        /// The file.
        path: PathBuf,
    },
    /// The database was written by a newer Sluice with a schema this build does not know.
    #[error(
        "the store {} has schema version {found}, newer than the {supported} this build of Sluice \
         knows; use a newer Sluice or another store path",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The version this build writes.
        supported: i64,
    },
    /// A read-only open found no file.
    #[error("no store at {} (is the path right, and has Sluice run with it?)", path.display())]
    Missing {
        /// The path that was asked for.
        path: PathBuf,
    },
    /// A write was asked of a store opened read-only.
    #[error("the store {} is open read-only; cannot {operation}", path.display())]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// What was asked.
        operation: &'static str,
    },
    /// A statement failed.
    #[error("store: cannot {operation}: {source}")]
    Sqlite {
        /// What the store was doing.
        operation: &'static str,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A JSON value could not be encoded for the store.
    #[error("store: cannot encode JSON to {operation}: {source}")]
    Json {
        /// What the store was doing.
        operation: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Returns a mapper from a rusqlite error to [`StoreError::Sqlite`] for `operation`.
fn sql(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { operation, source }
}

/// `value` as JSON text for a column.
fn json(operation: &'static str, value: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Json { operation, source })
}

/// Rows deleted by one [`Store::prune`], per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneCounts {
    /// Rollup rows.
    pub rollups: u64,
    /// Insights (by when they were last seen).
    pub insights: u64,
    /// Scaling records.
    pub scaling: u64,
    /// Decision samples.
    pub decisions: u64,
    /// Stored reports (by when they were generated).
    pub reports: u64,
    /// Routing outcomes.
    pub outcomes: u64,
}

impl PruneCounts {
    /// Rows deleted in all tables.
    pub fn total(&self) -> u64 {
        self.rollups + self.insights + self.scaling + self.decisions + self.reports + self.outcomes
    }
}

/// Counters of the work the store has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Rows inserted, replaced, updated or deleted.
    pub rows_written: u64,
    /// Write statements executed (each row of a batch counts once; commits do not).
    pub statements: u64,
    /// Rollups not stored because they would have replaced a stored rollup of an earlier minute
    /// than the newest of their metric, or one with as many samples (a clock that went back).
    pub rollups_skipped: u64,
}

/// One stored report as listed by [`Store::reports`]: `(id, period, start_ms, end_ms,
/// generated_ms)`.
pub type ReportListing = (i64, ReportPeriod, i64, i64, i64);

/// The embedded SQLite store, shared as `Arc<Store>`.
///
/// One connection behind a mutex: calls are short, synchronous and serialized. They block the
/// calling thread (up to [`BUSY_TIMEOUT`] when another process holds a lock), so async callers
/// run them from `tokio::task::spawn_blocking` or from small periodic loops.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    retention: Duration,
    read_only: bool,
    rows_written: AtomicU64,
    statements: AtomicU64,
    rollups_skipped: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .field("read_only", &self.read_only)
            .field("rows_written", &self.rows_written())
            .finish_non_exhaustive()
    }
}

/// Maps an error of the first statements on a fresh connection: a file that is not SQLite gets
/// its own error.
fn open_error(path: &Path, source: rusqlite::Error) -> StoreError {
    if source.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
        StoreError::NotSqlite {
            path: path.to_path_buf(),
        }
    } else {
        StoreError::Open {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads the schema version, refusing files that are not SQLite or are newer than this build.
fn check_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Converts a millisecond duration to `i64`, saturating.
fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Converts a row limit to SQL, saturating.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A conversion failure for a column whose text does not parse.
fn bad_column(idx: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, what.into())
}

/// Reads a JSON text column.
fn json_column(row: &Row<'_>, idx: usize) -> rusqlite::Result<serde_json::Value> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

/// Reads a REAL column that may be NULL (SQLite stores NaN as NULL).
fn real_column(row: &Row<'_>, idx: usize) -> rusqlite::Result<f64> {
    Ok(row.get::<_, Option<f64>>(idx)?.unwrap_or(f64::NAN))
}

/// Reads a period name column.
fn period_column(row: &Row<'_>, idx: usize) -> rusqlite::Result<ReportPeriod> {
    let text: String = row.get(idx)?;
    ReportPeriod::parse(&text).ok_or_else(|| bad_column(idx, format!("unknown period {text:?}")))
}

fn rollup_row(row: &Row<'_>) -> rusqlite::Result<Rollup> {
    Ok(Rollup {
        ts_ms: row.get(0)?,
        metric: row.get(1)?,
        avg: real_column(row, 2)?,
        min: real_column(row, 3)?,
        max: real_column(row, 4)?,
        count: row.get(5)?,
    })
}

const ROLLUP_COLUMNS: &str = "ts_ms, metric, avg, min, max, count";

fn insight_row(row: &Row<'_>) -> rusqlite::Result<Insight> {
    let kind: String = row.get(4)?;
    let severity: String = row.get(5)?;
    Ok(Insight {
        id: row.get(0)?,
        ts_ms: row.get(1)?,
        last_seen_ms: row.get(2)?,
        occurrences: row.get(3)?,
        kind: InsightKind::parse(&kind)
            .ok_or_else(|| bad_column(4, format!("unknown insight kind {kind:?}")))?,
        severity: Severity::parse(&severity)
            .ok_or_else(|| bad_column(5, format!("unknown severity {severity:?}")))?,
        title: row.get(6)?,
        description: row.get(7)?,
        metric: row.get(8)?,
        value: real_column(row, 9)?,
        score: real_column(row, 10)?,
        source: row.get(11)?,
        data: json_column(row, 12)?,
    })
}

const INSIGHT_COLUMNS: &str = "id, ts_ms, last_seen_ms, occurrences, kind, severity, title, \
                               description, metric, value, score, source, data";

/// SQL ordering of severities, most severe highest.
const SEVERITY_RANK: &str = "CASE severity WHEN 'critical' THEN 2 WHEN 'warning' THEN 1 ELSE 0 END";

fn scaling_row(row: &Row<'_>) -> rusqlite::Result<ScalingRecord> {
    Ok(ScalingRecord {
        id: row.get(0)?,
        ts_ms: row.get(1)?,
        class: row.get(2)?,
        requested: row.get(3)?,
        applied: row.get(4)?,
        from: row.get(5)?,
        to: row.get(6)?,
        reason: row.get(7)?,
        policy: row.get(8)?,
        metrics: json_column(row, 9)?,
    })
}

const SCALING_COLUMNS: &str = "id, ts_ms, class, requested, applied, from_connections, to_connections, reason, policy, \
     metrics";

fn decision_row(row: &Row<'_>) -> rusqlite::Result<DecisionSample> {
    let connection_id: i64 = row.get(5)?;
    Ok(DecisionSample {
        ts_ms: row.get(0)?,
        monitor: row.get(1)?,
        method: row.get(2)?,
        stream: None,
        policy: row.get(3)?,
        fallback: row.get(4)?,
        // Stored bit for bit as i64 (SQLite integers are signed).
        connection_id: connection_id as u64,
        candidates: row.get(6)?,
        confidence: row.get::<_, Option<f32>>(7)?.unwrap_or(f32::NAN),
        reason: row.get(8)?,
    })
}

const DECISION_COLUMNS: &str =
    "ts_ms, monitor, method, policy, fallback, connection_id, candidates, confidence, reason";

impl Store {
    /// Opens (creating when missing) the store at `path` for reading and writing; `:memory:`
    /// opens an in-memory database. Rows older than `retention` go at the next
    /// [`Store::prune`].
    ///
    /// Creates the parent folder when missing, sets WAL journaling (file databases),
    /// `synchronous=NORMAL` and a [`BUSY_TIMEOUT`], and creates the schema when missing. A file
    /// that is not SQLite, or whose schema is newer than this build's, is refused with an error
    /// naming it.
    pub fn open(path: &Path, retention: Duration) -> Result<Store, StoreError> {
        let in_memory = path.as_os_str() == IN_MEMORY;
        let conn = if in_memory {
            Connection::open_in_memory()
        } else {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            Connection::open(path)
        }
        .map_err(|e| open_error(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_error(path, e))?;
        let found = check_version(&conn, path)?;
        if !in_memory {
            // Returns the mode now in force; a failure to switch is not fatal for correctness,
            // only for concurrent readers, so the answer is not checked.
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
                .map_err(|e| open_error(path, e))?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| open_error(path, e))?;
        if found < SCHEMA_VERSION {
            conn.execute_batch(&format!(
                "BEGIN;\n{SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;"
            ))
            .map_err(|e| open_error(path, e))?;
        }
        Ok(Store::wrap(conn, path, retention, false))
    }

    /// Opens an existing store read-only, e.g. for `sluice report` while the running process
    /// writes it. A missing file, a file that is not SQLite, a SQLite file without Sluice's
    /// schema and a newer schema are each refused with an error naming the path. Writes and
    /// [`Store::prune`] fail on the returned store.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_error(path, e))?;
        if check_version(&conn, path)? < FIRST_SCHEMA_VERSION {
            return Err(StoreError::NotAStore {
                path: path.to_path_buf(),
            });
        }
        Ok(Store::wrap(conn, path, Duration::MAX, true))
    }

    fn wrap(conn: Connection, path: &Path, retention: Duration, read_only: bool) -> Store {
        Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            retention,
            read_only,
            rows_written: AtomicU64::new(0),
            statements: AtomicU64::new(0),
            rollups_skipped: AtomicU64::new(0),
        }
    }

    /// The path the store was opened with (`:memory:` for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long rows are kept ([`Duration::MAX`] for a read-only store).
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Whether the store was opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn check_writable(&self, operation: &'static str) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
                operation,
            });
        }
        Ok(())
    }

    fn count(&self, statements: u64, rows: u64) {
        self.statements.fetch_add(statements, Ordering::Relaxed);
        self.rows_written.fetch_add(rows, Ordering::Relaxed);
    }

    // ---- writes -------------------------------------------------------------------------

    /// Runs `statement` once for each of `items` in one transaction; `execute` binds one item.
    /// Returns the rows the statements changed.
    fn insert_rows<T>(
        &self,
        operation: &'static str,
        statement: &str,
        items: &[T],
        execute: impl Fn(&mut CachedStatement<'_>, &T) -> rusqlite::Result<usize>,
    ) -> Result<u64, StoreError> {
        self.check_writable(operation)?;
        if items.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(sql(operation))?;
        let mut rows = 0;
        {
            let mut stmt = tx.prepare_cached(statement).map_err(sql(operation))?;
            for item in items {
                rows += execute(&mut stmt, item).map_err(sql(operation))? as u64;
            }
        }
        tx.commit().map_err(sql(operation))?;
        self.count(items.len() as u64, rows);
        Ok(rows)
    }

    /// Runs one `INSERT` with `values` and returns the new row's id.
    fn insert_row(
        &self,
        operation: &'static str,
        statement: &str,
        values: &[&dyn ToSql],
    ) -> Result<i64, StoreError> {
        self.check_writable(operation)?;
        let conn = self.conn.lock();
        conn.prepare_cached(statement)
            .and_then(|mut stmt| stmt.execute(values))
            .map_err(sql(operation))?;
        let id = conn.last_insert_rowid();
        self.count(1, 1);
        Ok(id)
    }

    /// Writes minute rollups in one transaction. A rollup for a new `(metric, ts_ms)` is
    /// stored; one for a stored pair replaces it only when it is the metric's newest minute and
    /// counts more samples (the minute in progress growing). Others are skipped, so a clock
    /// that went back never overwrites the minutes it revisits (see the module docs).
    pub fn write_rollups(&self, rollups: &[Rollup]) -> Result<(), StoreError> {
        // The conflict update's WHERE keeps the stored row unless both hold; the subquery reads
        // the primary key's last entry for the metric, which exists since the row conflicts.
        let written = self.insert_rows(
            "write rollups",
            "INSERT INTO rollups (ts_ms, metric, avg, min, max, count) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (metric, ts_ms) DO UPDATE SET \
             avg = excluded.avg, min = excluded.min, max = excluded.max, count = excluded.count \
             WHERE excluded.count > rollups.count \
             AND ?1 >= (SELECT MAX(ts_ms) FROM rollups WHERE metric = ?2)",
            rollups,
            |stmt, r| stmt.execute(params![r.ts_ms, r.metric, r.avg, r.min, r.max, r.count]),
        )?;
        let skipped = (rollups.len() as u64).saturating_sub(written);
        if skipped > 0 {
            self.rollups_skipped.fetch_add(skipped, Ordering::Relaxed);
            tracing::debug!(
                skipped,
                "rollups not stored: they would replace a stored minute (did the clock go back?)"
            );
        }
        Ok(())
    }

    /// Stores a new insight (its `id` is ignored) and returns the id it got.
    pub fn insert_insight(&self, insight: &Insight) -> Result<i64, StoreError> {
        const OP: &str = "insert an insight";
        let data = json(OP, &insight.data)?;
        self.insert_row(
            OP,
            "INSERT INTO insights (ts_ms, last_seen_ms, occurrences, kind, severity, title, \
             description, metric, value, score, source, data) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                insight.ts_ms,
                insight.last_seen_ms,
                insight.occurrences,
                insight.kind.as_str(),
                insight.severity.as_str(),
                insight.title,
                insight.description,
                insight.metric,
                insight.value,
                insight.score,
                insight.source,
                data,
            ],
        )
    }

    /// Records that insight `id` was seen again: when last, how many times in all, and the
    /// latest value and score. Updating an id that does not exist does nothing.
    pub fn update_insight_seen(
        &self,
        id: i64,
        last_seen_ms: i64,
        occurrences: u32,
        value: f64,
        score: f64,
    ) -> Result<(), StoreError> {
        const OP: &str = "update an insight";
        self.check_writable(OP)?;
        let conn = self.conn.lock();
        let rows = conn
            .prepare_cached(
                "UPDATE insights SET last_seen_ms = ?2, occurrences = ?3, value = ?4, score = ?5 \
                 WHERE id = ?1",
            )
            .and_then(|mut stmt| stmt.execute(params![id, last_seen_ms, occurrences, value, score]))
            .map_err(sql(OP))?;
        self.count(1, rows as u64);
        Ok(())
    }

    /// Stores a scaling record (its `id` is ignored) and returns the id it got.
    pub fn insert_scaling(&self, record: &ScalingRecord) -> Result<i64, StoreError> {
        const OP: &str = "insert a scaling record";
        let metrics = json(OP, &record.metrics)?;
        self.insert_row(
            OP,
            "INSERT INTO scaling (ts_ms, class, requested, applied, from_connections, \
             to_connections, reason, policy, metrics) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                record.ts_ms,
                record.class,
                record.requested,
                record.applied,
                record.from,
                record.to,
                record.reason,
                record.policy,
                metrics,
            ],
        )
    }

    /// Stores routing decision samples in one transaction.
    pub fn insert_decisions(&self, samples: &[DecisionSample]) -> Result<(), StoreError> {
        self.insert_rows(
            "insert decision samples",
            "INSERT INTO decisions (ts_ms, monitor, method, policy, fallback, \
             connection_id, candidates, confidence, reason) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            samples,
            |stmt, d| {
                stmt.execute(params![
                    d.ts_ms,
                    d.monitor,
                    d.method,
                    d.policy,
                    d.fallback,
                    // Bit for bit: SQLite integers are signed.
                    d.connection_id as i64,
                    d.candidates,
                    d.confidence,
                    d.reason,
                ])
            },
        )
        .map(drop)
    }

    /// Stores routing outcomes in one transaction. Features are stored as little-endian
    /// `f32`s, `columns` per row (`numpy.frombuffer(blob, "<f4")` reads them).
    pub fn insert_outcomes(&self, records: &[OutcomeRecord]) -> Result<(), StoreError> {
        self.insert_rows(
            "insert routing outcomes",
            "INSERT INTO route_outcomes (ts_ms, monitor, endpoint, connection_id, candidates, \
             reason, columns, features, first_message_ms, failed, throughput, observed_ms, \
             quality, predicted, shadow_predicted, shadow_agreed) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            records,
            |stmt, r| {
                let features: Vec<u8> = r.features.iter().flat_map(|f| f.to_le_bytes()).collect();
                stmt.execute(params![
                    r.ts_ms,
                    r.monitor,
                    r.endpoint,
                    // Bit for bit: SQLite integers are signed.
                    r.connection_id as i64,
                    r.candidates,
                    r.reason,
                    r.columns,
                    features,
                    r.first_message_ms,
                    r.failed,
                    r.throughput,
                    r.observed_ms,
                    r.quality,
                    r.predicted,
                    r.shadow_predicted,
                    r.shadow_agreed,
                ])
            },
        )
        .map(drop)
    }

    /// Routing outcomes with `ts_ms >= since_ms`, oldest first, at most `limit`.
    pub fn outcomes(&self, since_ms: i64, limit: usize) -> Result<Vec<OutcomeRecord>, StoreError> {
        const OP: &str = "read routing outcomes";
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT ts_ms, monitor, endpoint, connection_id, candidates, reason, columns, \
                 features, first_message_ms, failed, throughput, observed_ms, quality, predicted, \
                 shadow_predicted, shadow_agreed FROM route_outcomes WHERE ts_ms >= ?1 \
                 ORDER BY ts_ms, id LIMIT ?2",
            )
            .map_err(sql(OP))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![since_ms, limit], |row| {
                let blob: Vec<u8> = row.get(7)?;
                Ok(OutcomeRecord {
                    ts_ms: row.get(0)?,
                    monitor: row.get(1)?,
                    endpoint: row.get(2)?,
                    connection_id: row.get::<_, i64>(3)? as u64,
                    candidates: row.get(4)?,
                    reason: row.get(5)?,
                    columns: row.get(6)?,
                    features: blob
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                    first_message_ms: row.get(8)?,
                    failed: row.get(9)?,
                    throughput: row.get(10)?,
                    observed_ms: row.get(11)?,
                    quality: row.get(12)?,
                    predicted: row.get(13)?,
                    shadow_predicted: row.get(14)?,
                    shadow_agreed: row.get(15)?,
                })
            })
            .map_err(sql(OP))?;
        rows.collect::<Result<_, _>>().map_err(sql(OP))
    }

    /// Stores a generated report's JSON body and returns the id it got.
    pub fn insert_report(
        &self,
        period: ReportPeriod,
        start_ms: i64,
        end_ms: i64,
        generated_ms: i64,
        body: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        const OP: &str = "insert a report";
        let body = json(OP, body)?;
        self.insert_row(
            OP,
            "INSERT INTO reports (period, start_ms, end_ms, generated_ms, body) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![period.as_str(), start_ms, end_ms, generated_ms, body],
        )
    }

    /// Deletes rows older than the retention from every table: rollups, scaling records,
    /// decision samples and routing outcomes by `ts_ms`, insights by `last_seen_ms` (one still
    /// recurring stays), reports by `generated_ms`. One transaction.
    ///
    /// "Older than the retention" counts back from `now_ms` or from the newest stored
    /// timestamp, whichever is earlier, so a clock that jumped forward by more than the
    /// retention does not empty the store (see the module docs).
    pub fn prune(&self, now_ms: i64) -> Result<PruneCounts, StoreError> {
        const OP: &str = "prune old rows";
        self.check_writable(OP)?;
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(sql(OP))?;
        // Each MAX reads the last entry of the column's index.
        let newest: Option<i64> = tx
            .query_row(
                "SELECT MAX(newest) FROM ( \
                 SELECT MAX(ts_ms) AS newest FROM rollups \
                 UNION ALL SELECT MAX(last_seen_ms) FROM insights \
                 UNION ALL SELECT MAX(ts_ms) FROM scaling \
                 UNION ALL SELECT MAX(ts_ms) FROM decisions \
                 UNION ALL SELECT MAX(generated_ms) FROM reports \
                 UNION ALL SELECT MAX(ts_ms) FROM route_outcomes)",
                [],
                |r| r.get(0),
            )
            .map_err(sql(OP))?;
        let Some(newest) = newest else {
            // Nothing stored: nothing to delete.
            return Ok(PruneCounts::default());
        };
        let retention = duration_ms(self.retention);
        let cutoff = now_ms.min(newest).saturating_sub(retention);
        let delete = |table: &str, column: &str| -> Result<u64, StoreError> {
            tx.execute(
                &format!("DELETE FROM {table} WHERE {column} < ?1"),
                [cutoff],
            )
            .map(|n| n as u64)
            .map_err(sql(OP))
        };
        let counts = PruneCounts {
            rollups: delete("rollups", "ts_ms")?,
            insights: delete("insights", "last_seen_ms")?,
            scaling: delete("scaling", "ts_ms")?,
            decisions: delete("decisions", "ts_ms")?,
            reports: delete("reports", "generated_ms")?,
            outcomes: delete("route_outcomes", "ts_ms")?,
        };
        tx.commit().map_err(sql(OP))?;
        self.count(6, counts.total());
        Ok(counts)
    }

    // ---- reads --------------------------------------------------------------------------

    /// The rollups of `metric` with `since_ms <= ts_ms < until_ms`, oldest first.
    pub fn rollups(
        &self,
        metric: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<Rollup>, StoreError> {
        const OP: &str = "read rollups";
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ROLLUP_COLUMNS} FROM rollups \
                 WHERE metric = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 ORDER BY ts_ms"
            ))
            .map_err(sql(OP))?;
        stmt.query_map(params![metric, since_ms, until_ms], rollup_row)
            .and_then(|rows| rows.collect())
            .map_err(sql(OP))
    }

    /// The distinct metric names with rollups, sorted.
    pub fn rollup_metrics(&self) -> Result<Vec<String>, StoreError> {
        const OP: &str = "list rollup metrics";
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached("SELECT DISTINCT metric FROM rollups ORDER BY metric")
            .map_err(sql(OP))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(sql(OP))
    }

    /// The rollups of every metric with `ts_ms >= since_ms`, oldest first (then by metric).
    pub fn rollups_since(&self, since_ms: i64) -> Result<Vec<Rollup>, StoreError> {
        self.rollups_between(since_ms, i64::MAX)
    }

    /// The rollups of every metric with `since_ms <= ts_ms < until_ms`, oldest first (then by
    /// metric).
    pub fn rollups_between(&self, since_ms: i64, until_ms: i64) -> Result<Vec<Rollup>, StoreError> {
        const OP: &str = "read rollups";
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ROLLUP_COLUMNS} FROM rollups \
                 WHERE ts_ms >= ?1 AND ts_ms < ?2 ORDER BY ts_ms, metric"
            ))
            .map_err(sql(OP))?;
        stmt.query_map(params![since_ms, until_ms], rollup_row)
            .and_then(|rows| rows.collect())
            .map_err(sql(OP))
    }

    /// Up to `limit` insights last seen at or after `since_ms`, most recently seen first.
    pub fn insights(&self, since_ms: i64, limit: usize) -> Result<Vec<Insight>, StoreError> {
        const OP: &str = "read insights";
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {INSIGHT_COLUMNS} FROM insights WHERE last_seen_ms >= ?1 \
                 ORDER BY last_seen_ms DESC, id DESC LIMIT ?2"
            ))
            .map_err(sql(OP))?;
        stmt.query_map(params![since_ms, sql_limit(limit)], insight_row)
            .and_then(|rows| rows.collect())
            .map_err(sql(OP))
    }

    /// Up to `limit` insights active in `[since_ms, until_ms)` (first seen before `until_ms`,
    /// last seen at or after `since_ms`), most severe first, then most recently seen.
    pub fn insights_between(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<Insight>, StoreError> {
        const OP: &str = "read insights";
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {INSIGHT_COLUMNS} FROM insights \
                 WHERE last_seen_ms >= ?1 AND ts_ms < ?2 \
                 ORDER BY {SEVERITY_RANK} DESC, last_seen_ms DESC, id DESC LIMIT ?3"
            ))
            .map_err(sql(OP))?;
        stmt.query_map(params![since_ms, until_ms, sql_limit(limit)], insight_row)
            .and_then(|rows| rows.collect())
            .map_err(sql(OP))
    }

    /// How many insights were active in `[since_ms, until_ms)` (as in
    /// [`Store::insights_between`]), per severity; severities without any are left out.
    pub fn insight_counts(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<(Severity, u64)>, StoreError> {
        const OP: &str = "count insights";
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT severity, COUNT(*) FROM insights \
                 WHERE last_seen_ms >= ?1 AND ts_ms < ?2 GROUP BY severity",
            )
            .map_err(sql(OP))?;
        let rows: Vec<(String, i64)> = stmt
            .query_map(params![since_ms, until_ms], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(sql(OP))?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| Some((Severity::parse(&s)?, u64::try_from(n).unwrap_or(0))))
            .collect())
    }

    /// Up to `limit` scaling records with `ts_ms >= since_ms`, newest first.
    pub fn scaling(&self, since_ms: i64, limit: usize) -> Result<Vec<ScalingRecord>, StoreError> {
        self.scaling_between(since_ms, i64::MAX, limit)
    }

    /// Up to `limit` scaling records with `since_ms <= ts_ms < until_ms`, newest first.
    pub fn scaling_between(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<ScalingRecord>, StoreError> {
        const OP: &str = "read scaling records";
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {SCALING_COLUMNS} FROM scaling WHERE ts_ms >= ?1 AND ts_ms < ?2 \
                 ORDER BY ts_ms DESC, id DESC LIMIT ?3"
            ))
            .map_err(sql(OP))?;
        stmt.query_map(params![since_ms, until_ms, sql_limit(limit)], scaling_row)
            .and_then(|rows| rows.collect())
            .map_err(sql(OP))
    }

    /// How many scaling records have `since_ms <= ts_ms < until_ms`: `(all, applied)` where
    /// applied ones changed a group (`applied != 0`).
    pub fn scaling_counts(&self, since_ms: i64, until_ms: i64) -> Result<(u64, u64), StoreError> {
        const OP: &str = "count scaling records";
        let conn = self.conn.lock();
        let (all, applied): (i64, Option<i64>) = conn
            .prepare_cached(
                "SELECT COUNT(*), SUM(applied != 0) FROM scaling \
                 WHERE ts_ms >= ?1 AND ts_ms < ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![since_ms, until_ms], |r| Ok((r.get(0)?, r.get(1)?)))
            })
            .map_err(sql(OP))?;
        Ok((
            u64::try_from(all).unwrap_or(0),
            u64::try_from(applied.unwrap_or(0)).unwrap_or(0),
        ))
    }

    /// Up to `limit` decision samples with `ts_ms >= since_ms`, of one monitor or of all,
    /// newest first.
    pub fn decisions(
        &self,
        monitor: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<DecisionSample>, StoreError> {
        const OP: &str = "read decision samples";
        let conn = self.conn.lock();
        let limit = sql_limit(limit);
        let rows = match monitor {
            Some(monitor) => conn
                .prepare_cached(&format!(
                    "SELECT {DECISION_COLUMNS} FROM decisions WHERE monitor = ?1 AND ts_ms >= ?2 \
                     ORDER BY ts_ms DESC, rowid DESC LIMIT ?3"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![monitor, since_ms, limit], decision_row)?
                        .collect()
                }),
            None => conn
                .prepare_cached(&format!(
                    "SELECT {DECISION_COLUMNS} FROM decisions WHERE ts_ms >= ?1 \
                     ORDER BY ts_ms DESC, rowid DESC LIMIT ?2"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![since_ms, limit], decision_row)?
                        .collect()
                }),
        };
        rows.map_err(sql(OP))
    }

    /// The most recently generated report of `period`: `(id, generated_ms, body)`.
    pub fn latest_report(
        &self,
        period: ReportPeriod,
    ) -> Result<Option<(i64, i64, serde_json::Value)>, StoreError> {
        const OP: &str = "read the latest report";
        let conn = self.conn.lock();
        conn.prepare_cached(
            "SELECT id, generated_ms, body FROM reports WHERE period = ?1 \
             ORDER BY generated_ms DESC, id DESC LIMIT 1",
        )
        .and_then(|mut stmt| {
            stmt.query_row([period.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, json_column(r, 2)?))
            })
            .optional()
        })
        .map_err(sql(OP))
    }

    /// The body of the stored report `id`, if there is one.
    pub fn report_body(&self, id: i64) -> Result<Option<serde_json::Value>, StoreError> {
        const OP: &str = "read a report";
        let conn = self.conn.lock();
        conn.prepare_cached("SELECT body FROM reports WHERE id = ?1")
            .and_then(|mut stmt| stmt.query_row([id], |r| json_column(r, 0)).optional())
            .map_err(sql(OP))
    }

    /// Up to `limit` stored reports, of one period or of all, newest first (bodies left out).
    pub fn reports(
        &self,
        period: Option<ReportPeriod>,
        limit: usize,
    ) -> Result<Vec<ReportListing>, StoreError> {
        const OP: &str = "list reports";
        let conn = self.conn.lock();
        let map = |r: &Row<'_>| -> rusqlite::Result<ReportListing> {
            Ok((
                r.get(0)?,
                period_column(r, 1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ))
        };
        let limit = sql_limit(limit);
        let rows = match period {
            Some(period) => conn
                .prepare_cached(
                    "SELECT id, period, start_ms, end_ms, generated_ms FROM reports \
                     WHERE period = ?1 ORDER BY generated_ms DESC, id DESC LIMIT ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![period.as_str(), limit], map)?
                        .collect()
                }),
            None => conn
                .prepare_cached(
                    "SELECT id, period, start_ms, end_ms, generated_ms FROM reports \
                     ORDER BY generated_ms DESC, id DESC LIMIT ?1",
                )
                .and_then(|mut stmt| stmt.query_map([limit], map)?.collect()),
        };
        rows.map_err(sql(OP))
    }

    // ---- size and counters --------------------------------------------------------------

    /// The database's size in bytes (`page_count * page_size`; the WAL file is not counted).
    /// 0 when SQLite cannot tell.
    pub fn size_bytes(&self) -> u64 {
        let conn = self.conn.lock();
        let pages = conn.pragma_query_value(None, "page_count", |r| r.get::<_, i64>(0));
        let page_size = conn.pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0));
        match (pages, page_size) {
            (Ok(pages), Ok(size)) => u64::try_from(pages.saturating_mul(size)).unwrap_or(0),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(path = %self.path.display(), error = %e, "store size unknown");
                0
            }
        }
    }

    /// Rows written (inserted, replaced, updated or deleted) since the store was opened.
    pub fn rows_written(&self) -> u64 {
        self.rows_written.load(Ordering::Relaxed)
    }

    /// Rows written and write statements executed since the store was opened.
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            rows_written: self.rows_written(),
            statements: self.statements.load(Ordering::Relaxed),
            rollups_skipped: self.rollups_skipped.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn rollup(metric: &str, ts_ms: i64, avg: f64) -> Rollup {
        Rollup {
            ts_ms,
            metric: metric.to_string(),
            avg,
            min: avg - 1.0,
            max: avg + 1.0,
            count: 60,
        }
    }

    fn insight(ts_ms: i64, severity: Severity, title: &str) -> Insight {
        Insight {
            id: 0,
            ts_ms,
            last_seen_ms: ts_ms,
            occurrences: 1,
            kind: InsightKind::Anomaly,
            severity,
            title: title.to_string(),
            description: "description".to_string(),
            metric: Some("pool.connections".to_string()),
            value: 12.5,
            score: 4.0,
            source: "builtin".to_string(),
            data: serde_json::json!({ "band": [1, 2] }),
        }
    }

    fn scaling(ts_ms: i64, applied: i32) -> ScalingRecord {
        ScalingRecord {
            id: 0,
            ts_ms,
            class: "realtime".to_string(),
            requested: 2,
            applied,
            from: 3,
            to: 3 + applied.max(0) as u32,
            reason: "busy".to_string(),
            policy: "builtin".to_string(),
            metrics: serde_json::json!({ "streams": 40 }),
        }
    }

    fn decision(ts_ms: i64, monitor: &str) -> DecisionSample {
        DecisionSample {
            ts_ms,
            monitor: monitor.to_string(),
            method: "/feed.Feed/Subscribe".to_string(),
            stream: None,
            policy: "builtin".to_string(),
            fallback: false,
            connection_id: u64::MAX - 1,
            candidates: 4,
            confidence: 0.5,
            reason: "least loaded".to_string(),
        }
    }

    /// Writes one of everything at `ts_ms`; returns the insight id.
    fn outcome(ts_ms: i64) -> OutcomeRecord {
        OutcomeRecord {
            ts_ms,
            monitor: "m1".to_owned(),
            endpoint: "fast".to_owned(),
            connection_id: u64::MAX,
            candidates: 3,
            reason: "router: conn 7".to_owned(),
            columns: 3,
            features: vec![0.5, -1.25, 1e-3],
            first_message_ms: Some(4.5),
            failed: false,
            throughput: 99.5,
            observed_ms: 60_000.0,
            quality: crate::records::outcome_quality(Some(4.5), false),
            predicted: Some(0.75),
            shadow_predicted: None,
            shadow_agreed: Some(true),
        }
    }

    #[test]
    fn routing_outcomes_round_trip_with_their_features() {
        let store = Store::open(Path::new(IN_MEMORY), HOUR).unwrap();
        let mut failed = outcome(2_000);
        failed.failed = true;
        failed.first_message_ms = None;
        failed.quality = crate::records::outcome_quality(None, true);
        store
            .insert_outcomes(&[outcome(1_000), failed.clone()])
            .unwrap();
        let read = store.outcomes(0, 10).unwrap();
        assert_eq!(read, vec![outcome(1_000), failed]);
        assert_eq!(read[1].quality, 0.0);
        assert!((read[0].quality - 1.0 / (1.0 + 4.5 / 50.0)).abs() < 1e-12);
        assert_eq!(store.outcomes(1_500, 10).unwrap().len(), 1);
    }

    fn fill(store: &Store, ts_ms: i64) -> i64 {
        store
            .write_rollups(&[
                rollup("pool.connections", ts_ms, 4.0),
                rollup("streams.downstream", ts_ms, 20.0),
            ])
            .unwrap();
        let id = store
            .insert_insight(&insight(ts_ms, Severity::Warning, "hot"))
            .unwrap();
        store.insert_scaling(&scaling(ts_ms, 1)).unwrap();
        store
            .insert_decisions(&[decision(ts_ms, "m1"), decision(ts_ms, "m2")])
            .unwrap();
        store.insert_outcomes(&[outcome(ts_ms)]).unwrap();
        store
            .insert_report(
                ReportPeriod::Hourly,
                ts_ms - 3_600_000,
                ts_ms,
                ts_ms,
                &serde_json::json!({ "at": ts_ms }),
            )
            .unwrap();
        id
    }

    #[test]
    fn reopen_keeps_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/folder/sluice.db");
        let t = 1_700_000_000_000 / MIN * MIN;
        let id = {
            let store = Store::open(&path, HOUR).unwrap();
            let id = fill(&store, t);
            store
                .update_insight_seen(id, t + 5_000, 3, 99.0, 7.5)
                .unwrap();
            assert!(store.rows_written() >= 8);
            assert!(store.write_stats().statements >= 8);
            assert!(store.size_bytes() > 0);
            id
        };
        let store = Store::open(&path, HOUR).unwrap();
        assert_eq!(store.rows_written(), 0);
        let rollups = store.rollups("pool.connections", t, t + MIN).unwrap();
        assert_eq!(rollups, vec![rollup("pool.connections", t, 4.0)]);
        assert_eq!(
            store.rollup_metrics().unwrap(),
            vec![
                "pool.connections".to_string(),
                "streams.downstream".to_string()
            ]
        );
        assert_eq!(store.rollups_since(0).unwrap().len(), 2);
        let insights = store.insights(0, 10).unwrap();
        assert_eq!(insights.len(), 1);
        let mut expected = insight(t, Severity::Warning, "hot");
        expected.id = id;
        expected.last_seen_ms = t + 5_000;
        expected.occurrences = 3;
        expected.value = 99.0;
        expected.score = 7.5;
        assert_eq!(insights[0], expected);
        let scaling_rows = store.scaling(0, 10).unwrap();
        assert_eq!(scaling_rows.len(), 1);
        assert_eq!(
            scaling_rows[0].metrics,
            serde_json::json!({ "streams": 40 })
        );
        assert_eq!(scaling_rows[0].to, 4);
        assert_eq!(store.scaling_counts(0, i64::MAX).unwrap(), (1, 1));
        let decisions = store.decisions(None, 0, 10).unwrap();
        assert_eq!(decisions.len(), 2);
        assert_eq!(decisions[0].connection_id, u64::MAX - 1);
        assert_eq!(store.decisions(Some("m2"), 0, 10).unwrap().len(), 1);
        assert_eq!(store.decisions(Some("nobody"), 0, 10).unwrap().len(), 0);
        let (report_id, generated, body) =
            store.latest_report(ReportPeriod::Hourly).unwrap().unwrap();
        assert_eq!(generated, t);
        assert_eq!(body, serde_json::json!({ "at": t }));
        assert_eq!(store.report_body(report_id).unwrap(), Some(body));
        assert!(store.latest_report(ReportPeriod::Daily).unwrap().is_none());
        assert_eq!(
            store.reports(None, 10).unwrap(),
            vec![(report_id, ReportPeriod::Hourly, t - 3_600_000, t, t)]
        );
        assert!(
            store
                .reports(Some(ReportPeriod::Weekly), 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn prune_removes_only_old_rows() {
        let store = Store::open(Path::new(IN_MEMORY), HOUR).unwrap();
        let now = 10 * 3_600_000;
        let old = now - 2 * 3_600_000;
        let recent = now - 10 * MIN;
        fill(&store, old);
        let kept_id = fill(&store, recent);
        // An old insight seen again recently stays.
        let recurring = store
            .insert_insight(&insight(old, Severity::Critical, "recurring"))
            .unwrap();
        store
            .update_insight_seen(recurring, recent, 2, 1.0, 1.0)
            .unwrap();
        let counts = store.prune(now).unwrap();
        assert_eq!(
            counts,
            PruneCounts {
                rollups: 2,
                insights: 1,
                scaling: 1,
                decisions: 2,
                reports: 1,
                outcomes: 1,
            }
        );
        assert_eq!(counts.total(), 8);
        assert!(
            store
                .rollups_since(0)
                .unwrap()
                .iter()
                .all(|r| r.ts_ms == recent)
        );
        assert_eq!(store.rollups_since(0).unwrap().len(), 2);
        let ids: Vec<i64> = store
            .insights(0, 10)
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, vec![recurring, kept_id]);
        assert_eq!(store.scaling(0, 10).unwrap().len(), 1);
        assert_eq!(store.decisions(None, 0, 10).unwrap().len(), 2);
        assert_eq!(store.reports(None, 10).unwrap().len(), 1);
        assert_eq!(store.prune(now).unwrap().total(), 0);
    }

    #[test]
    fn non_sqlite_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(
            &path,
            "this is certainly not a database, just some text\n".repeat(20),
        )
        .unwrap();
        let err = Store::open(&path, HOUR).unwrap_err();
        assert!(matches!(err, StoreError::NotSqlite { .. }), "{err:?}");
        assert!(err.to_string().contains("notes.txt"), "{err}");
        let err = Store::open_read_only(&path).unwrap_err();
        assert!(matches!(err, StoreError::NotSqlite { .. }), "{err:?}");
    }

    #[test]
    fn a_store_from_schema_one_gets_the_tables_added_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let store = Store::open(&path, HOUR).unwrap();
            fill(&store, 5 * MIN);
            let conn = store.conn.lock();
            conn.execute_batch("DROP TABLE route_outcomes; PRAGMA user_version = 1;")
                .unwrap();
        }
        // Still readable as it is, e.g. by `sluice report` while an older build writes it.
        let reader = Store::open_read_only(&path).unwrap();
        assert_eq!(reader.rollups_since(0).unwrap().len(), 2);
        drop(reader);
        // Opened for writing, it gains the missing table and keeps its rows.
        let store = Store::open(&path, HOUR).unwrap();
        assert_eq!(store.rollups_since(0).unwrap().len(), 2);
        assert!(store.outcomes(0, 10).unwrap().is_empty());
        store.prune(i64::MAX).unwrap();
        let version: i64 = store
            .conn
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_and_missing_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 7).unwrap();
        }
        let err = Store::open(&path, HOUR).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 7, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("future.db"), "{err}");

        let missing = dir.path().join("missing.db");
        let err = Store::open_read_only(&missing).unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.db"), "{err}");
        assert!(!missing.exists());

        let plain = dir.path().join("plain.db");
        Connection::open(&plain)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER)")
            .unwrap();
        let err = Store::open_read_only(&plain).unwrap_err();
        assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    }

    #[test]
    fn read_only_reads_while_writer_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.db");
        let writer = Store::open(&path, HOUR).unwrap();
        fill(&writer, 5 * MIN);
        let reader = Store::open_read_only(&path).unwrap();
        assert!(reader.is_read_only());
        assert_eq!(reader.rollups_since(0).unwrap().len(), 2);
        // The writer keeps writing while the reader is open; the reader sees new commits.
        writer
            .write_rollups(&[rollup("pool.connections", 6 * MIN, 5.0)])
            .unwrap();
        assert_eq!(
            reader
                .rollups("pool.connections", 0, i64::MAX)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(reader.insights(0, 10).unwrap().len(), 1);
        let err = reader
            .write_rollups(&[rollup("pool.connections", 7 * MIN, 5.0)])
            .unwrap_err();
        assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
        assert!(matches!(
            reader.prune(i64::MAX),
            Err(StoreError::ReadOnly { .. })
        ));
        drop(writer);
        // After the writer closed (and checkpointed) the reader still reads, and a fresh
        // read-only open works too.
        assert_eq!(reader.rollups_since(0).unwrap().len(), 3);
        drop(reader);
        let again = Store::open_read_only(&path).unwrap();
        assert_eq!(again.rollups_since(0).unwrap().len(), 3);
    }

    /// A rollup of `metric` at `ts_ms` over `count` samples.
    fn partial(metric: &str, ts_ms: i64, avg: f64, count: u32) -> Rollup {
        Rollup {
            count,
            ..rollup(metric, ts_ms, avg)
        }
    }

    #[test]
    fn rollup_upsert_replaces_same_minute() {
        let store = Store::open(Path::new(IN_MEMORY), HOUR).unwrap();
        // The minute in progress, stored after 10 samples, then finished.
        store
            .write_rollups(&[partial("pool.connections", MIN, 1.0, 10)])
            .unwrap();
        store
            .write_rollups(&[
                rollup("pool.connections", MIN, 2.0),
                rollup("pool.connections", 2 * MIN, 3.0),
            ])
            .unwrap();
        let rows = store.rollups("pool.connections", 0, i64::MAX).unwrap();
        assert_eq!(
            rows,
            vec![
                rollup("pool.connections", MIN, 2.0),
                rollup("pool.connections", 2 * MIN, 3.0)
            ]
        );
        assert_eq!(store.write_stats().rollups_skipped, 0);
        // The window is half-open.
        assert_eq!(
            store
                .rollups("pool.connections", MIN, 2 * MIN)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn insights_between_orders_by_severity_and_counts() {
        let store = Store::open(Path::new(IN_MEMORY), HOUR).unwrap();
        store
            .insert_insight(&insight(10, Severity::Info, "a"))
            .unwrap();
        store
            .insert_insight(&insight(20, Severity::Critical, "b"))
            .unwrap();
        store
            .insert_insight(&insight(30, Severity::Warning, "c"))
            .unwrap();
        store
            .insert_insight(&insight(500, Severity::Critical, "later"))
            .unwrap();
        let titles: Vec<String> = store
            .insights_between(0, 100, 10)
            .unwrap()
            .into_iter()
            .map(|i| i.title)
            .collect();
        assert_eq!(titles, vec!["b", "c", "a"]);
        let mut counts = store.insight_counts(0, 100).unwrap();
        counts.sort();
        assert_eq!(
            counts,
            vec![
                (Severity::Info, 1),
                (Severity::Warning, 1),
                (Severity::Critical, 1)
            ]
        );
    }

    #[test]
    fn a_forward_clock_jump_keeps_the_newest_retention() {
        let store = Store::open(Path::new(IN_MEMORY), HOUR).unwrap();
        let hour = duration_ms(HOUR);
        let last = 100 * hour;
        // Two hours of history, one row of each kind every 10 minutes, up to `last`.
        for step in 0..=12 {
            fill(&store, last - step * 10 * MIN);
        }
        // The clock jumps ten retentions ahead before anything is written at the new time.
        let counts = store.prune(last + 10 * hour).unwrap();
        // Rows more than an hour older than the newest go (70 to 120 min back: 6 steps of 8
        // rows); the last hour (0 to 60 min back: 7 steps) stays.
        let kept = |rows: &[Rollup]| rows.iter().all(|r| r.ts_ms >= last - hour);
        let rollups = store.rollups_since(0).unwrap();
        assert!(kept(&rollups), "{rollups:?}");
        assert_eq!(rollups.len(), 2 * 7, "0..=60 min back, 2 metrics");
        assert_eq!(counts.rollups, 2 * 6);
        assert_eq!(counts.total(), 8 * 6);
        assert_eq!(store.insights(0, 100).unwrap().len(), 7);
        assert_eq!(store.scaling(0, 100).unwrap().len(), 7);
        assert_eq!(store.decisions(None, 0, 100).unwrap().len(), 14);
        assert_eq!(store.outcomes(0, 100).unwrap().len(), 7);
        assert_eq!(store.reports(None, 100).unwrap().len(), 7);
        // Again at the jumped time: nothing more goes.
        assert_eq!(store.prune(last + 10 * hour).unwrap().total(), 0);
        // Once the store is written at the new time, the old hour ages out behind it.
        let later = last + 10 * hour;
        store
            .write_rollups(&[rollup("pool.connections", later, 1.0)])
            .unwrap();
        store.prune(later).unwrap();
        assert_eq!(
            store.rollups_since(0).unwrap(),
            vec![rollup("pool.connections", later, 1.0)]
        );
    }

    #[test]
    fn a_backward_clock_jump_does_not_overwrite_rollups() {
        let store = Store::open(Path::new(IN_MEMORY), HOUR).unwrap();
        let metric = "pool.connections";
        let stored: Vec<Rollup> = (1..=5).map(|m| rollup(metric, m * MIN, 4.0)).collect();
        store.write_rollups(&stored).unwrap();
        // The clock goes back three minutes: the engine stores the minutes it revisits again,
        // as partial rollups every 10 samples and then whole.
        store
            .write_rollups(&[partial(metric, 3 * MIN, 9.0, 10)])
            .unwrap();
        store
            .write_rollups(&[partial(metric, 3 * MIN, 9.0, 30)])
            .unwrap();
        store
            .write_rollups(&[
                rollup(metric, 3 * MIN, 9.0),
                partial(metric, 4 * MIN, 9.0, 10),
            ])
            .unwrap();
        // The newest minute, already complete, is not replaced by as many samples either.
        store
            .write_rollups(&[rollup(metric, 5 * MIN, 9.0)])
            .unwrap();
        assert_eq!(store.rollups(metric, 0, i64::MAX).unwrap(), stored);
        assert_eq!(store.write_stats().rollups_skipped, 5);
        // A minute stored incomplete (the process started in it) is not replaced by a fuller
        // one once a later minute is stored: the clock went back.
        store
            .write_rollups(&[
                partial("pool.cap_usage", MIN, 0.5, 20),
                rollup("pool.cap_usage", 2 * MIN, 0.5),
            ])
            .unwrap();
        store
            .write_rollups(&[rollup("pool.cap_usage", MIN, 0.9)])
            .unwrap();
        assert_eq!(
            store.rollups("pool.cap_usage", 0, 2 * MIN).unwrap(),
            vec![partial("pool.cap_usage", MIN, 0.5, 20)]
        );
        assert_eq!(store.write_stats().rollups_skipped, 6);
        // Another metric's history is its own: its first minute is stored.
        store
            .write_rollups(&[rollup("streams.downstream", 3 * MIN, 9.0)])
            .unwrap();
        assert_eq!(
            store
                .rollups("streams.downstream", 0, i64::MAX)
                .unwrap()
                .len(),
            1
        );
        // Minutes never stored are stored (a gap the clock revisits), and once the clock is
        // past the newest minute again, the minute in progress grows as before.
        store.write_rollups(&[rollup(metric, 0, 9.0)]).unwrap();
        store
            .write_rollups(&[partial(metric, 6 * MIN, 5.0, 10)])
            .unwrap();
        store
            .write_rollups(&[rollup(metric, 6 * MIN, 6.0)])
            .unwrap();
        let rows = store.rollups(metric, 0, i64::MAX).unwrap();
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0], rollup(metric, 0, 9.0));
        assert_eq!(rows[6], rollup(metric, 6 * MIN, 6.0));
        assert_eq!(store.write_stats().rollups_skipped, 6);
    }

    #[test]
    fn normal_pruning_still_deletes_old_rows() {
        let store = Store::open(Path::new(IN_MEMORY), HOUR).unwrap();
        let hour = duration_ms(HOUR);
        let now = 50 * hour;
        fill(&store, now - 3 * hour);
        fill(&store, now - 2 * MIN);
        let counts = store.prune(now).unwrap();
        assert_eq!(counts.total(), 8, "{counts:?}");
        assert_eq!(store.rollups_since(0).unwrap().len(), 2);
        assert!(
            store
                .rollups_since(0)
                .unwrap()
                .iter()
                .all(|r| r.ts_ms == now - 2 * MIN)
        );
        // A clock behind the newest row prunes from the clock (it deletes less, never more).
        fill(&store, now - 70 * MIN);
        assert_eq!(store.prune(now - 20 * MIN).unwrap().total(), 0);
        assert_eq!(store.prune(now).unwrap().total(), 8);
        // A table nobody writes any more is pruned behind the others: the newest row of any
        // table counts, not the newest of its own.
        let quiet = Store::open(Path::new(IN_MEMORY), HOUR).unwrap();
        quiet.insert_scaling(&scaling(now - 3 * hour, 1)).unwrap();
        quiet
            .write_rollups(&[rollup("pool.connections", now, 1.0)])
            .unwrap();
        assert_eq!(
            quiet.prune(now).unwrap(),
            PruneCounts {
                scaling: 1,
                ..PruneCounts::default()
            }
        );
        assert!(quiet.scaling(0, 10).unwrap().is_empty());
        // An empty store prunes nothing.
        let empty = Store::open(Path::new(IN_MEMORY), HOUR).unwrap();
        assert_eq!(empty.prune(now).unwrap(), PruneCounts::default());
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
    }
}
