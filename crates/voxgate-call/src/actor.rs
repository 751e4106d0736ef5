//! The call actor: one task per call that owns the call's state, its leg, the caller-audio
//! pipeline (VAD, endpointing, DTMF, ASR tap) and the playout queue, and reacts to one inbox.
//!
//! Queue policies (every queue is bounded):
//! - Three inboxes, all bounded, whose senders wait: control ([`crate::handle::INBOX`]: commands,
//!   subscriptions, legs offered), the leg queue ([`crate::leg::LEG_QUEUE`]: caller audio and leg
//!   events) and work results (TTS and `play` audio, transcripts, off-task VAD).
//!   The actor itself never waits on anything slow: subscribers take events without waiting
//!   ([`crate::subscriber`]), legs take frames and commands without waiting ([`crate::leg`]),
//!   speech runs on the blocking pool, and store writes go through a per-call writer task.
//! - Playout: a flushable queue per call ([`Player`]), one 20 ms frame per tick while something
//!   plays; an idle call has no timer. A frame the leg cannot take is dropped and counted
//!   (`audio_dropped` in the `metrics` event at hang-up).
//! - TTS: at most [`PENDING_SENTENCES`] sentences wait for synthesis per track (more is an
//!   `error` 429); streamed text waits for a sentence end up to [`MAX_PENDING_CHARS`].
//! - ASR: at most [`PENDING_ASR`] utterances wait per call (more is an `error` 503); only the
//!   newest partial waits, and partials run only on an idle model, never in the way of a final.
//!   A final is speculated: the utterance is transcribed 200 ms into a silence, while
//!   endpointing still waits; when that silence ends it, that transcript is the final.
//! - A VAD that must not run on this task (Silero) runs on the blocking pool, one batch of
//!   frames at a time; at most [`MAX_VAD_BACKLOG`] frames wait for it (older ones are judged by
//!   the last probability).
//!
//! Nothing is lost at the end: the leg is closed first (BYE goes out at once), the utterance in
//! progress is finalised, and `hangup` goes out when every transcript is stored or the drain
//! time ([`CallSettings::drain`]) has passed; transcripts still being computed then are finished
//! and stored in the background ([`crate::CallCore::tasks`]).

use crate::handle::{CallInput, EndSignal};
use crate::leg::{Leg, LegCommand, LegEvent, LegInput, LegPort, LegReply, PendingLeg};
use crate::observe::CallMetrics;
use crate::ports::{CallContext, CallSettings, CallStore, Speech, TranscriptRecord};
use crate::subscriber::{AudioTrack, Delivery, Subscriber, Unsubscribed};
use crate::turns::{
    is_backchannel, turn_end, TurnEnd, BARGE_PAUSE_LIMIT_MS, COMPLETE_SILENCE_MS,
    FALSE_INTERRUPTION_MS, HESITANT_SILENCE_MS,
};
use crate::vocab::{
    now_ms, AnswerOptions, CallCommand, CallEvent, DialOptions, EventKind, MediaOptions,
    PlayRequest, TtsRequest,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use voxgate_media::pipeline::{InboundConfig, InboundPipeline, MediaEvent};
use voxgate_media::player::{Player, PlayerEvent};
use voxgate_media::resample::resample_clip;
use voxgate_media::speech::{SentenceSplitter, Transcriber, MAX_PENDING_CHARS};
use voxgate_media::vad::Vad;
use voxgate_media::{AudioFrame, SampleRate};

/// Sentences a TTS track may have waiting for synthesis.
pub const PENDING_SENTENCES: usize = 64;
/// Final transcripts a call may have waiting for the ASR engine.
pub const PENDING_ASR: usize = 32;
/// Caller frames that may wait for an off-task VAD (5 s).
pub const MAX_VAD_BACKLOG: usize = 250;
/// How long a hang-up waits for the store to confirm the call's last writes before `hangup`.
const STORE_FLUSH: Duration = Duration::from_secs(5);
/// Extra time an auto hang-up waits for the far end to report the end of playout.
const PLAYOUT_GRACE: Duration = Duration::from_secs(3);
/// A leg that stops delivering audio while the caller speaks (silence suppression: no RTP during
/// silence, a client that stops sending) is taken as silent after this long, so that the
/// utterance ends (endpointing) instead of waiting for the next packet.
const CALLER_IDLE: Duration = Duration::from_millis(100);
/// Silence frames synthesised at most per idle check.
const MAX_IDLE_FILL_FRAMES: u32 = 50;

/// The sending and receiving ends of a call's leg queue.
type LegQueue = (
    mpsc::Sender<(u64, LegInput)>,
    mpsc::Receiver<(u64, LegInput)>,
);

/// Track ids of application audio ([`CallCommand::Audio`]) start with this.
const APP_TRACK: &str = "app-";

/// Capacity of a call's work queue (TTS and `play` audio, transcripts, VAD batches).
const WORK_QUEUE: usize = 256;

/// Results of the work a call started (on other tasks or the blocking pool).
enum Work {
    Track(TrackInput),
    Asr(AsrOutcome),
    Vad(VadBatch),
}

/// Audio, failures and completion of a bot track's producer (TTS or `play`).
#[derive(Debug)]
enum TrackInput {
    /// 16 kHz mono samples.
    Audio {
        track_id: String,
        samples: Vec<i16>,
        engine: String,
    },
    Error {
        track_id: String,
        sender: &'static str,
        error: String,
        fatal: bool,
    },
    Done {
        track_id: String,
    },
}

/// What an ASR job is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AsrKind {
    /// `asrDelta` of the utterance so far.
    Partial,
    /// The final's transcript computed ahead of endpointing; it counts once confirmed.
    Speculative,
    /// `asrFinal`.
    Final,
}

/// Result of one ASR job.
#[derive(Debug)]
struct AsrOutcome {
    index: u32,
    kind: AsrKind,
    /// Samples transcribed (identifies a speculation).
    len: usize,
    /// The transcript was written to the store (finals, and speculations confirmed in time).
    stored: bool,
    start_ms: u64,
    end_ms: u64,
    queued_at: Instant,
    compute_ms: u64,
    result: Result<String, String>,
}

/// Frames judged by an off-task VAD, with the VAD handed back.
struct VadBatch {
    vad: Vad,
    frames: Vec<AudioFrame>,
    probs: Vec<f32>,
}

struct AsrJob {
    index: u32,
    kind: AsrKind,
    start_ms: u64,
    end_ms: u64,
    samples: Vec<f32>,
    queued_at: Instant,
    /// Set when a speculation is confirmed as the final (the job then stores its transcript).
    confirmed: Arc<AtomicBool>,
    /// The utterance's transcribed head (samples, text), set when the job starts: only the
    /// samples after it are transcribed and the text is prepended (see [`AsrPrefix`]).
    prefix: Option<(usize, String)>,
}

/// The transcript of the head of the current utterance, up to a pause the caller spoke on after:
/// a speculation made at that pause. Later speculations and the final transcribe only what
/// follows it, so a final costs the last phrase rather than the whole utterance (Moonshine's cost
/// grows with the audio's length). The cut is [`voxgate_media::pipeline::FINAL_TAIL_MS`] into a
/// pause, between words.
struct AsrPrefix {
    index: u32,
    /// Samples (16 kHz) the text covers, from the utterance's start.
    len: usize,
    text: String,
}

/// The shortest head worth keeping as an [`AsrPrefix`]: 1 s at 16 kHz (shorter phrases lose the
/// context that makes Moonshine accurate).
const MIN_PREFIX_SAMPLES: usize = 16_000;

/// Joins a head's and a tail's transcript with one space.
fn join_transcripts(head: &str, tail: &str) -> String {
    match (head.is_empty(), tail.is_empty()) {
        (true, _) => tail.to_string(),
        (_, true) => head.to_string(),
        _ => format!("{head} {tail}"),
    }
}

/// The latest speculation, not confirmed yet: the utterance and length it transcribes, its
/// confirmation flag, and its result once done.
struct Speculation {
    index: u32,
    len: usize,
    confirmed: Arc<AtomicBool>,
    done: Option<AsrOutcome>,
}

/// What an ASR job needs besides its audio.
#[derive(Clone)]
struct AsrContext {
    asr: Arc<dyn Transcriber>,
    slots: Arc<tokio::sync::Semaphore>,
    store: Arc<dyn CallStore>,
    call_id: String,
    /// Epoch ms of media time 0.
    epoch_ms: i64,
}

struct Producer {
    /// Sentences to synthesise; `None` once the text is complete.
    tx: Option<mpsc::Sender<String>>,
    splitter: SentenceSplitter,
    task: JoinHandle<()>,
    auto_hangup: bool,
    requested_at: Instant,
    first_audio: bool,
}

