//! SQLite backend (bundled SQLite through sqlx; WAL journal). Migrations are embedded from
//! `migrations/sqlite/` and run at open.

use super::{CallRecord, CallStore, Store, StoreError, TranscriptRecord};
use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlSafeStr, SqlitePool};
use std::borrow::Cow;
use std::str::FromStr;

/// The SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite:PATH` or `sqlite::memory:`) and
    /// applies migrations.
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be opened or a migration fails.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(err)?;
        let migrator = Migrator {
            migrations: Cow::Owned(vec![
                Migration::new(
                    1,
                    Cow::Borrowed("calls"),
                    MigrationType::Simple,
                    include_str!("../../migrations/sqlite/0001_calls.sql").into_sql_str(),
                    false,
                ),
                Migration::new(
                    2,
                    Cow::Borrowed("call quality"),
                    MigrationType::Simple,
                    include_str!("../../migrations/sqlite/0002_call_quality.sql").into_sql_str(),
                    false,
                ),
            ]),
            ..Migrator::DEFAULT
        };
        migrator.run(&pool).await.map_err(err)?;
        Ok(SqliteStore { pool })
    }
}

fn call_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<CallRecord, sqlx::Error> {
    Ok(CallRecord {
        id: r.try_get("id")?,
        transport: r.try_get("transport")?,
        caller: r.try_get("caller")?,
        callee: r.try_get("callee")?,
        codec: r.try_get("codec")?,
        created_at: r.try_get("created_at")?,
        answered_at: r.try_get("answered_at")?,
        ended_at: r.try_get("ended_at")?,
        hangup_reason: r.try_get("hangup_reason")?,
        hangup_initiator: r.try_get("hangup_initiator")?,
        quality: r
            .try_get::<Option<String>, _>("quality")?
            .and_then(|q| serde_json::from_str(&q).ok()),
    })
}

fn transcript_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<TranscriptRecord, sqlx::Error> {
    Ok(TranscriptRecord {
        call_id: r.try_get("call_id")?,
        index: r.try_get("idx")?,
        start_ms: r.try_get("start_ms")?,
        end_ms: r.try_get("end_ms")?,
        text: r.try_get("text")?,
        created_at: r.try_get("created_at")?,
    })
}

#[async_trait]
impl CallStore for SqliteStore {
    async fn call_created(&self, c: &CallRecord) -> Result<(), StoreError> {
        // A plain INSERT: an id used before is a conflict (reusing it would mix two calls'
        // records and transcripts).
        let r = sqlx::query("INSERT OR IGNORE INTO calls (id, transport, caller, callee, codec, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&c.id)
            .bind(&c.transport)
            .bind(&c.caller)
            .bind(&c.callee)
            .bind(&c.codec)
            .bind(c.created_at)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("call `{}`", c.id)));
        }
        Ok(())
    }

    async fn call_answered(
        &self,
        id: &str,
        codec: &str,
        caller: Option<&str>,
        callee: Option<&str>,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE calls SET codec = ?, caller = COALESCE(?, caller), callee = COALESCE(?, callee), answered_at = COALESCE(answered_at, ?) WHERE id = ?")
            .bind(codec)
            .bind(caller)
            .bind(callee)
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn call_ended(
        &self,
        id: &str,
        at: i64,
        reason: &str,
        initiator: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE calls SET ended_at = ?, hangup_reason = ?, hangup_initiator = ? WHERE id = ? AND ended_at IS NULL")
            .bind(at)
            .bind(reason)
            .bind(initiator)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn transcript_added(&self, t: &TranscriptRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT OR REPLACE INTO transcripts (call_id, idx, start_ms, end_ms, text, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&t.call_id)
            .bind(t.index)
            .bind(t.start_ms)
            .bind(t.end_ms)
            .bind(&t.text)
            .bind(t.created_at)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn call_quality(&self, id: &str, quality: &serde_json::Value) -> Result<(), StoreError> {
        sqlx::query("UPDATE calls SET quality = ? WHERE id = ?")
            .bind(quality.to_string())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn call(&self, id: &str) -> Result<Option<CallRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM calls WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.as_ref().map(call_from_row).transpose().map_err(err)
    }

    async fn transcript(&self, id: &str) -> Result<Vec<TranscriptRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM transcripts WHERE call_id = ? ORDER BY idx")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        rows.iter()
            .map(transcript_from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store conformance checks, run here against a real SQLite file.
    #[tokio::test]
    async fn call_lifecycle_and_transcript_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        {
            let s = SqliteStore::open(&url).await.unwrap();
            let c = CallRecord {
                id: "c1".into(),
                transport: "websocket".into(),
                created_at: 10,
                ..Default::default()
            };
            s.call_created(&c).await.unwrap();
            assert!(matches!(
                s.call_created(&c).await,
                Err(StoreError::Conflict(_))
            ));
            s.call_answered("c1", "pcmu", Some("alice"), None, 20)
                .await
                .unwrap();
            for i in [2, 1] {
                s.transcript_added(&TranscriptRecord {
                    call_id: "c1".into(),
                    index: i,
                    start_ms: Some(i * 100),
                    end_ms: Some(i * 100 + 50),
                    text: format!("t{i}"),
                    created_at: 30,
                })
                .await
                .unwrap();
            }
            s.call_ended("c1", 40, "hangup", "user").await.unwrap();
            s.call_ended("c1", 50, "again", "system").await.unwrap();
        }
        let s = SqliteStore::open(&url).await.unwrap();
        let c = s.call("c1").await.unwrap().unwrap();
        assert_eq!(
            (
                c.codec.as_deref(),
                c.caller.as_deref(),
                c.answered_at,
                c.ended_at
            ),
            (Some("pcmu"), Some("alice"), Some(20), Some(40))
        );
        assert_eq!(
            (c.hangup_reason.as_deref(), c.hangup_initiator.as_deref()),
            (Some("hangup"), Some("user"))
        );
        let t: Vec<String> = s
            .transcript("c1")
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.text)
            .collect();
        assert_eq!(t, vec!["t1", "t2"]);
        assert!(s.call("nope").await.unwrap().is_none());
    }
}
