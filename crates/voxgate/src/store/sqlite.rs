//! SQLite backend (bundled SQLite through sqlx; WAL journal). Migrations are embedded from
//! `migrations/sqlite/` and run at open.

use super::{
    AgentCallRecord, AgentStore, AgentTurnRecord, BotCreateError, BotRecord, BotStore, CallRecord,
    CallStore, KeyRecord, KeyStore, SipUserRecord, SipUserStore, Store, StoreError,
    TranscriptRecord, TurnRecord,
};
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
                Migration::new(
                    3,
                    Cow::Borrowed("bots"),
                    MigrationType::Simple,
                    include_str!("../../migrations/sqlite/0003_bots.sql").into_sql_str(),
                    false,
                ),
                Migration::new(
                    4,
                    Cow::Borrowed("auth"),
                    MigrationType::Simple,
                    include_str!("../../migrations/sqlite/0004_auth.sql").into_sql_str(),
                    false,
                ),
                Migration::new(
                    5,
                    Cow::Borrowed("agents"),
                    MigrationType::Simple,
                    include_str!("../../migrations/sqlite/0005_agents.sql").into_sql_str(),
                    false,
                ),
                Migration::new(
                    6,
                    Cow::Borrowed("sip users"),
                    MigrationType::Simple,
                    include_str!("../../migrations/sqlite/0006_sip_users.sql").into_sql_str(),
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
        user_id: r.try_get("user_id")?,
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
        let r = sqlx::query("INSERT OR IGNORE INTO calls (id, transport, caller, callee, codec, created_at, user_id) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(&c.id)
            .bind(&c.transport)
            .bind(&c.caller)
            .bind(&c.callee)
            .bind(&c.codec)
            .bind(c.created_at)
            .bind(&c.user_id)
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

fn bot_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<BotRecord, sqlx::Error> {
    Ok(BotRecord {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        number: r.try_get("number")?,
        goal: r.try_get("goal")?,
        webhook: r.try_get("webhook")?,
        context: r.try_get("context")?,
        voice: r.try_get("voice")?,
        transfer_to: r.try_get("transfer_to")?,
        greeting: r.try_get("greeting")?,
        secret: r.try_get("secret")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
    })
}

fn turn_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<TurnRecord, sqlx::Error> {
    Ok(TurnRecord {
        call_id: r.try_get("call_id")?,
        index: r.try_get("idx")?,
        bot_id: r.try_get("bot_id")?,
        user_text: r.try_get("user_text")?,
        llm_suggestion: r.try_get("llm_suggestion")?,
        reply: r.try_get("reply")?,
        action: r.try_get("action")?,
        webhook_ms: r.try_get("webhook_ms")?,
        error_code: r.try_get("error_code")?,
        error: r.try_get("error")?,
        created_at: r.try_get("created_at")?,
    })
}

#[async_trait]
impl BotStore for SqliteStore {
    async fn bot_create(
        &self,
        bot: &BotRecord,
        pool: &[String],
        max_per_user: u32,
    ) -> Result<BotRecord, BotCreateError> {
        // Two creations may pick the same free number; the UNIQUE constraint decides and the
        // loser tries the next one.
        for _ in 0..8 {
            let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM bots WHERE user_id = ?")
                .bind(&bot.user_id)
                .fetch_one(&self.pool)
                .await
                .map_err(err)?;
            if count >= max_per_user as i64 {
                return Err(BotCreateError::TooMany(max_per_user));
            }
            let used: Vec<(String,)> = sqlx::query_as("SELECT number FROM bots")
                .fetch_all(&self.pool)
                .await
                .map_err(err)?;
            let used: std::collections::HashSet<String> = used.into_iter().map(|u| u.0).collect();
            let Some(number) = pool.iter().find(|n| !used.contains(*n)) else {
                return Err(BotCreateError::NoNumber);
            };
            let mut b = bot.clone();
            b.number = number.clone();
            let r = sqlx::query("INSERT INTO bots (id, user_id, number, goal, webhook, context, voice, transfer_to, greeting, secret, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(&b.id)
                .bind(&b.user_id)
                .bind(&b.number)
                .bind(&b.goal)
                .bind(&b.webhook)
                .bind(&b.context)
                .bind(&b.voice)
                .bind(&b.transfer_to)
                .bind(&b.greeting)
                .bind(&b.secret)
                .bind(&b.status)
                .bind(b.created_at)
                .execute(&self.pool)
                .await;
            match r {
                Ok(_) => return Ok(b),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(err(e).into()),
            }
        }
        Err(BotCreateError::Store(StoreError::Backend(
            "could not allocate a number (contention)".into(),
        )))
    }

    async fn bots(&self, user_id: &str) -> Result<Vec<BotRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM bots WHERE user_id = ? ORDER BY created_at, id")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        rows.iter()
            .map(bot_from_row)
            .collect::<Result<_, _>>()
            .map_err(err)
    }

    async fn bot(&self, id: &str) -> Result<Option<BotRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM bots WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.as_ref().map(bot_from_row).transpose().map_err(err)
    }

    async fn bot_by_number(&self, number: &str) -> Result<Option<BotRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM bots WHERE number = ?")
            .bind(number)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.as_ref().map(bot_from_row).transpose().map_err(err)
    }

    async fn bot_delete(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM bots WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(r.rows_affected() > 0)
    }

    async fn bot_call_added(&self, call_id: &str, bot_id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR IGNORE INTO bot_calls (call_id, bot_id, created_at) VALUES (?, ?, ?)",
        )
        .bind(call_id)
        .bind(bot_id)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn turn_added(&self, t: &TurnRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT OR REPLACE INTO bot_turns (call_id, idx, bot_id, user_text, llm_suggestion, reply, action, webhook_ms, error_code, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&t.call_id)
            .bind(t.index)
            .bind(&t.bot_id)
            .bind(&t.user_text)
            .bind(&t.llm_suggestion)
            .bind(&t.reply)
            .bind(&t.action)
            .bind(t.webhook_ms)
            .bind(t.error_code)
            .bind(&t.error)
            .bind(t.created_at)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn turns(&self, call_id: &str) -> Result<Vec<TurnRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM bot_turns WHERE call_id = ? ORDER BY idx")
            .bind(call_id)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        rows.iter()
            .map(turn_from_row)
            .collect::<Result<_, _>>()
            .map_err(err)
    }

    async fn usage_add(&self, scope: &str, period: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("INSERT INTO usage_counters (scope, period, count) VALUES (?, ?, 1) ON CONFLICT (scope, period) DO UPDATE SET count = count + 1 RETURNING count")
            .bind(scope)
            .bind(period)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        Ok(n)
    }

    async fn usage(&self, scope: &str, period: &str) -> Result<i64, StoreError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT count FROM usage_counters WHERE scope = ? AND period = ?")
                .bind(scope)
                .bind(period)
                .fetch_optional(&self.pool)
                .await
                .map_err(err)?;
        Ok(row.map_or(0, |r| r.0))
    }
}