/// Ordered store writes of one call.
enum StoreOp {
    Answered {
        codec: String,
        caller: Option<String>,
        callee: Option<String>,
        at: i64,
    },
    Quality(serde_json::Value),
    Ended {
        at: i64,
        reason: String,
        initiator: String,
    },
    Flush(oneshot::Sender<()>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No leg yet (a `/call/sip` client before it dials or is offered a call).
    Idle,
    /// A connected leg waiting for `Answer` (a `/call` WebSocket, a Twilio stream).
    Ready,
    /// An inbound leg ringing: `incoming` was announced.
    Incoming,
    /// An inbound leg ringing with early media ([`CallCommand::EarlyMedia`]): bot audio is
    /// heard, caller audio is not processed until the answer.
    Early,
    /// Our call is ringing at the far end.
    Dialing,
    /// `Answer` was given to a leg that answers asynchronously (SIP 200 OK, late offer).
    Answering,
    Answered,
    Ended,
}

enum Flow {
    Continue,
    Stop,
}

pub(crate) struct CallActor {
    id: String,
    kind: &'static str,
    created_at: i64,
    ctx: CallContext,
    tasks: TaskTracker,
    speech: Arc<Speech>,
    settings: CallSettings,
    rx: mpsc::Receiver<CallInput>,
    leg_tx: mpsc::Sender<(u64, LegInput)>,
    leg_rx: mpsc::Receiver<(u64, LegInput)>,
    work_tx: mpsc::Sender<Work>,
    work_rx: mpsc::Receiver<Work>,
    end_signal: Arc<EndSignal>,
    phase: Phase,
    /// Early media was started: bot audio flows while the answer is under way.
    early: bool,
    leg: Option<Box<dyn Leg>>,
    leg_seq: u64,
    subscribers: Vec<Box<dyn Subscriber>>,
    audio_taps: usize,
    media: MediaOptions,
    caller: Option<String>,
    callee: Option<String>,
    pipeline: Option<InboundPipeline>,
    offload_vad: bool,
    vad_pending: VecDeque<AudioFrame>,
    vad_in_flight: bool,
    player: Player,
    producers: HashMap<String, Producer>,
    asr_queue: VecDeque<AsrJob>,
    /// A final or speculative job is running.
    asr_busy: bool,
    /// A partial job is running.
    partial_busy: bool,
    speculation: Option<Speculation>,
    /// The current utterance's transcribed head.
    asr_prefix: Option<AsrPrefix>,
    /// Bot audio paused by caller speech, waiting for its words
    /// ([`MediaOptions::false_interruption_resume`]): the utterance and when.
    barge_pause: Option<(u32, Instant)>,
    /// The application's headers for the leg's hang-up (`CallCommand::Hangup`).
    hangup_headers: Vec<(String, String)>,
    /// Confirmed speculations still running: utterance, length, when the final arrived (the
    /// `ttfb.asr` latency starts there).
    confirmed: Vec<(u32, usize, Instant)>,
    /// The highest utterance index with an `asrFinal` (older partials are dropped).
    last_final: u32,
    media_epoch_ms: Option<i64>,
    /// When the leg last delivered (or we synthesised) a caller frame.
    last_caller_frame: Instant,
    /// When to check next whether the leg went quiet mid-utterance.
    idle_check: Option<Instant>,
    audio_dropped: u64,
    media_events: Vec<MediaEvent>,
    player_events: Vec<PlayerEvent>,
    /// Marks forwarded to a leg that reports playout, waiting for its echo.
    marks_at_leg: HashSet<String>,
    /// An auto hang-up waiting for the far end's playout: the mark and the latest time.
    autohangup: Option<(String, Instant)>,
    hangup_marks: u64,
    writer: mpsc::Sender<StoreOp>,
    metrics: CallMetrics,
}

impl CallActor {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: String,
        kind: &'static str,
        owner: Option<&str>,
        created_at: i64,
        ctx: CallContext,
        tasks: TaskTracker,
        rx: mpsc::Receiver<CallInput>,
        legs: LegQueue,
        end_signal: Arc<EndSignal>,
        leg: Option<Box<dyn Leg>>,
        subscribers: Vec<Box<dyn Subscriber>>,
    ) -> Self {
        let (wtx, wrx) = mpsc::channel(64);
        tasks.spawn(write_loop(id.clone(), ctx.store.clone(), wrx));
        let (work_tx, work_rx) = mpsc::channel(WORK_QUEUE);
        let audio_taps = subscribers.iter().filter(|s| s.wants_audio()).count();
        CallActor {
            metrics: CallMetrics::started(kind, owner),
            id,
            kind,
            created_at,
            speech: ctx.speech.clone(),
            settings: ctx.settings.clone(),
            ctx,
            tasks,
            rx,
            leg_tx: legs.0,
            leg_rx: legs.1,
            work_tx,
            work_rx,
            end_signal,
            phase: Phase::Idle,
            early: false,
            leg_seq: u64::from(leg.is_some()),
            leg,
            subscribers,
            audio_taps,
            media: MediaOptions::default(),
            caller: None,
            callee: None,
            pipeline: None,
            offload_vad: false,
            vad_pending: VecDeque::new(),
            vad_in_flight: false,
            player: Player::new(),
            producers: HashMap::new(),
            asr_queue: VecDeque::new(),
            asr_busy: false,
            partial_busy: false,
            speculation: None,
            confirmed: Vec::new(),
            asr_prefix: None,
            barge_pause: None,
            hangup_headers: Vec::new(),
            last_final: 0,
            media_epoch_ms: None,
            last_caller_frame: Instant::now(),
            idle_check: None,
            audio_dropped: 0,
            media_events: Vec::new(),
            player_events: Vec::new(),
            marks_at_leg: HashSet::new(),
            autohangup: None,
            hangup_marks: 0,
            writer: wtx,
        }
    }

