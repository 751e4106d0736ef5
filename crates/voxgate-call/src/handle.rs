//! [`CallHandle`]: how controllers drive a call.
//!
//! Queue policy: commands wait for room in the call's control inbox ([`INBOX`] entries; leg audio
//! and engine results have queues of their own), so a controller is slowed, never ignored.
//! Ending a call ([`CallHandle::end`], used by kill and shutdown) never waits: it sets a flag the
//! call checks before anything else.

use crate::leg::{CallGone, PendingLeg};
use crate::subscriber::Subscriber;
use crate::vocab::CallCommand;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

/// Capacity of a call's control inbox.
pub const INBOX: usize = 256;

/// What controllers and adapters ask of a call.
pub(crate) enum CallInput {
    Command(CallCommand),
    Subscribe(Box<dyn Subscriber>),
    Attach(Box<dyn PendingLeg>),
}

/// A request to end the call, checked before any other input.
#[derive(Default)]
pub(crate) struct EndSignal {
    request: Mutex<Option<(String, String)>>,
    pub(crate) notify: Notify,
}

impl EndSignal {
    pub(crate) fn take(&self) -> Option<(String, String)> {
        self.request.lock().map(|mut r| r.take()).unwrap_or(None)
    }
}

/// Why a command could not be queued without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryCommandError {
    #[error("the call's inbox is full")]
    Full,
    #[error("the call has ended")]
    Gone,
}

/// A handle on a live call; cheap to clone. Dropping every handle does not end the call.
#[derive(Clone)]
pub struct CallHandle {
    pub(crate) id: Arc<str>,
    pub(crate) tx: mpsc::Sender<CallInput>,
    pub(crate) end: Arc<EndSignal>,
}

impl std::fmt::Debug for CallHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallHandle").field("id", &self.id).finish()
    }
}

impl CallHandle {
    /// The call id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Queues a command; waits for room.
    ///
    /// # Errors
    /// [`CallGone`] once the call has ended.
    pub async fn command(&self, cmd: CallCommand) -> Result<(), CallGone> {
        self.tx
            .send(CallInput::Command(cmd))
            .await
            .map_err(|_| CallGone)
    }

    /// Queues a command if there is room now.
    ///
    /// # Errors
    /// [`TryCommandError`].
    pub fn try_command(&self, cmd: CallCommand) -> Result<(), TryCommandError> {
        self.tx
            .try_send(CallInput::Command(cmd))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => TryCommandError::Full,
                mpsc::error::TrySendError::Closed(_) => TryCommandError::Gone,
            })
    }

    /// Adds a subscriber; it receives the events emitted from then on.
    ///
    /// # Errors
    /// [`CallGone`] once the call has ended.
    pub async fn subscribe(&self, sub: Box<dyn Subscriber>) -> Result<(), CallGone> {
        self.tx
            .send(CallInput::Subscribe(sub))
            .await
            .map_err(|_| CallGone)
    }

    /// Offers a leg to a call that has none. A call that already has a leg refuses it (`busy`).
    ///
    /// # Errors
    /// The leg back when the call has ended, so that it can be offered elsewhere.
    pub async fn attach(&self, leg: Box<dyn PendingLeg>) -> Result<(), Box<dyn PendingLeg>> {
        self.tx
            .send(CallInput::Attach(leg))
            .await
            .map_err(|e| match e.0 {
                CallInput::Attach(l) => l,
                _ => unreachable!("we sent Attach"),
            })
    }

    /// Ends the call with `reason` and `initiator` (kill, shutdown). Never waits; the first
    /// request wins. Returns `false` when the call has already ended.
    pub fn end(&self, reason: &str, initiator: &str) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        if let Ok(mut r) = self.end.request.lock() {
            if r.is_none() {
                *r = Some((reason.to_string(), initiator.to_string()));
            }
        }
        self.end.notify.notify_one();
        true
    }

    /// Whether the call has ended.
    pub fn is_ended(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the call has ended (after its `hangup` event).
    pub async fn ended(&self) {
        self.tx.closed().await
    }
}
