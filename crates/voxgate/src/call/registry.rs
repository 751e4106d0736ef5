//! The live calls on this node: for `/call/lists` and `/call/kill/{id}` (seed 002).

use super::actor::ActorInput;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What `/call/lists` shows of a call.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CallInfo {
    pub id: String,
    /// `websocket` for `/call`.
    pub call_type: String,
    /// RFC 3339.
    pub created_at: String,
    pub option: serde_json::Value,
}

struct Entry {
    info: CallInfo,
    inbox: mpsc::Sender<ActorInput>,
}

/// Shared map of live calls.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Registry {
    /// Adds a call; `false` when the id is already live (the new call must be refused).
    pub fn insert(&self, info: CallInfo, inbox: mpsc::Sender<ActorInput>) -> bool {
        let mut m = self.inner.lock().expect("registry lock");
        if m.contains_key(&info.id) {
            return false;
        }
        m.insert(info.id.clone(), Entry { info, inbox });
        true
    }

    pub fn remove(&self, id: &str) {
        self.inner.lock().expect("registry lock").remove(id);
    }

    /// Updates the `option` shown for a call (after `invite`).
    pub fn set_option(&self, id: &str, option: serde_json::Value) {
        if let Some(e) = self.inner.lock().expect("registry lock").get_mut(id) {
            e.info.option = option;
        }
    }

    pub fn list(&self) -> Vec<CallInfo> {
        let mut v: Vec<CallInfo> = self
            .inner
            .lock()
            .expect("registry lock")
            .values()
            .map(|e| e.info.clone())
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inbox of a live call.
    pub fn inbox(&self, id: &str) -> Option<mpsc::Sender<ActorInput>> {
        self.inner
            .lock()
            .expect("registry lock")
            .get(id)
            .map(|e| e.inbox.clone())
    }

    /// Every live call's inbox (graceful shutdown).
    pub fn inboxes(&self) -> Vec<mpsc::Sender<ActorInput>> {
        self.inner
            .lock()
            .expect("registry lock")
            .values()
            .map(|e| e.inbox.clone())
            .collect()
    }
}
