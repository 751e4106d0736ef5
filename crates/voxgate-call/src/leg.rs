//! Legs: how one party's audio and signalling enter a call (DESIGN.md "Legs and controllers").
//!
//! A leg converts between its transport and the core's vocabulary: it hands the call 16 kHz mono
//! 20 ms [`AudioFrame`]s (320 samples) and [`LegEvent`]s through its [`LegPort`], and takes bot
//! frames ([`Leg::send_audio`]) and [`LegCommand`]s. Codecs, framing, resampling, jitter buffers
//! and payload formats live in the leg, never in the core.
//!
//! Legs today: the `/call` WebSocket binary-audio leg, the SIP/RTP leg, the Twilio Media Streams
//! leg (all in the server crate).
//!
//! Queue policy of a [`LegPort`]: caller audio and leg events wait for room in the call's leg
//! queue ([`LEG_QUEUE`] entries, separate from commands), so nothing a leg delivers is dropped; a
//! leg that cannot wait (a socket it must keep reading) lets its own transport buffer absorb the
//! delay. The call's task never waits on a leg: [`Leg::send_audio`] and [`Leg::command`] must
//! return at once.

use async_trait::async_trait;
use tokio::sync::mpsc;
use voxgate_media::codec::Codec;
use voxgate_media::AudioFrame;

/// What a leg can do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegCaps {
    /// Sends DTMF as RFC 4733 telephone-events ([`LegCommand::SendDtmf`]); otherwise the core
    /// plays in-band tones as bot audio.
    pub rfc4733: bool,
    /// Can transfer the far end ([`LegCommand::Transfer`], SIP REFER).
    pub transfer: bool,
    /// The far end buffers our audio and reports when marks are played (Twilio Media Streams):
    /// the core forwards marks ([`LegCommand::Mark`]) and waits for [`LegEvent::MarkPlayed`]
    /// before an auto hang-up, and [`Leg::playout_backlog_ms`] corrects interruption positions.
    pub playout_marks: bool,
}

/// Who a leg connects and how.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LegInfo {
    /// Transport name, stored as the call's `transport`: `websocket`, `sip`, `twilio`.
    pub kind: &'static str,
    pub caller: String,
    pub callee: String,
    /// The SDP offer of an inbound SIP call (for the `incoming` event).
    pub offer: Option<String>,
    /// The far end waits for an answer: the core announces `incoming` to its controllers.
    pub ringing: bool,
    /// The far end's extension headers (SIP `X-` headers of an inbound INVITE), in order.
    pub headers: Vec<(String, String)>,
    pub caps: LegCaps,
}

/// What the core asks of a leg.
#[derive(Clone, Debug, PartialEq)]
pub enum LegCommand {
    /// Answer (SIP 200 OK) or start the leg's media; `codec` is the controller's preference.
    Answer { codec: Option<Codec> },
    /// Start media before answering an inbound call (SIP 183 with SDP;
    /// [`crate::CallCommand::EarlyMedia`]): the leg reports [`LegEvent::Ringing`] with
    /// `early_media` once bot audio reaches the caller. A later [`LegCommand::Answer`] keeps
    /// the same media.
    EarlyMedia { codec: Option<Codec> },
    /// Drop bot audio the far end has buffered (Twilio `clear`); a barge-in or `interrupt`.
    Clear,
    /// Ask the far end to report when the audio sent so far has played ([`LegEvent::MarkPlayed`]).
    Mark(String),
    /// Send DTMF keys as RFC 4733 events, each `duration_ms` long and as long apart.
    SendDtmf { keys: String, duration_ms: u32 },
    /// Blind transfer to a `sip:` URI or a number.
    Transfer(String),
    /// The application's answer to [`LegEvent::Transfer`] state `requested`.
    TransferReply { accept: bool },
}

/// A leg's immediate answer to a [`LegCommand`].
#[derive(Clone, Debug, PartialEq)]
pub enum LegReply {
    /// Done.
    Done,
    /// The leg answered at once ([`LegCommand::Answer`] on a leg that needs no signalling).
    Answered { sdp: Option<String>, codec: String },
    /// Under way: the outcome comes as [`LegEvent`]s.
    Pending,
    /// Refused: reported to controllers as an `error` event from `sender`; the call goes on.
    Refused {
        sender: &'static str,
        code: u16,
        message: String,
    },
}