    /// Runs the call until it ends.
    pub(crate) async fn run(mut self) {
        tracing::debug!(call = %self.id, kind = self.kind, "call started");
        if self.leg.is_some() {
            self.leg_attached();
        }
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut was_active = false;
        let end = self.end_signal.clone();
        // One timer, kept across iterations, for the auto hang-up deadline and the caller-idle
        // check (a timer made per iteration would cost a timer-wheel entry per frame).
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        // Likewise one registration with the end signal, renewed only when it fires.
        let ending = end.notify.notified();
        tokio::pin!(ending);
        loop {
            let active = self.player.is_active() && !self.player.is_paused();
            if active && !was_active {
                tick.reset_immediately();
            }
            was_active = active;
            // Whatever woke the loop (a frame, a tick, the timer), a barge-in pause may be due.
            self.check_barge_pause();
            let next = self.next_deadline();
            if next != armed {
                if let Some(t) = next {
                    timer.as_mut().reset(t);
                }
                armed = next;
            }
            let flow = tokio::select! {
                biased;
                _ = &mut ending => {
                    ending.set(end.notify.notified());
                    match end.take() {
                        Some((reason, initiator)) => self.end(&reason, &initiator).await,
                        None => Flow::Continue,
                    }
                }
                m = self.rx.recv() => match m {
                    Some(m) => self.handle(m).await,
                    None => self.end("disconnected", "user").await,
                },
                Some((n, input)) = self.leg_rx.recv() => self.leg_input(n, input).await,
                Some(w) = self.work_rx.recv() => {
                    self.work(w);
                    Flow::Continue
                }
                due = tick.tick(), if active => {
                    let late = due.elapsed().as_millis() as u64;
                    if late >= 60 {
                        tracing::debug!(call = %self.id, late, "bot playout tick late");
                    }
                    self.on_tick().await
                }
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.on_timer().await
                }
            };
            if let Flow::Stop = flow {
                break;
            }
        }
    }

    /// The earliest of the auto hang-up deadline and the caller-idle check.
    fn next_deadline(&mut self) -> Option<Instant> {
        let speaking =
            self.phase == Phase::Answered && self.pipeline.as_ref().is_some_and(|p| p.in_speech());
        // While the caller speaks, check every CALLER_IDLE whether the leg went quiet; the check
        // is not moved on every frame.
        self.idle_check = match (speaking, self.idle_check) {
            (false, _) => None,
            (true, Some(t)) if t > self.last_caller_frame => Some(t),
            (true, _) => Some(self.last_caller_frame + CALLER_IDLE),
        };
        let hangup = self.autohangup.as_ref().map(|a| a.1);
        // A barge-in pause is checked when it is 1 s old, then when it reaches its limit.
        let pause = self.barge_pause.map(|(_, since)| {
            let first = since + Duration::from_millis(FALSE_INTERRUPTION_MS);
            if Instant::now() < first {
                first
            } else {
                since + Duration::from_millis(BARGE_PAUSE_LIMIT_MS)
            }
        });
        [hangup, self.idle_check, pause].into_iter().flatten().min()
    }

    async fn on_timer(&mut self) -> Flow {
        let now = Instant::now();
        if self.autohangup.as_ref().is_some_and(|a| a.1 <= now) {
            return self.end("autohangup", "system").await;
        }
        if self.idle_check.is_some_and(|t| t <= now) {
            self.idle_check = None;
            if self.last_caller_frame.elapsed() >= CALLER_IDLE {
                self.fill_caller_silence();
            }
        }
        Flow::Continue
    }

    // ---- output -------------------------------------------------------------------------

    fn emit(&mut self, kind: EventKind) {
        let ev = CallEvent::now(kind);
        self.metrics.event(&ev);
        let id = &self.id;
        let metrics = &self.metrics;
        self.subscribers.retain_mut(|s| match s.deliver(&ev) {
            Delivery::Delivered => true,
            Delivery::Full => {
                tracing::warn!(call = %id, "a subscriber's event queue is full: dropped");
                metrics.subscriber_dropped();
                s.closed(Unsubscribed::Lagged);
                false
            }
            Delivery::Gone => false,
        });
        self.audio_taps = self.subscribers.iter().filter(|s| s.wants_audio()).count();
    }

    fn error(&mut self, sender: &str, error: impl Into<String>, code: Option<u16>) {
        let error = error.into();
        tracing::debug!(call = %self.id, sender, "{error}");
        self.emit(EventKind::Error {
            track_id: self.id.clone(),
            sender: sender.into(),
            error,
            code,
        });
    }

    fn tap(&mut self, track: AudioTrack, frame: &AudioFrame) {
        if self.audio_taps > 0 {
            for s in self.subscribers.iter_mut().filter(|s| s.wants_audio()) {
                s.deliver_audio(track, frame);
            }
        }
    }

    fn store(&mut self, op: StoreOp) {
        if let Err(mpsc::error::TrySendError::Full(op)) = self.writer.try_send(op) {
            // The store is far behind; keep the order and wait in a task of its own.
            let w = self.writer.clone();
            self.tasks.spawn(async move {
                let _ = w.send(op).await;
            });
        }
    }

    fn epoch_ms(&self) -> i64 {
        self.media_epoch_ms.unwrap_or(self.created_at)
    }

    // ---- input --------------------------------------------------------------------------

    async fn handle(&mut self, m: CallInput) -> Flow {
        match m {
            CallInput::Command(c) => return self.command(c).await,
            CallInput::Subscribe(s) => {
                self.subscribers.push(s);
                self.audio_taps = self.subscribers.iter().filter(|s| s.wants_audio()).count();
            }
            CallInput::Attach(p) => self.attach(p),
        }
        Flow::Continue
    }

    async fn leg_input(&mut self, n: u64, input: LegInput) -> Flow {
        if n != self.leg_seq || self.leg.is_none() {
            return Flow::Continue;
        }
        match input {
            LegInput::Audio(f) => self.caller_frame(f),
            LegInput::Event(e) => return self.leg_event(e).await,
        }
        Flow::Continue
    }

    fn work(&mut self, w: Work) {
        match w {
            Work::Track(t) => self.track_input(t),
            Work::Asr(o) => self.asr_done(o),
            Work::Vad(b) => self.vad_done(b, true),
        }
    }

    fn port(&mut self) -> LegPort {
        self.leg_seq += 1;
        LegPort {
            tx: self.leg_tx.clone(),
            leg: self.leg_seq,
        }
    }

    fn attach(&mut self, p: Box<dyn PendingLeg>) {
        if self.leg.is_some() || self.phase != Phase::Idle {
            // Raced with our own dialling, or a second offer: the far end must not ring on.
            p.refuse("busy");
            return;
        }
        let port = self.port();
        self.leg = Some(p.into_leg(port));
        self.leg_attached();
    }

    fn leg_attached(&mut self) {
        let Some(info) = self.leg.as_ref().map(|l| l.info().clone()) else {
            return;
        };
        if info.ringing {
            self.phase = Phase::Incoming;
            self.emit(EventKind::Incoming {
                track_id: self.id.clone(),
                caller: info.caller,
                callee: info.callee,
                sdp: info.offer.unwrap_or_default(),
                headers: info.headers,
            });
        } else {
            self.phase = Phase::Ready;
        }
    }

    async fn leg_event(&mut self, e: LegEvent) -> Flow {
        match e {
            LegEvent::Ringing { early_media } => self.emit(EventKind::Ringing {
                track_id: self.id.clone(),
                early_media,
            }),
            LegEvent::Answered { sdp, codec } => {
                if matches!(self.phase, Phase::Dialing | Phase::Answering) {
                    self.start_media(sdp, &codec);
                }
            }
            LegEvent::Dtmf(digit) => self.emit(EventKind::Dtmf {
                track_id: self.id.clone(),
                digit,
            }),
            LegEvent::MarkPlayed(name) => {
                if self.autohangup.as_ref().is_some_and(|a| a.0 == name) {
                    return self.end("autohangup", "system").await;
                }
                if self.marks_at_leg.remove(&name) {
                    self.emit(EventKind::Mark { name });
                }
            }
            LegEvent::Transferred => return self.end("transferred", "system").await,
            LegEvent::Transfer {
                target,
                state,
                referred_by,
                code,
            } => self.emit(EventKind::Transfer {
                track_id: self.id.clone(),
                target,
                state,
                referred_by,
                code,
            }),
            LegEvent::Error {
                sender,
                message,
                code,
            } => self.error(&sender, message, code),
            LegEvent::Ended { reason, initiator } => return self.end(&reason, &initiator).await,
        }
        Flow::Continue
    }

    async fn command(&mut self, c: CallCommand) -> Flow {
        if self.phase == Phase::Ended {
            return Flow::Continue;
        }
        match c {
            CallCommand::Answer(o) => self.answer(o),
            CallCommand::EarlyMedia(o) => self.early_media(o),
            CallCommand::Dial(o) => self.dial(o).await,
            CallCommand::Tts(t) => self.tts(t),
            CallCommand::Play(p) => self.play(p),
            CallCommand::Hangup {
                reason,
                initiator,
                headers,
            } => {
                self.hangup_headers = headers;
                let reason = reason.unwrap_or_else(|| "hangup".into());
                let initiator = initiator.unwrap_or_else(|| "user".into());
                return self.end(&reason, &initiator).await;
            }
            CallCommand::Interrupt => self.interrupt(),
            CallCommand::Pause => self.player.pause(),
            CallCommand::Resume => self.player.resume(),
            CallCommand::SendDtmf { keys, duration_ms } => {
                self.send_dtmf(keys, duration_ms.clamp(40, 2000))
            }
            CallCommand::Transfer(target) => self.transfer(target),
            CallCommand::TransferReply { accept } => self.transfer_reply(accept),
            CallCommand::Mark(name) => self.mark(name),
            CallCommand::Audio(samples) => self.queue_audio(samples),
        }
        Flow::Continue
    }

    /// Checks what the media options ask of the engines: `false` (with an `error` event) when
    /// the call cannot go on with them.
    fn check_media(&mut self, m: &MediaOptions) -> bool {
        if m.asr && self.speech.asr.is_none() {
            self.error(
                "asr",
                "speech recognition is disabled on this server (asr.engine = \"none\")",
                Some(503),
            );
        }
        if let Err(e) = self.speech.synthesizer(m.tts_provider.as_deref()) {
            self.error("tts", e, Some(400));
            return false;
        }
        true
    }

    /// Bot audio before the answer: only for a ringing inbound leg that can do it.
    fn early_media(&mut self, o: AnswerOptions) {
        match self.phase {
            Phase::Incoming => {}
            Phase::Early => {
                return self.error("command", "early media is already on", Some(400));
            }
            Phase::Ended => return,
            _ => {
                return self.error(
                    "command",
                    "early media needs an inbound call that is still ringing: wait for `incoming`",
                    Some(400),
                )
            }
        }
        if !self.check_media(&o.media) {
            return;
        }
        let Some(leg) = self.leg.as_mut() else { return };
        match leg.command(LegCommand::EarlyMedia { codec: o.codec }) {
            LegReply::Refused {
                sender,
                code,
                message,
            } => self.error(sender, message, Some(code)),
            _ => {
                self.set_media(o.media, o.caller, o.callee);
                self.phase = Phase::Early;
                self.early = true;
            }
        }
    }

    fn answer(&mut self, o: AnswerOptions) {
        match self.phase {
            Phase::Ready | Phase::Incoming | Phase::Early => {}
            Phase::Answered | Phase::Answering => {
                return self.error("command", "the call is already answered", Some(400))
            }
            Phase::Dialing => {
                return self.error(
                    "command",
                    "this call is dialling out: it is answered when the callee answers",
                    Some(400),
                )
            }
            Phase::Idle => return self.error(
                "command",
                "`accept` needs an inbound call: wait for the `incoming` event (or connect with the id a webhook gave)",
                Some(400),
            ),
            Phase::Ended => return,
        }
        if !self.check_media(&o.media) {
            return;
        }
        let Some(leg) = self.leg.as_mut() else { return };
        match leg.command(LegCommand::Answer { codec: o.codec }) {
            LegReply::Answered { sdp, codec } => {
                self.set_media(o.media, o.caller, o.callee);
                self.start_media(sdp, &codec);
            }
            LegReply::Pending | LegReply::Done => {
                self.set_media(o.media, o.caller, o.callee);
                self.phase = Phase::Answering;
            }
            LegReply::Refused {
                sender,
                code,
                message,
            } => self.error(sender, message, Some(code)),
        }
    }

    /// Bot audio reaches the far end: the call is answered, or rings with early media.
    fn bot_audio_allowed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Answered | Phase::Early | Phase::Answering
        ) && (self.phase != Phase::Answering || self.early)
    }

    fn set_media(&mut self, m: MediaOptions, caller: Option<String>, callee: Option<String>) {
        self.media = m;
        self.caller = caller.filter(|c| !c.is_empty());
        self.callee = callee.filter(|c| !c.is_empty());
    }

    async fn dial(&mut self, o: DialOptions) {
        if self.phase != Phase::Idle || self.leg.is_some() {
            return self.error("command", "this call already has a SIP dialog", Some(400));
        }
        let Some(dialer) = self.ctx.dialer.clone() else {
            return self.error(
                "command",
                "dialling out is not available: SIP is disabled on this server",
                Some(503),
            );
        };
        if !self.check_media(&o.media) {
            return;
        }
        let port = self.port();
        match dialer.dial(&self.id, &o, port).await {
            Ok(leg) => {
                self.leg = Some(leg);
                self.phase = Phase::Dialing;
                self.set_media(o.media, o.caller, o.callee);
            }
            Err(e) => self.error(e.sender, e.message, e.code),
        }
    }

    fn start_media(&mut self, sdp: Option<String>, codec: &str) {
        let mut segmenter = self.settings.segmenter.clone();
        if let Some(ms) = self.media.min_silence_ms {
            segmenter.min_silence_ms = ms;
        }
        let cfg = InboundConfig {
            segmenter,
            asr: self.media.asr && self.speech.asr.is_some(),
            partial_interval_ms: if self.media.partials {
                self.settings.partial_interval_ms
            } else {
                0
            },
            vad_gate_dbfs: self.settings.vad_gate_dbfs,
            ..InboundConfig::default()
        };
        let pipeline = InboundPipeline::new(self.speech.vad.detector(), cfg);
        self.offload_vad = pipeline.vad_is_blocking();
        self.pipeline = Some(pipeline);
        self.phase = Phase::Answered;
        let info = self
            .leg
            .as_ref()
            .map(|l| l.info().clone())
            .unwrap_or_default();
        let caller = self
            .caller
            .clone()
            .or_else(|| Some(info.caller).filter(|c| !c.is_empty()));
        let callee = self
            .callee
            .clone()
            .or_else(|| Some(info.callee).filter(|c| !c.is_empty()));
        self.store(StoreOp::Answered {
            codec: codec.to_string(),
            caller,
            callee,
            at: now_ms(),
        });
        self.emit(EventKind::Answer {
            track_id: self.id.clone(),
            sdp,
        });
    }

    // ---- caller audio -------------------------------------------------------------------

    /// The leg delivered nothing for a while mid-utterance: feed the pipeline the silence that
    /// elapsed, in 20 ms frames at the wall clock's pace, so that endpointing can end it.
    fn fill_caller_silence(&mut self) {
        let gap = self.last_caller_frame.elapsed();
        let frames = (gap.as_millis() / 20).clamp(1, MAX_IDLE_FILL_FRAMES as u128) as u32;
        for _ in 0..frames {
            if !self.pipeline.as_ref().is_some_and(|p| p.in_speech()) {
                break;
            }
            self.caller_frame(AudioFrame::silence(SampleRate::HZ_16000, 20));
        }
        self.last_caller_frame = Instant::now();
    }

    fn caller_frame(&mut self, frame: AudioFrame) {
        if self.phase != Phase::Answered || self.pipeline.is_none() {
            return;
        }
        self.last_caller_frame = Instant::now();
        if self.media_epoch_ms.is_none() {
            self.media_epoch_ms = Some(now_ms());
        }
        self.tap(AudioTrack::Caller, &frame);
        if !(self.media.vad || self.media.asr || self.media.barge_in) {
            return;
        }
        if self.offload_vad {
            if self.vad_pending.len() >= MAX_VAD_BACKLOG {
                // The blocking pool is far behind: judge the oldest frame by the last probability.
                if let Some(old) = self.vad_pending.pop_front() {
                    let p = self.pipeline.as_ref().map_or(0.0, |p| p.last_prob());
                    self.process_caller_frame(old, Some(p), true);
                }
            }
            self.vad_pending.push_back(frame);
            self.dispatch_vad();
        } else {
            self.process_caller_frame(frame, None, true);
        }
    }

    /// Runs one frame through the pipeline (`prob` when the VAD ran elsewhere).
    fn process_caller_frame(&mut self, frame: AudioFrame, prob: Option<f32>, live: bool) {
        let mut events = std::mem::take(&mut self.media_events);
        let voiced = {
            let Some(p) = self.pipeline.as_mut() else {
                return;
            };
            match prob {
                Some(prob) => p.process_frame_with_prob(frame, prob, &mut events),
                None => p.process_frame(frame, &mut events),
            }
            p.voiced_run_ms()
        };
        for e in events.drain(..) {
            self.media_event(e);
        }
        self.media_events = events;
        if live {
            self.check_barge_in(voiced);
        }
    }

    fn check_barge_in(&mut self, voiced_ms: u64) {
        let min = self.media.barge_in_ms.unwrap_or(self.settings.barge_in_ms) as u64;
        if self.media.barge_in && self.player.is_playing() && voiced_ms >= min {
            let wait_for_words =
                self.media.false_interruption_resume && self.media.asr && self.speech.asr.is_some();
            match self.pipeline.as_ref() {
                Some(p) if wait_for_words => {
                    self.player.pause();
                    self.barge_pause = Some((p.utterance_index(), Instant::now()));
                    tracing::debug!(call = %self.id, "bot audio paused by caller speech");
                }
                _ => self.interrupt(),
            }
        }
    }

    /// A barge-in pause the caller is still speaking through 1 s on is an interruption; one no
    /// transcript settled in 3 s resumes (every tick).
    fn check_barge_pause(&mut self) {
        let Some((_, since)) = self.barge_pause else {
            return;
        };
        let in_speech = self.pipeline.as_ref().is_some_and(|p| p.in_speech());
        let waited = since.elapsed().as_millis() as u64;
        if in_speech && waited >= FALSE_INTERRUPTION_MS {
            tracing::debug!(call = %self.id, "caller still speaking: interruption");
            self.interrupt();
        } else if waited >= BARGE_PAUSE_LIMIT_MS {
            self.resume_after_barge_pause("no transcript");
        }
    }

    /// The transcript of utterance `index` decides a pending barge-in pause: words other than a
    /// backchannel interrupt; a backchannel or no words (`None`: ASR failed) resume.
    fn settle_barge_pause(&mut self, index: u32, text: Option<&str>) {
        let Some((at, _)) = self.barge_pause else {
            return;
        };
        if index < at {
            return;
        }
        match text {
            Some(t) if !is_backchannel(t) => {
                tracing::debug!(call = %self.id, text = t, "interruption confirmed by words");
                self.interrupt();
            }
            Some(t) => self.resume_after_barge_pause(t),
            None => self.resume_after_barge_pause("no transcript"),
        }
    }

    fn resume_after_barge_pause(&mut self, why: &str) {
        let Some((index, since)) = self.barge_pause.take() else {
            return;
        };
        let paused = since.elapsed().as_millis() as u64;
        tracing::debug!(call = %self.id, paused, "false interruption ({why:?}): bot audio resumed");
        self.player.resume();
        self.emit(EventKind::Metrics {
            key: "interruption.resumed".into(),
            duration: paused,
            data: serde_json::json!({ "index": index, "heard": why }),
        });
    }

    fn dispatch_vad(&mut self) {
        if self.vad_in_flight || self.vad_pending.is_empty() {
            return;
        }
        let Some(mut vad) = self.pipeline.as_mut().and_then(|p| p.take_vad()) else {
            return;
        };
        let frames: Vec<AudioFrame> = self.vad_pending.drain(..).collect();
        self.vad_in_flight = true;
        let tx = self.work_tx.clone();
        tokio::task::spawn_blocking(move || {
            let probs = frames.iter().map(|f| vad.process(f)).collect();
            let _ = tx.blocking_send(Work::Vad(VadBatch { vad, frames, probs }));
        });
    }

    fn vad_done(&mut self, b: VadBatch, live: bool) {
        self.vad_in_flight = false;
        let Some(p) = self.pipeline.as_mut() else {
            return;
        };
        p.restore_vad(b.vad);
        for (frame, prob) in b.frames.into_iter().zip(b.probs) {
            self.process_caller_frame(frame, Some(prob), live);
        }
        if live {
            self.dispatch_vad();
        }
    }

    fn media_event(&mut self, e: MediaEvent) {
        let track_id = self.id.clone();
        match e {
            MediaEvent::Speaking { start_ms } => {
                let start_time = self.epoch_ms() + start_ms as i64;
                self.emit(EventKind::Speaking {
                    track_id,
                    start_time,
                })
            }
            MediaEvent::Silence {
                start_ms,
                duration_ms,
            } => {
                let start_time = self.epoch_ms() + start_ms as i64;
                tracing::debug!(call = %self.id, start_ms, duration_ms, "caller silent (end of utterance)");
                self.emit(EventKind::Silence {
                    track_id,
                    start_time,
                    duration: duration_ms,
                })
            }
            MediaEvent::Dtmf { digit, .. } => self.emit(EventKind::Dtmf { track_id, digit }),
            MediaEvent::UtterancePartial {
                index,
                start_ms,
                end_ms,
                samples,
            } => {
                // Only the newest partial matters: replace a waiting one.
                self.asr_queue.retain(|j| j.kind != AsrKind::Partial);
                self.asr_queue.push_back(AsrJob {
                    index,
                    kind: AsrKind::Partial,
                    start_ms,
                    end_ms,
                    samples,
                    queued_at: Instant::now(),
                    confirmed: Arc::default(),
                    prefix: None,
                });
                self.pump_asr();
            }
            MediaEvent::UtteranceSpeculative {
                index,
                start_ms,
                end_ms,
                samples,
            } => {
                // A newer speculation replaces a waiting one (the caller spoke again), and a
                // waiting partial of this utterance is moot: the speculation covers more.
                self.asr_queue.retain(|j| {
                    j.kind != AsrKind::Speculative
                        && !(j.kind == AsrKind::Partial && j.index == index)
                });
                let confirmed = Arc::new(AtomicBool::new(false));
                self.speculation = Some(Speculation {
                    index,
                    len: samples.len(),
                    confirmed: confirmed.clone(),
                    done: None,
                });
                self.asr_queue.push_back(AsrJob {
                    index,
                    kind: AsrKind::Speculative,
                    start_ms,
                    end_ms,
                    samples,
                    queued_at: Instant::now(),
                    confirmed,
                    prefix: None,
                });
                self.pump_asr();
            }
            MediaEvent::UtteranceFinal {
                index,
                start_ms,
                end_ms,
                samples,
            } => {
                self.asr_queue
                    .retain(|j| !(j.kind == AsrKind::Partial && j.index == index));
                if let Some(sp) = self
                    .speculation
                    .take()
                    .filter(|sp| sp.index == index && sp.len == samples.len())
                {
                    // The silence that was speculated on ended the utterance: its transcript is
                    // the final (done, still queued, or running).
                    sp.confirmed.store(true, Ordering::SeqCst);
                    let queued = self
                        .asr_queue
                        .iter_mut()
                        .find(|j| j.kind == AsrKind::Speculative && j.index == index);
                    match (sp.done, queued) {
                        (Some(o), _) => self.final_transcript(o, Instant::now()),
                        (None, Some(job)) => job.kind = AsrKind::Final,
                        (None, None) => self.confirmed.push((index, sp.len, Instant::now())),
                    }
                    return;
                }
                // The caller spoke again after the speculation: it is void.
                self.asr_queue.retain(|j| j.kind != AsrKind::Speculative);
                if self.asr_queue.len() >= PENDING_ASR {
                    return self.error(
                        "asr",
                        format!(
                            "speech recognition is behind; utterance {index} was not transcribed"
                        ),
                        Some(503),
                    );
                }
                self.asr_queue.push_back(AsrJob {
                    index,
                    kind: AsrKind::Final,
                    start_ms,
                    end_ms,
                    samples,
                    queued_at: Instant::now(),
                    confirmed: Arc::default(),
                    prefix: None,
                });
                self.pump_asr();
            }
        }
    }

    // ---- speech recognition -------------------------------------------------------------

    fn asr_context(&self) -> Option<AsrContext> {
        Some(AsrContext {
            asr: self.speech.asr.clone()?,
            slots: self.speech.asr_slots.clone(),
            store: self.ctx.store.clone(),
            call_id: self.id.clone(),
            epoch_ms: self.epoch_ms(),
        })
    }

    /// Starts what can run: the oldest final or speculation when none runs (it waits for a model
    /// instance); the newest partial when nothing of this call runs and an instance is idle.
    fn pump_asr(&mut self) {
        let Some(ctx) = self.asr_context() else {
            self.asr_queue.clear();
            return;
        };
        if !self.asr_busy {
            if let Some(i) = self
                .asr_queue
                .iter()
                .position(|j| j.kind != AsrKind::Partial)
            {
                let mut job = self.asr_queue.remove(i).expect("position");
                self.asr_busy = true;
                if let Some(p) = self
                    .asr_prefix
                    .as_ref()
                    .filter(|p| p.index == job.index && p.len < job.samples.len())
                {
                    job.prefix = Some((p.len, p.text.clone()));
                }
                self.spawn_asr(job, None, ctx.clone());
            }
        }
        if !self.asr_busy && !self.partial_busy {
            if let Some(i) = self
                .asr_queue
                .iter()
                .rposition(|j| j.kind == AsrKind::Partial)
            {
                let job = self.asr_queue.remove(i).expect("position");
                self.asr_queue.retain(|j| j.kind != AsrKind::Partial);
                // A partial result is worth computing only with an idle model.
                if let Ok(p) = ctx.slots.clone().try_acquire_owned() {
                    self.partial_busy = true;
                    self.spawn_asr(job, Some(p), ctx);
                }
            }
        }
    }

    fn spawn_asr(&mut self, job: AsrJob, permit: Option<OwnedSemaphorePermit>, ctx: AsrContext) {
        let tx = self.work_tx.clone();
        self.tasks.spawn(async move {
            let outcome = transcribe(job, permit, &ctx).await;
            let _ = tx.send(Work::Asr(outcome)).await;
        });
    }

    fn asr_done(&mut self, o: AsrOutcome) {
        tracing::debug!(
            call = %self.id,
            index = o.index,
            kind = ?o.kind,
            audio_ms = o.len / 16,
            compute_ms = o.compute_ms,
            since_queued_ms = o.queued_at.elapsed().as_millis() as u64,
            "asr job done"
        );
        match o.kind {
            AsrKind::Partial => self.partial_busy = false,
            _ => self.asr_busy = false,
        }
        match o.kind {
            AsrKind::Partial if o.index <= self.last_final => {}
            AsrKind::Partial | AsrKind::Final => self.transcript(o, None),
            AsrKind::Speculative => {
                // Whatever becomes of it, the speculation transcribes the utterance up to a pause:
                // later jobs of the utterance start from there.
                if let Ok(text) = &o.result {
                    let longer = self
                        .asr_prefix
                        .as_ref()
                        .is_none_or(|p| p.index != o.index || p.len < o.len);
                    if o.index > self.last_final && o.len >= MIN_PREFIX_SAMPLES && longer {
                        self.asr_prefix = Some(AsrPrefix {
                            index: o.index,
                            len: o.len,
                            text: text.clone(),
                        });
                    }
                }
                self.adapt_endpointing(&o);
                self.report_speculation(&o);
                if let Some(i) = self
                    .confirmed
                    .iter()
                    .position(|&(index, len, _)| index == o.index && len == o.len)
                {
                    let (_, _, at) = self.confirmed.remove(i);
                    self.final_transcript(o, at);
                } else if let Some(sp) = self
                    .speculation
                    .as_mut()
                    .filter(|sp| sp.index == o.index && sp.len == o.len)
                {
                    sp.done = Some(o);
                }
                // Otherwise the caller spoke on: the speculation is void.
            }
        }
        if self.phase != Phase::Ended {
            self.pump_asr();
        }
    }

    /// Adaptive endpointing: the current speculation's transcript sets the silence that ends the
    /// utterance ([`crate::turns`]).
    fn adapt_endpointing(&mut self, o: &AsrOutcome) {
        let current = self
            .speculation
            .as_ref()
            .is_some_and(|sp| sp.index == o.index && sp.len == o.len);
        let (true, true, Ok(text)) = (self.media.adaptive_endpointing, current, &o.result) else {
            return;
        };
        let ms = match turn_end(text) {
            TurnEnd::Complete => COMPLETE_SILENCE_MS,
            TurnEnd::Hesitant => HESITANT_SILENCE_MS,
            TurnEnd::Open => {
                tracing::debug!(call = %self.id, index = o.index, "endpointing kept for {text:?}");
                return;
            }
        };
        tracing::debug!(
            call = %self.id,
            index = o.index,
            ms,
            compute_ms = o.compute_ms,
            since_queued_ms = o.queued_at.elapsed().as_millis() as u64,
            "endpointing adapted to {text:?}"
        );
        if let Some(p) = self.pipeline.as_mut() {
            p.set_utterance_silence_ms(ms);
        }
    }

    /// Reports the current, unconfirmed speculation's transcript (`AsrSpeculative`).
    fn report_speculation(&mut self, o: &AsrOutcome) {
        let current = self
            .speculation
            .as_ref()
            .is_some_and(|sp| sp.index == o.index && sp.len == o.len);
        let (true, true, Ok(text)) = (self.media.speculative_transcripts, current, &o.result)
        else {
            return;
        };
        if text.is_empty() {
            return;
        }
        let epoch = self.epoch_ms();
        self.emit(EventKind::AsrSpeculative {
            track_id: self.id.clone(),
            index: o.index,
            start_time: epoch + o.start_ms as i64,
            end_time: epoch + o.end_ms as i64,
            text: text.clone(),
        });
    }

    /// A speculation confirmed as the final: stored (unless its job did) and reported.
    fn final_transcript(&mut self, mut o: AsrOutcome, confirmed_at: Instant) {
        if let (false, Ok(text), Some(ctx)) = (o.stored, &o.result, self.asr_context()) {
            if !text.is_empty() {
                let rec = TranscriptRecord {
                    call_id: self.id.clone(),
                    index: o.index as i64,
                    start_ms: Some(ctx.epoch_ms + o.start_ms as i64),
                    end_ms: Some(ctx.epoch_ms + o.end_ms as i64),
                    text: text.clone(),
                    created_at: now_ms(),
                };
                self.tasks.spawn(async move {
                    if let Err(e) = ctx.store.transcript_added(&rec).await {
                        tracing::error!(call = %rec.call_id, "{e}");
                    }
                });
            }
        }
        o.stored = true;
        o.kind = AsrKind::Final;
        self.transcript(o, Some(confirmed_at));
    }

    /// Reports a partial or final transcript; a final's latency counts from `since` (when the
    /// utterance ended) or its job's queueing.
    fn transcript(&mut self, o: AsrOutcome, since: Option<Instant>) {
        let name = self
            .speech
            .asr
            .as_ref()
            .map(|a| a.name().to_string())
            .unwrap_or_default();
        let track_id = self.id.clone();
        let epoch = self.epoch_ms();
        let (start_time, end_time) = (epoch + o.start_ms as i64, epoch + o.end_ms as i64);
        if o.kind != AsrKind::Partial {
            match &o.result {
                Ok(t) => self.settle_barge_pause(o.index, Some(t)),
                Err(_) => self.settle_barge_pause(o.index, None),
            }
            self.last_final = self.last_final.max(o.index);
            if self.asr_prefix.as_ref().is_some_and(|p| p.index <= o.index) {
                self.asr_prefix = None;
            }
        }
        match o.result {
            Err(e) => self.error("asr", e, Some(500)),
            Ok(text) if text.is_empty() => {}
            Ok(text) if o.kind == AsrKind::Partial => self.emit(EventKind::AsrDelta {
                track_id,
                index: o.index,
                start_time,
                end_time,
                text,
            }),
            Ok(text) => {
                let latency = since.unwrap_or(o.queued_at).elapsed().as_millis() as u64;
                let data = serde_json::json!({ "index": o.index, "computeMs": o.compute_ms });
                self.emit(EventKind::Metrics {
                    key: format!("ttfb.asr.{name}"),
                    duration: latency,
                    data,
                });
                self.emit(EventKind::AsrFinal {
                    track_id,
                    index: o.index,
                    start_time,
                    end_time,
                    text,
                });
            }
        }
    }

    // ---- bot audio ----------------------------------------------------------------------

    async fn on_tick(&mut self) -> Flow {
        let mut events = std::mem::take(&mut self.player_events);
        let frame = self.player.next_frame(&mut events);
        let mut hangup = false;
        for e in events.drain(..) {
            match e {
                PlayerEvent::TrackStart { track_id, play_id } => {
                    self.emit(EventKind::TrackStart { track_id, play_id })
                }
                PlayerEvent::TrackEnd {
                    track_id,
                    play_id,
                    duration_ms,
                    auto_hangup,
                } => {
                    self.emit(EventKind::TrackEnd {
                        track_id,
                        play_id,
                        duration: duration_ms,
                    });
                    hangup |= auto_hangup;
                }
                PlayerEvent::Mark { name } => self.reach_mark(name),
            }
        }
        self.player_events = events;
        if let Some(frame) = frame {
            self.tap(AudioTrack::Bot, &frame);
            let sent = self.leg.as_mut().is_some_and(|l| l.send_audio(&frame));
            if !sent {
                self.audio_dropped += 1;
            }
        }
        if hangup {
            return self.auto_hangup().await;
        }
        Flow::Continue
    }

    fn leg_reports_playout(&self) -> bool {
        self.leg
            .as_ref()
            .is_some_and(|l| l.info().caps.playout_marks)
    }

    /// A track with `autoHangup` was sent: hang up now, or once the far end has played it.
    async fn auto_hangup(&mut self) -> Flow {
        if self.leg_reports_playout() {
            self.hangup_marks += 1;
            let name = format!("voxgate-hangup-{}", self.hangup_marks);
            if let Some(leg) = self.leg.as_mut() {
                let backlog = Duration::from_millis(leg.playout_backlog_ms());
                if leg.command(LegCommand::Mark(name.clone())) != LegReply::Done {
                    return self.end("autohangup", "system").await;
                }
                self.autohangup = Some((name, Instant::now() + backlog + PLAYOUT_GRACE));
                return Flow::Continue;
            }
        }
        self.end("autohangup", "system").await
    }

    fn reach_mark(&mut self, name: String) {
        if self.leg_reports_playout() {
            if let Some(leg) = self.leg.as_mut() {
                if leg.command(LegCommand::Mark(name.clone())) == LegReply::Done {
                    self.marks_at_leg.insert(name);
                    return;
                }
            }
        }
        self.emit(EventKind::Mark { name });
    }

    fn mark(&mut self, name: String) {
        if !self.bot_audio_allowed() {
            return self.error("command", "`mark` before the call is answered", Some(400));
        }
        // The mark follows the application audio sent so far.
        self.close_app_track();
        if self.player.is_active() {
            self.player.mark(&name);
        } else {
            self.reach_mark(name);
        }
    }

    /// Stops bot audio now: drops queued audio and pending synthesis, reports the position the
    /// caller heard, and tells the leg to drop what the far end buffered.
    fn interrupt(&mut self) {
        self.barge_pause = None;
        for (_, p) in self.producers.drain() {
            p.task.abort();
        }
        let cleared = self.player.clear();
        if let Some(i) = cleared.interrupted {
            let backlog = self.leg.as_ref().map_or(0, |l| l.playout_backlog_ms());
            let position = i.position_ms.saturating_sub(backlog);
            self.emit(EventKind::Interruption {
                track_id: i.track_id.clone(),
                play_id: i.play_id.clone(),
                position,
            });
            self.emit(EventKind::TrackEnd {
                track_id: i.track_id,
                play_id: i.play_id,
                duration: position,
            });
            if let Some(leg) = self.leg.as_mut() {
                leg.command(LegCommand::Clear);
            }
        }
        // Marks that will never be played out are reported (as Twilio does after `clear`).
        for name in cleared.marks {
            self.emit(EventKind::Mark { name });
        }
    }

    /// Opens a track for `play_id` (interrupting other audio) and returns its id.
    /// Application audio, queued behind what is playing (no interruption).
    fn queue_audio(&mut self, samples: Vec<i16>) {
        if !self.bot_audio_allowed() {
            return self.error("media", "audio before the call is answered", Some(400));
        }
        if samples.is_empty() {
            return;
        }
        // Appended to the application's open track when it is last in the queue (one track
        // per stream of commands, not per 20 ms message); a new one otherwise.
        let tail = self
            .player
            .open_tail()
            .filter(|t| t.starts_with(APP_TRACK))
            .map(str::to_string);
        let track_id = match tail {
            Some(t) => t,
            None => {
                let id = format!("{APP_TRACK}{}", uuid::Uuid::new_v4());
                self.player.open_track(&id, None, false);
                id
            }
        };
        self.player.push_audio(&track_id, &samples);
    }

    /// Closes the application's open track (its audio plays out, then `trackEnd`).
    fn close_app_track(&mut self) {
        if let Some(t) = self
            .player
            .open_tail()
            .filter(|t| t.starts_with(APP_TRACK))
            .map(str::to_string)
        {
            self.player.finish_track(&t, false);
        }
    }

    fn open_track(&mut self, play_id: Option<&str>, auto_hangup: bool) -> String {
        if self.player.is_active() {
            self.interrupt();
        }
        let track_id = play_id
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.player.open_track(&track_id, play_id, auto_hangup);
        track_id
    }

    fn send_dtmf(&mut self, keys: String, duration_ms: u32) {
        if self.phase != Phase::Answered {
            return self.error("dtmf", "`dtmf` before the call is answered", Some(400));
        }
        if let Some(leg) = self.leg.as_mut().filter(|l| l.info().caps.rfc4733) {
            if let LegReply::Refused {
                sender,
                code,
                message,
            } = leg.command(LegCommand::SendDtmf { keys, duration_ms })
            {
                self.error(sender, message, Some(code));
            }
            return;
        }
        // In-band: each key's two tones (ITU-T Q.23), then as long a pause, as a bot track.
        let track_id = self.open_track(None, false);
        self.player
            .push_audio(&track_id, &dtmf_tones(&keys, duration_ms));
        self.player.finish_track(&track_id, false);
    }

    fn transfer_reply(&mut self, accept: bool) {
        let answered = self.phase == Phase::Answered;
        match self.leg.as_mut() {
            Some(leg) if answered && leg.info().caps.transfer => {
                if let LegReply::Refused {
                    sender,
                    code,
                    message,
                } = leg.command(LegCommand::TransferReply { accept })
                {
                    self.error(sender, message, Some(code));
                }
            }
            _ => self.error(
                "command",
                "no transfer was asked for: wait for a `transfer` event with state `requested`",
                Some(400),
            ),
        }
    }

    fn transfer(&mut self, target: String) {
        let answered = self.phase == Phase::Answered;
        match self.leg.as_mut() {
            Some(leg) if answered && leg.info().caps.transfer => {
                if let LegReply::Refused {
                    sender,
                    code,
                    message,
                } = leg.command(LegCommand::Transfer(target))
                {
                    self.error(sender, message, Some(code));
                }
            }
            _ => self.error(
                "command",
                "`refer` needs an answered call on a leg that can transfer (SIP)",
                Some(400),
            ),
        }
    }

    fn tts(&mut self, t: TtsRequest) {
        if !self.bot_audio_allowed() {
            return self.error(
                "tts",
                "`tts` before the call is answered: send `invite`, `accept` or `progress` first",
                Some(400),
            );
        }
        let provider = t.provider.clone().or(self.media.tts_provider.clone());
        let synth = match self.speech.synthesizer(provider.as_deref()) {
            Ok(s) => s,
            Err(e) => return self.error("tts", e, Some(400)),
        };
        let speaker = t.speaker.clone().or(self.media.tts_speaker.clone());
        // Same playId as a track still being produced: append to it (no interruption).
        let existing = t
            .play_id
            .as_deref()
            .and_then(|p| self.player.track_for_play_id(p))
            .map(str::to_string)
            .filter(|id| self.producers.contains_key(id));
        let track_id = match existing {
            Some(id) => id,
            None => {
                let id = self.open_track(t.play_id.as_deref(), false);
                let (tx, rx) = mpsc::channel(PENDING_SENTENCES);
                let task = tokio::spawn(produce_tts(
                    rx,
                    synth,
                    speaker,
                    id.clone(),
                    self.work_tx.clone(),
                ));
                self.producers.insert(
                    id.clone(),
                    Producer {
                        tx: Some(tx),
                        // Any text starts speaking at its first clause: its synthesis is short,
                        // and the rest is synthesised while it plays.
                        splitter: SentenceSplitter::new(MAX_PENDING_CHARS).first_clause(true),
                        task,
                        auto_hangup: false,
                        requested_at: Instant::now(),
                        first_audio: false,
                    },
                );
                id
            }
        };
        let Some(p) = self.producers.get_mut(&track_id) else {
            return;
        };
        p.auto_hangup |= t.auto_hangup;
        let complete = !t.streaming || t.end_of_stream;
        let sentences = p.splitter.push(&t.text, complete);
        let mut overflow = false;
        if let Some(tx) = &p.tx {
            for s in sentences {
                if tx.try_send(s).is_err() {
                    overflow = true;
                }
            }
        }
        if complete {
            p.tx = None;
        }
        if overflow {
            self.error(
                "tts",
                format!(
                    "more than {PENDING_SENTENCES} sentences waiting for synthesis; text was dropped"
                ),
                Some(429),
            );
        }
    }

    fn play(&mut self, p: PlayRequest) {
        if !self.bot_audio_allowed() {
            return self.error(
                "play",
                "`play` before the call is answered: send `invite`, `accept` or `progress` first",
                Some(400),
            );
        }
        let track_id = self.open_track(p.play_id.as_deref(), p.auto_hangup);
        let tx = self.work_tx.clone();
        let loader = self.ctx.loader.clone();
        let id = track_id.clone();
        let url = p.url.clone();
        let task = tokio::spawn(async move {
            let input = match loader.load(&url).await {
                Ok(samples) => {
                    let _ = tx
                        .send(Work::Track(TrackInput::Audio {
                            track_id: id.clone(),
                            samples,
                            engine: "play".into(),
                        }))
                        .await;
                    TrackInput::Done { track_id: id }
                }
                Err(error) => TrackInput::Error {
                    track_id: id,
                    sender: "play",
                    error,
                    fatal: true,
                },
            };
            let _ = tx.send(Work::Track(input)).await;
        });
        self.producers.insert(
            track_id,
            Producer {
                tx: None,
                splitter: SentenceSplitter::default(),
                task,
                auto_hangup: p.auto_hangup,
                requested_at: Instant::now(),
                first_audio: false,
            },
        );
    }

    fn track_input(&mut self, t: TrackInput) {
        match t {
            TrackInput::Audio {
                track_id,
                samples,
                engine,
            } => {
                let mut metric = None;
                if let Some(p) = self.producers.get_mut(&track_id) {
                    if !p.first_audio {
                        p.first_audio = true;
                        metric = Some(p.requested_at.elapsed().as_millis() as u64);
                    }
                }
                if let Some(ms) = metric {
                    let data = serde_json::json!({ "trackId": track_id });
                    self.emit(EventKind::Metrics {
                        key: format!("ttfb.tts.{engine}"),
                        duration: ms,
                        data,
                    });
                }
                self.player.push_audio(&track_id, &samples);
            }
            TrackInput::Error {
                track_id,
                sender,
                error,
                fatal,
            } => {
                if fatal {
                    self.player.remove_track(&track_id);
                    if let Some(p) = self.producers.remove(&track_id) {
                        p.task.abort();
                    }
                }
                self.emit(EventKind::Error {
                    track_id,
                    sender: sender.into(),
                    error,
                    code: None,
                });
            }
            TrackInput::Done { track_id } => {
                if let Some(p) = self.producers.remove(&track_id) {
                    self.player.finish_track(&track_id, p.auto_hangup);
                }
            }
        }
    }

    // ---- the end ------------------------------------------------------------------------

    /// Takes the next input before `deadline` during the end of the call; pending legs that
    /// arrive now are refused, commands and audio are ignored.
    async fn next_work(&mut self, deadline: Instant) -> Option<Work> {
        loop {
            let r = tokio::select! {
                m = self.rx.recv() => {
                    if let Some(CallInput::Attach(p)) = m {
                        p.refuse("busy");
                    }
                    continue;
                }
                _ = self.leg_rx.recv() => continue,
                w = tokio::time::timeout_at(deadline, self.work_rx.recv()) => w,
            };
            match r {
                Ok(Some(w @ (Work::Asr(_) | Work::Vad(_)))) => return Some(w),
                Ok(Some(Work::Track(_))) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Ends the call: closes the leg, finishes transcripts (up to the drain time; later ones are
    /// stored in the background), reports `hangup`, records the end.
    async fn end(&mut self, reason: &str, initiator: &str) -> Flow {
        if self.phase == Phase::Ended {
            return Flow::Stop;
        }
        self.phase = Phase::Ended;
        self.autohangup = None;
        for (_, p) in self.producers.drain() {
            p.task.abort();
        }
        self.player.clear();
        if let Some(leg) = self.leg.take() {
            let headers = std::mem::take(&mut self.hangup_headers);
            match tokio::time::timeout(self.settings.leg_close, leg.close(reason, &headers)).await {
                Ok(Some(report)) => {
                    self.store(StoreOp::Quality(report.data.clone()));
                    self.emit(EventKind::Metrics {
                        key: report.key,
                        duration: 0,
                        data: report.data,
                    });
                }
                Ok(None) => {}
                Err(_) => tracing::warn!(call = %self.id, "the leg did not close in time"),
            }
        }
        let deadline = Instant::now() + self.settings.drain;
        // Caller audio still with the VAD, then the utterance in progress.
        while self.vad_in_flight {
            match self.next_work(deadline).await {
                Some(Work::Vad(b)) => self.vad_done(b, false),
                Some(Work::Asr(o)) => self.asr_done(o),
                _ => break,
            }
        }
        let vad = self.pipeline.as_mut().and_then(|p| p.take_vad());
        while let Some(f) = self.vad_pending.pop_front() {
            let prob = self.pipeline.as_ref().map_or(0.0, |p| p.last_prob());
            self.process_caller_frame(f, Some(prob), false);
        }
        let mut ev = Vec::new();
        if let Some(p) = self.pipeline.as_mut() {
            p.finish(&mut ev);
            if let Some(v) = vad {
                p.restore_vad(v);
            }
        }
        for e in ev {
            self.media_event(e);
        }
        // Partials are moot now, and so is a speculation the final did not confirm.
        self.asr_queue.retain(|j| j.kind == AsrKind::Final);
        self.pump_asr();
        while self.asr_busy || !self.asr_queue.is_empty() {
            match self.next_work(deadline).await {
                Some(Work::Asr(o)) => {
                    self.asr_done(o);
                    self.pump_asr();
                }
                Some(_) => {}
                None => break,
            }
        }
        if !self.asr_queue.is_empty() {
            // The drain time is over: the remaining utterances are still transcribed and
            // stored, after `hangup`.
            let jobs: Vec<AsrJob> = self.asr_queue.drain(..).collect();
            tracing::warn!(call = %self.id, utterances = jobs.len(), "hang-up before every transcript was ready; finishing them in the background");
            if let Some(ctx) = self.asr_context() {
                self.tasks.spawn(async move {
                    for job in jobs {
                        let _ = transcribe(job, None, &ctx).await;
                    }
                });
            }
        }
        if self.audio_dropped > 0 {
            let data = serde_json::json!({ "frames": self.audio_dropped });
            self.emit(EventKind::Metrics {
                key: "audio_dropped".into(),
                duration: 0,
                data,
            });
        }
        self.store(StoreOp::Ended {
            at: now_ms(),
            reason: reason.to_string(),
            initiator: initiator.to_string(),
        });
        let (ftx, frx) = oneshot::channel();
        self.store(StoreOp::Flush(ftx));
        if tokio::time::timeout(STORE_FLUSH, frx).await.is_err() {
            tracing::warn!(call = %self.id, "the store is slow: `hangup` goes out before the end is written");
        }
        self.emit(EventKind::Hangup {
            reason: reason.into(),
            initiator: initiator.into(),
        });
        tracing::info!(call = %self.id, reason, initiator, "call ended");
        for mut s in self.subscribers.drain(..) {
            s.closed(Unsubscribed::CallEnded);
        }
        Flow::Stop
    }
}

/// Transcribes one utterance (waiting for a model instance unless `permit` is given) and stores
/// a final transcript before reporting it.
async fn transcribe(
    job: AsrJob,
    permit: Option<OwnedSemaphorePermit>,
    ctx: &AsrContext,
) -> AsrOutcome {
    let AsrJob {
        index,
        kind,
        start_ms,
        end_ms,
        samples,
        queued_at,
        confirmed,
        prefix,
    } = job;
    let len = samples.len();
    let (skip, head) = prefix.unwrap_or_default();
    let _permit = match permit {
        Some(p) => Some(p),
        None => ctx.slots.clone().acquire_owned().await.ok(),
    };
    let asr = ctx.asr.clone();
    let r = tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let tail = samples.get(skip..).unwrap_or_default();
        (asr.transcribe(tail), t.elapsed().as_millis() as u64)
    })
    .await;
    let (result, compute_ms) = match r {
        Ok((r, ms)) => (
            r.map(|t| join_transcripts(&head, &t))
                .map_err(|e| e.to_string()),
            ms,
        ),
        Err(e) => (Err(format!("asr task failed: {e}")), 0),
    };
    // Finals are stored here (so that one finished after the call's end is not lost), and so is a
    // speculation confirmed by the time it is done; a later confirmation stores it in the actor.
    let store = match kind {
        AsrKind::Partial => false,
        AsrKind::Final => true,
        AsrKind::Speculative => confirmed.load(Ordering::SeqCst),
    };
    if let (true, Ok(text)) = (store, &result) {
        if !text.is_empty() {
            let rec = TranscriptRecord {
                call_id: ctx.call_id.clone(),
                index: index as i64,
                start_ms: Some(ctx.epoch_ms + start_ms as i64),
                end_ms: Some(ctx.epoch_ms + end_ms as i64),
                text: text.clone(),
                created_at: now_ms(),
            };
            if let Err(e) = ctx.store.transcript_added(&rec).await {
                tracing::error!(call = %ctx.call_id, "{e}");
            }
        }
    }
    AsrOutcome {
        index,
        kind,
        len,
        stored: store,
        start_ms,
        end_ms,
        queued_at,
        compute_ms,
        result,
    }
}

/// Applies one call's store writes in order.
async fn write_loop(id: String, store: Arc<dyn CallStore>, mut rx: mpsc::Receiver<StoreOp>) {
    while let Some(op) = rx.recv().await {
        let r = match op {
            StoreOp::Answered {
                codec,
                caller,
                callee,
                at,
            } => {
                store
                    .call_answered(&id, &codec, caller.as_deref(), callee.as_deref(), at)
                    .await
            }
            StoreOp::Quality(q) => store.call_quality(&id, &q).await,
            StoreOp::Ended {
                at,
                reason,
                initiator,
            } => store.call_ended(&id, at, &reason, &initiator).await,
            StoreOp::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        if let Err(e) = r {
            tracing::error!(call = %id, "{e}");
        }
    }
}

/// DTMF keys as 16 kHz audio: each key `duration_ms` of its row and column tones at −10 dBFS
/// each, then as long a silence.
fn dtmf_tones(keys: &str, duration_ms: u32) -> Vec<i16> {
    let n = (duration_ms * 16) as usize;
    const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    const KEYPAD: [&str; 4] = ["123A", "456B", "789C", "*0#D"];
    let mut out = Vec::new();
    for k in keys.chars() {
        let Some((r, c)) = KEYPAD
            .iter()
            .enumerate()
            .find_map(|(r, row)| row.find(k).map(|c| (r, c)))
        else {
            continue;
        };
        let amp = 32767.0 * 10f32.powf(-10.0 / 20.0);
        out.extend((0..n).map(|i| {
            let t = i as f32 / 16000.0;
            (amp * ((2.0 * std::f32::consts::PI * ROWS[r] * t).sin()
                + (2.0 * std::f32::consts::PI * COLS[c] * t).sin())
                / 2.0) as i16
        }));
        out.extend(std::iter::repeat_n(0i16, n));
    }
    out
}

/// Synthesises sentences in order for one track and hands the audio (16 kHz) to the call.
async fn produce_tts(
    mut rx: mpsc::Receiver<String>,
    synth: Arc<dyn voxgate_media::speech::Synthesizer>,
    speaker: Option<String>,
    track_id: String,
    tx: mpsc::Sender<Work>,
) {
    let engine = synth.name().to_string();
    while let Some(sentence) = rx.recv().await {
        let s = synth.clone();
        let sp = speaker.clone();
        let r = tokio::task::spawn_blocking(move || {
            let f = s.synthesize(&sentence, sp.as_deref()).map_err(|e| {
                (
                    matches!(e, voxgate_media::speech::SpeechError::BadInput(_)),
                    e.to_string(),
                )
            })?;
            resample_clip(&f.samples, f.rate, SampleRate::HZ_16000)
                .map_err(|e| (false, e.to_string()))
        })
        .await
        .unwrap_or_else(|e| Err((false, e.to_string())));
        let input = match r {
            Ok(samples) => TrackInput::Audio {
                track_id: track_id.clone(),
                samples,
                engine: engine.clone(),
            },
            Err((fatal, error)) => {
                let e = TrackInput::Error {
                    track_id: track_id.clone(),
                    sender: "tts",
                    error,
                    fatal,
                };
                if fatal {
                    let _ = tx.send(Work::Track(e)).await;
                    return;
                }
                e
            }
        };
        if tx.send(Work::Track(input)).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Work::Track(TrackInput::Done { track_id })).await;
}
