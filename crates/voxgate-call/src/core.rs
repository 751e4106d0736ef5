//! [`CallCore`]: the live calls of this node and what they share (speech engines, store, dialer,
//! settings). Adapters start calls here and find them by id; the server ends them all at shutdown.

use crate::actor::CallActor;
use crate::handle::{CallHandle, EndSignal, INBOX};
use crate::leg::{LegPort, PendingLeg, LEG_QUEUE};
use crate::ports::{CallContext, CallRecord, StoreError};
use crate::subscriber::Subscriber;
use crate::vocab::{now_ms, CallCommand, DialOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// How to start a call.
#[derive(Default)]
pub struct CallSpec {
    /// The call id (1–128 characters); a UUID when `None`.
    pub id: Option<String>,
    /// The user (tenant) the call belongs to: stored with it and shown by [`CallCore::list`];
    /// adapters let only this user (or an admin) see and control the call.
    pub owner: Option<String>,
    /// The transport stored for a call that starts without a leg (`sip` for a `/call/sip`
    /// client); a leg's own kind otherwise.
    pub kind: &'static str,
    /// The call's first leg, if it has one already.
    pub leg: Option<Box<dyn PendingLeg>>,
    /// Subscribed before anything is emitted (so that `incoming` reaches them).
    pub subscribers: Vec<Box<dyn Subscriber>>,
}

/// Why a call could not start. Its pending leg has been refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartError {
    /// The id is live, or was used by an earlier call.
    #[error("a call with id `{0}` already exists")]
    Conflict(String),
    #[error("{0}")]
    Store(String),
}

/// What `/call/lists` and the like show of a live call.
#[derive(Clone, Debug, PartialEq)]
pub struct CallInfo {
    pub id: String,
    /// Transport: `websocket`, `sip`, `twilio`.
    pub kind: String,
    /// Epoch ms.
    pub created_at: i64,
    /// The user the call belongs to ([`CallSpec::owner`]).
    pub owner: Option<String>,
    /// Free-form options set by the call's adapter ([`CallCore::set_option`]).
    pub option: serde_json::Value,
}

struct Entry {
    info: CallInfo,
    handle: CallHandle,
}

struct Inner {
    ctx: CallContext,
    calls: Mutex<HashMap<String, Entry>>,
    tasks: TaskTracker,
}

/// The call core of this node. Cheap to clone.
#[derive(Clone)]
pub struct CallCore {
    inner: Arc<Inner>,
}