fn key_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<KeyRecord, sqlx::Error> {
    Ok(KeyRecord {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        label: r.try_get("label")?,
        secret_hash: r.try_get("secret_hash")?,
        admin: r.try_get::<i64, _>("admin")? != 0,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

#[async_trait]
impl AgentStore for SqliteStore {
    async fn agent_call_added(&self, a: &AgentCallRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT OR REPLACE INTO agent_calls (call_id, user_id, number, prompt, first_message, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&a.call_id)
            .bind(&a.user_id)
            .bind(&a.number)
            .bind(&a.prompt)
            .bind(&a.first_message)
            .bind(a.created_at)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn agent_call(&self, call_id: &str) -> Result<Option<AgentCallRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM agent_calls WHERE call_id = ?")
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.map(|r| -> Result<AgentCallRecord, sqlx::Error> {
            Ok(AgentCallRecord {
                call_id: r.try_get("call_id")?,
                user_id: r.try_get("user_id")?,
                number: r.try_get("number")?,
                prompt: r.try_get("prompt")?,
                first_message: r.try_get("first_message")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
        .map_err(err)
    }

    async fn agent_turn_added(&self, t: &AgentTurnRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT OR REPLACE INTO agent_turns (call_id, idx, role, text, heard, interrupted, tool, endpoint_ms, asr_ms, llm_first_ms, first_audio_ms, prompt_tokens, completion_tokens, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&t.call_id)
            .bind(t.index)
            .bind(&t.role)
            .bind(&t.text)
            .bind(&t.heard)
            .bind(t.interrupted)
            .bind(&t.tool)
            .bind(t.endpoint_ms)
            .bind(t.asr_ms)
            .bind(t.llm_first_ms)
            .bind(t.first_audio_ms)
            .bind(t.prompt_tokens)
            .bind(t.completion_tokens)
            .bind(&t.error)
            .bind(t.created_at)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn agent_turns(&self, call_id: &str) -> Result<Vec<AgentTurnRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM agent_turns WHERE call_id = ? ORDER BY idx")
            .bind(call_id)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| -> Result<AgentTurnRecord, sqlx::Error> {
                Ok(AgentTurnRecord {
                    call_id: r.try_get("call_id")?,
                    index: r.try_get("idx")?,
                    role: r.try_get("role")?,
                    text: r.try_get("text")?,
                    heard: r.try_get("heard")?,
                    interrupted: r.try_get("interrupted")?,
                    tool: r.try_get("tool")?,
                    endpoint_ms: r.try_get("endpoint_ms")?,
                    asr_ms: r.try_get("asr_ms")?,
                    llm_first_ms: r.try_get("llm_first_ms")?,
                    first_audio_ms: r.try_get("first_audio_ms")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    error: r.try_get("error")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(err)
    }
}

#[async_trait]
#[async_trait]
impl SipUserStore for SqliteStore {
    async fn sip_user_put(&self, u: &SipUserRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sip_users (username, user_id, realm, ha1_md5, ha1_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT(username) DO UPDATE SET user_id = excluded.user_id, realm = excluded.realm, \
             ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256",
        )
        .bind(&u.username)
        .bind(&u.user_id)
        .bind(&u.realm)
        .bind(&u.ha1_md5)
        .bind(&u.ha1_sha256)
        .bind(u.created_at)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn sip_user(&self, username: &str) -> Result<Option<SipUserRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM sip_users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.map(|r| sip_user_from_row(&r)).transpose().map_err(err)
    }

    async fn sip_users(&self) -> Result<Vec<SipUserRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM sip_users ORDER BY username")
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        rows.iter()
            .map(sip_user_from_row)
            .collect::<Result<_, _>>()
            .map_err(err)
    }

    async fn sip_user_delete(&self, username: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM sip_users WHERE username = ?")
            .bind(username)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(r.rows_affected() > 0)
    }

    async fn sip_users_exist(&self) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sip_users")
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        Ok(n > 0)
    }
}

fn sip_user_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<SipUserRecord, sqlx::Error> {
    Ok(SipUserRecord {
        username: r.try_get("username")?,
        user_id: r.try_get("user_id")?,
        realm: r.try_get("realm")?,
        ha1_md5: r.try_get("ha1_md5")?,
        ha1_sha256: r.try_get("ha1_sha256")?,
        created_at: r.try_get("created_at")?,
    })
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn key_create(&self, k: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO api_keys (id, user_id, label, secret_hash, admin, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&k.id)
            .bind(&k.user_id)
            .bind(&k.label)
            .bind(&k.secret_hash)
            .bind(k.admin as i64)
            .bind(k.created_at)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.map(|r| key_from_row(&r)).transpose().map_err(err)
    }

    async fn keys(&self, user: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = match user {
            Some(u) => {
                sqlx::query("SELECT * FROM api_keys WHERE user_id = ? ORDER BY created_at, id")
                    .bind(u)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query("SELECT * FROM api_keys ORDER BY created_at, id")
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(err)?;
        rows.iter()
            .map(key_from_row)
            .collect::<Result<_, _>>()
            .map_err(err)
    }

    async fn key_revoke(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let r =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(err)?;
        Ok(r.rows_affected() > 0)
    }

    async fn keys_exist(&self) -> Result<bool, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT EXISTS(SELECT 1 FROM api_keys)")
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        Ok(n != 0)
    }

    async fn all_bots(&self) -> Result<Vec<BotRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM bots ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        rows.iter()
            .map(bot_from_row)
            .collect::<Result<_, _>>()
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

    #[tokio::test]
    async fn bots_numbers_turns_and_counters() {
        let s = SqliteStore::open("sqlite::memory:").await.unwrap();
        let pool = vec!["+1555000001".to_string(), "+1555000002".to_string()];
        let bot = |id: &str, user: &str| BotRecord {
            id: id.into(),
            user_id: user.into(),
            goal: "g".into(),
            webhook: "http://127.0.0.1/x".into(),
            secret: "s".into(),
            status: "active".into(),
            ..Default::default()
        };
        let a = s.bot_create(&bot("a", "u1"), &pool, 10).await.unwrap();
        let b = s.bot_create(&bot("b", "u2"), &pool, 10).await.unwrap();
        assert_eq!(
            (a.number.as_str(), b.number.as_str()),
            ("+1555000001", "+1555000002")
        );
        assert!(matches!(
            s.bot_create(&bot("c", "u1"), &pool, 10).await,
            Err(BotCreateError::NoNumber)
        ));
        assert!(matches!(
            s.bot_create(&bot("c", "u1"), &pool, 1).await,
            Err(BotCreateError::TooMany(1))
        ));
        assert!(s.bot_delete("a").await.unwrap());
        assert!(!s.bot_delete("a").await.unwrap());
        let c = s.bot_create(&bot("c", "u1"), &pool, 10).await.unwrap();
        assert_eq!(
            c.number, "+1555000001",
            "a deleted bot's number is free again"
        );
        assert_eq!(
            s.bot_by_number("+1555000001").await.unwrap().unwrap().id,
            "c"
        );
        assert_eq!(s.bots("u1").await.unwrap().len(), 1);
        assert_eq!(s.usage("bot:c:calls", "2026-11-26").await.unwrap(), 0);
        for want in 1..=3 {
            assert_eq!(
                s.usage_add("bot:c:calls", "2026-11-26").await.unwrap(),
                want
            );
        }
        assert_eq!(s.usage("bot:c:calls", "2026-11-27").await.unwrap(), 0);
        s.call_created(&CallRecord {
            id: "call-1".into(),
            transport: "twilio".into(),
            created_at: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        s.bot_call_added("call-1", "c", 1).await.unwrap();
        for i in [2, 1] {
            s.turn_added(&TurnRecord {
                call_id: "call-1".into(),
                index: i,
                bot_id: "c".into(),
                user_text: format!("u{i}"),
                error_code: (i == 2).then_some(408),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let t = s.turns("call-1").await.unwrap();
        assert_eq!(
            t.iter()
                .map(|t| (t.user_text.as_str(), t.error_code))
                .collect::<Vec<_>>(),
            [("u1", None), ("u2", Some(408))]
        );
    }
}
