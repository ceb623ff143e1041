//! A [`Store`] over a real embedded database: one SQLite table
//! `kv(k INTEGER PRIMARY KEY, v INTEGER NOT NULL)` in a file, each write
//! batch applied in one transaction.
#![allow(dead_code, unreachable_pub)]

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::SeqCst},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use larder::{Change, Store};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

/// The table, through one connection.
pub struct Sqlite {
    conn: Mutex<Connection>,
    /// Write calls (transactions) so far; shared, to read after the store
    /// moved into a cache.
    pub write_calls: Arc<AtomicU64>,
}

/// A fresh database file path in the temporary directory, removed on drop.
pub struct TempDb(pub PathBuf);

impl TempDb {
    pub fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        TempDb(std::env::temp_dir().join(format!(
            "larder-{name}-{}-{nanos}.sqlite",
            std::process::id()
        )))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Sqlite {
    /// Opens (creating if needed) the table in `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v INTEGER NOT NULL);",
        )?;
        Ok(Sqlite {
            conn: Mutex::new(conn),
            write_calls: Arc::default(),
        })
    }

    /// Every row, read through a new connection.
    pub fn dump(path: &Path) -> rusqlite::Result<Vec<(i64, i64)>> {
        let conn = Connection::open(path)?;
        let mut stmt = conn.prepare("SELECT k, v FROM kv ORDER BY k")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect()
    }
}

impl Store<i64, i64> for Sqlite {
    type Error = rusqlite::Error;

    fn load(&self, key: &i64) -> Result<Option<i64>, Self::Error> {
        self.conn
            .lock()
            .query_row("SELECT v FROM kv WHERE k = ?1", params![key], |row| {
                row.get(0)
            })
            .optional()
    }

    fn write(&self, batch: &[(i64, Change<i64>)]) -> Result<(), Self::Error> {
        self.write_calls.fetch_add(1, SeqCst);
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        {
            let mut put = tx.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")?;
            let mut delete = tx.prepare_cached("DELETE FROM kv WHERE k = ?1")?;
            for (key, change) in batch {
                match change {
                    Change::Put(v) => put.execute(params![key, v])?,
                    Change::Delete => delete.execute(params![key])?,
                };
            }
        }
        tx.commit()
    }
}