impl CallCore {
    pub fn new(ctx: CallContext) -> Self {
        CallCore {
            inner: Arc::new(Inner {
                ctx,
                calls: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The shared context.
    pub fn context(&self) -> &CallContext {
        &self.inner.ctx
    }

    /// Background work that must finish before the server exits (transcripts still being
    /// computed after a hang-up, store writes, SIP BYEs): [`CallCore::shutdown`] waits for it.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Starts a call: records it (ids are never reused), attaches its leg, subscribes its
    /// subscribers and runs it on its own task. An inbound leg that rings is announced with
    /// `incoming`.
    ///
    /// # Errors
    /// [`StartError::Conflict`] for a live or used id (the leg is refused `busy`),
    /// [`StartError::Store`] when the store fails (refused with 603).
    pub async fn start(&self, spec: CallSpec) -> Result<CallHandle, StartError> {
        let id = spec
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let kind = spec.leg.as_ref().map_or(spec.kind, |l| l.info().kind);
        let (tx, rx) = mpsc::channel(INBOX);
        let (leg_tx, leg_rx) = mpsc::channel(LEG_QUEUE);
        let handle = CallHandle {
            id: id.as_str().into(),
            tx: tx.clone(),
            end: Arc::new(EndSignal::default()),
        };
        let created_at = now_ms();
        {
            let mut calls = self.inner.calls.lock().expect("calls lock");
            if calls.contains_key(&id) {
                drop(calls);
                if let Some(l) = spec.leg {
                    l.refuse("busy");
                }
                return Err(StartError::Conflict(id));
            }
            calls.insert(
                id.clone(),
                Entry {
                    info: CallInfo {
                        id: id.clone(),
                        kind: kind.to_string(),
                        created_at,
                        owner: spec.owner.clone(),
                        option: serde_json::json!({}),
                    },
                    handle: handle.clone(),
                },
            );
        }
        let rec = CallRecord {
            id: id.clone(),
            transport: kind.to_string(),
            created_at,
            user_id: spec.owner.clone(),
            ..Default::default()
        };
        if let Err(e) = self.inner.ctx.store.call_created(&rec).await {
            self.remove(&id);
            let (reason, err) = match e {
                StoreError::Conflict(_) => ("busy", StartError::Conflict(id)),
                StoreError::Backend(m) => ("failed", StartError::Store(m)),
            };
            if let Some(l) = spec.leg {
                l.refuse(reason);
            }
            return Err(err);
        }
        // The leg is attached before the call's task runs, so that it can deliver at once.
        let leg = spec.leg.map(|l| {
            l.into_leg(LegPort {
                tx: leg_tx.clone(),
                leg: 1,
            })
        });
        let actor = CallActor::new(
            id.clone(),
            kind,
            spec.owner.as_deref(),
            created_at,
            self.inner.ctx.clone(),
            self.inner.tasks.clone(),
            rx,
            (leg_tx, leg_rx),
            handle.end.clone(),
            leg,
            spec.subscribers,
        );
        drop(tx);
        let core = self.clone();
        self.inner.tasks.spawn(async move {
            actor.run().await;
            core.remove(&id);
        });
        Ok(handle)
    }

    /// Starts a call with no leg and dials: REST-originated calls, agents, scripts.
    ///
    /// # Errors
    /// As [`CallCore::start`]; dialling failures arrive as `error` and `hangup` events.
    pub async fn originate(
        &self,
        id: Option<String>,
        owner: Option<String>,
        opts: DialOptions,
        subscribers: Vec<Box<dyn Subscriber>>,
    ) -> Result<CallHandle, StartError> {
        let h = self
            .start(CallSpec {
                id,
                owner,
                kind: "sip",
                leg: None,
                subscribers,
            })
            .await?;
        let _ = h.command(CallCommand::Dial(opts)).await;
        Ok(h)
    }

    fn remove(&self, id: &str) {
        self.inner.calls.lock().expect("calls lock").remove(id);
    }

    /// The live call with this id.
    pub fn get(&self, id: &str) -> Option<CallHandle> {
        self.inner
            .calls
            .lock()
            .expect("calls lock")
            .get(id)
            .map(|e| e.handle.clone())
    }

    /// Sets the options shown for a live call.
    pub fn set_option(&self, id: &str, option: serde_json::Value) {
        if let Some(e) = self.inner.calls.lock().expect("calls lock").get_mut(id) {
            e.info.option = option;
        }
    }

    /// Live calls, oldest first.
    pub fn list(&self) -> Vec<CallInfo> {
        let mut v: Vec<CallInfo> = self
            .inner
            .calls
            .lock()
            .expect("calls lock")
            .values()
            .map(|e| e.info.clone())
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    /// What `/call/lists` shows of one live call.
    pub fn info(&self, id: &str) -> Option<CallInfo> {
        self.inner
            .calls
            .lock()
            .expect("calls lock")
            .get(id)
            .map(|e| e.info.clone())
    }

    /// Live calls in all, and those owned by `owner` (for quotas; nothing is cloned).
    pub fn counts(&self, owner: &str) -> (usize, usize) {
        let calls = self.inner.calls.lock().expect("calls lock");
        let mine = calls
            .values()
            .filter(|e| e.info.owner.as_deref() == Some(owner))
            .count();
        (calls.len(), mine)
    }

    /// Number of live calls.
    pub fn len(&self) -> usize {
        self.inner.calls.lock().expect("calls lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every call (`server_shutdown`), waits up to `calls` for them to end (each finishes
    /// its transcripts up to its drain time), then up to `writes` for background work (late
    /// transcripts, store writes). Returns whether everything finished.
    pub async fn shutdown(&self, calls: Duration, writes: Duration) -> bool {
        let handles: Vec<CallHandle> = self
            .inner
            .calls
            .lock()
            .expect("calls lock")
            .values()
            .map(|e| e.handle.clone())
            .collect();
        tracing::info!("shutting down: ending {} calls", handles.len());
        for h in &handles {
            h.end("server_shutdown", "system");
        }
        let deadline = tokio::time::Instant::now() + calls;
        for h in &handles {
            if tokio::time::timeout_at(deadline, h.ended()).await.is_err() {
                tracing::warn!("calls still ending after {calls:?}; shutting down anyway");
                break;
            }
        }
        self.inner.tasks.close();
        let done = tokio::time::timeout(writes, self.inner.tasks.wait())
            .await
            .is_ok();
        if !done {
            tracing::error!(
                "background work (transcripts, store writes) still running after {writes:?}"
            );
        }
        done
    }
}