/// What a leg reports, in order, through its [`LegPort`].
#[derive(Clone, Debug, PartialEq)]
pub enum LegEvent {
    /// The far end rings (SIP 180/183).
    Ringing { early_media: bool },
    /// Answered: `sdp` is the SIP answer, `codec` the negotiated codec's name (stored).
    Answered { sdp: Option<String>, codec: String },
    /// A DTMF key (RFC 4733, SIP INFO, Twilio `dtmf`).
    Dtmf(char),
    /// The far end played out to a mark ([`LegCommand::Mark`]).
    MarkPlayed(String),
    /// The transfer target answered: the call ends with reason `transferred`.
    Transferred,
    /// Progress of a transfer the far end asked for (a REFER received): reported to
    /// controllers as [`crate::EventKind::Transfer`]. The leg goes on (with the target once
    /// `completed`).
    Transfer {
        target: String,
        state: String,
        referred_by: Option<String>,
        code: Option<u16>,
    },
    /// Something failed; the call goes on unless [`LegEvent::Ended`] follows.
    Error {
        sender: String,
        message: String,
        code: Option<u16>,
    },
    /// The leg ended by itself: far-end BYE/CANCEL, a failed INVITE, a ring timeout, a closed
    /// stream. The call ends with this reason and initiator.
    Ended { reason: String, initiator: String },
}

/// A leg's figures at its end (the `metrics` event with this `key`, and the call's stored
/// quality): e.g. `rtp` with packets, loss and jitter.
#[derive(Clone, Debug, PartialEq)]
pub struct LegReport {
    pub key: String,
    pub data: serde_json::Value,
}

/// A leg attached to a call. Called only from the call's task.
#[async_trait]
pub trait Leg: Send {
    fn info(&self) -> &LegInfo;
    /// Sends one 16 kHz mono 20 ms frame of bot audio. Must not wait: returns `false` when the
    /// frame was dropped (transport queue full, on hold); the core counts drops.
    fn send_audio(&mut self, frame: &AudioFrame) -> bool;
    /// Must not wait: slow work (SIP transactions) runs on the leg's own tasks and reports back
    /// through the port.
    fn command(&mut self, cmd: LegCommand) -> LegReply;
    /// Milliseconds of bot audio sent but not yet played by the far end (0 when unknown or when
    /// the far end plays as it receives).
    fn playout_backlog_ms(&self) -> u64 {
        0
    }
    /// Ends the leg for `reason` (BYE, CANCEL, or the refusal of an unanswered inbound call by
    /// `reason`, see the README). Must return promptly: waiting for the far end's answer happens
    /// in the background. `headers` are the application's hang-up headers
    /// ([`crate::CallCommand::Hangup`]); legs without such signalling ignore them. Returns the
    /// leg's figures, if it has any.
    async fn close(
        self: Box<Self>,
        reason: &str,
        headers: &[(String, String)],
    ) -> Option<LegReport>;
}

/// A leg waiting for a call to take it: an inbound SIP call routed to a waiting `/call/sip`
/// client, for example. The call builds the leg with its own port.
pub trait PendingLeg: Send {
    fn info(&self) -> &LegInfo;
    /// Becomes a leg of the call that owns `port`.
    fn into_leg(self: Box<Self>, port: LegPort) -> Box<dyn Leg>;
    /// Nobody takes it: refuse the far end for `reason` (`busy` → SIP 486, `no_answer` → 480,
    /// anything else → 603).
    fn refuse(self: Box<Self>, reason: &str);
}

/// Capacity of a call's leg queue: caller frames (20 ms each) and leg events.
pub const LEG_QUEUE: usize = 256;

/// What a leg delivers.
pub(crate) enum LegInput {
    Audio(AudioFrame),
    Event(LegEvent),
}

/// The call has ended: nothing more is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the call has ended")]
pub struct CallGone;

/// A leg's way into its call: caller audio and events, in order (see the module's queue policy).
#[derive(Clone)]
pub struct LegPort {
    /// The call's leg queue; `leg` numbers the legs of a call, so that a replaced leg's late
    /// input is ignored.
    pub(crate) tx: mpsc::Sender<(u64, LegInput)>,
    pub(crate) leg: u64,
}

impl std::fmt::Debug for LegPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegPort").field("leg", &self.leg).finish()
    }
}

impl LegPort {
    /// Delivers one 16 kHz mono 20 ms frame of caller audio; waits for room.
    ///
    /// # Errors
    /// [`CallGone`] once the call has ended.
    pub async fn audio(&self, frame: AudioFrame) -> Result<(), CallGone> {
        self.tx
            .send((self.leg, LegInput::Audio(frame)))
            .await
            .map_err(|_| CallGone)
    }

    /// Delivers an event; waits for room.
    ///
    /// # Errors
    /// [`CallGone`] once the call has ended.
    pub async fn event(&self, ev: LegEvent) -> Result<(), CallGone> {
        self.tx
            .send((self.leg, LegInput::Event(ev)))
            .await
            .map_err(|_| CallGone)
    }

    /// Whether the call has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the call has ended.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}
