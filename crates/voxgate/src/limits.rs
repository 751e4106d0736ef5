//! Rate limits and quotas per user (`[limits]`, README "Limits").
//!
//! - Originations per minute are counted in the store's `usage_counters` (scope
//!   `user:<id>:originations`, period the UTC minute `2026-11-26T10:31`): every node on one
//!   database shares them and they survive restarts. A fixed one-minute window.
//! - Concurrent calls are counted from the node's live calls; concurrent streaming WebSocket
//!   connections in process memory (a crashed node's connections are gone with it, so a
//!   count kept in the store would only leak).
//!
//! The per-user limits apply to authenticated users. A server without authentication (loopback
//! only, [`Principal::local`]) has one user, its operator: only the server-wide `calls` cap
//! applies to it.

use crate::auth::Principal;
use crate::config::LimitsConfig;
use crate::store::BotStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use voxgate_call::CallCore;

/// Counts a refusal in `voxgate_rate_limited_total{limit}`.
fn refused(limit: &'static str) {
    metrics::counter!("voxgate_rate_limited_total", "limit" => limit).increment(1);
}

/// A refusal: what to say and when to try again (seconds, for `Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LimitError {
    pub message: String,
    pub retry_after_secs: u64,
}

/// The limits of this server.
pub struct Limits {
    cfg: LimitsConfig,
    store: Arc<dyn BotStore>,
    streams: Mutex<HashMap<String, u32>>,
}

/// Holds one of a user's concurrent streaming connections; released on drop.
pub struct StreamSlot {
    limits: Arc<Limits>,
    user: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut s = self.limits.streams.lock().expect("streams lock");
        if let Some(n) = s.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.remove(&self.user);
            }
        }
    }
}

impl Limits {
    pub fn new(cfg: LimitsConfig, store: Arc<dyn BotStore>) -> Arc<Self> {
        Arc::new(Limits {
            cfg,
            store,
            streams: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one outbound call of `user` in this UTC minute.
    ///
    /// # Errors
    /// [`LimitError`] past `originations_per_minute` (retry at the next minute), or when the
    /// store fails (retry in 1 s).
    pub async fn originate(&self, p: &Principal) -> Result<(), LimitError> {
        if *p == Principal::local() {
            return Ok(());
        }
        let user = p.user.as_str();
        let (limit, _, _) = self.cfg.for_user(user);
        let now = chrono::Utc::now();
        let period = now.format("%Y-%m-%dT%H:%M").to_string();
        let n = self
            .store
            .usage_add(&format!("user:{user}:originations"), &period)
            .await
            .map_err(|e| LimitError {
                message: format!("cannot count calls: {e}"),
                retry_after_secs: 1,
            })?;
        if n > i64::from(limit) {
            refused("originations_per_minute");
            let secs = 60 - u64::from(chrono::Timelike::second(&now));
            return Err(LimitError {
                message: format!(
                    "rate limit: {limit} outbound calls per minute; try again in {secs} s"
                ),
                retry_after_secs: secs,
            });
        }
        Ok(())
    }

    /// Room for one more call of `user` on this node (`calls_per_user`, `calls`).
    ///
    /// # Errors
    /// [`LimitError`] when either cap is reached (retry in 5 s).
    pub fn call_room(&self, core: &CallCore, p: &Principal) -> Result<(), LimitError> {
        let user = p.user.as_str();
        let (_, _, per_user) = self.cfg.for_user(user);
        let (total, mine) = core.counts(user);
        if total >= self.cfg.calls as usize {
            refused("calls");
            return Err(LimitError {
                message: format!("the server is at its limit of {} calls", self.cfg.calls),
                retry_after_secs: 5,
            });
        }
        if *p == Principal::local() {
            return Ok(());
        }
        if mine >= per_user as usize {
            refused("calls_per_user");
            return Err(LimitError {
                message: format!("limit: {per_user} concurrent calls per user"),
                retry_after_secs: 5,
            });
        }
        Ok(())
    }

    /// Takes one of `user`'s concurrent streaming connections.
    ///
    /// # Errors
    /// [`LimitError`] when `streams_per_user` are open (retry in 5 s).
    pub fn stream(self: &Arc<Self>, p: &Principal) -> Result<Option<StreamSlot>, LimitError> {
        if *p == Principal::local() {
            return Ok(None);
        }
        let user = p.user.as_str();
        let (_, limit, _) = self.cfg.for_user(user);
        let mut s = self.streams.lock().expect("streams lock");
        let n = s.entry(user.to_string()).or_insert(0);
        if *n >= limit {
            refused("streams_per_user");
            return Err(LimitError {
                message: format!(
                    "limit: {limit} concurrent streaming connections per user; close one first"
                ),
                retry_after_secs: 5,
            });
        }
        *n += 1;
        Ok(Some(StreamSlot {
            limits: self.clone(),
            user: user.to_string(),
        }))
    }
}
