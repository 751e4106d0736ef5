//! The call actor: one tokio task per call owning the media pipeline, the playout queue and the
//! call state. Inputs arrive on one bounded inbox ([`ActorInput`]); outputs leave on one bounded
//! outbox ([`Outbound`]) in order, so that no bot audio follows an `interruption` event.
//!
//! Queue policies: the inbox (256) makes senders wait (control and caller audio are never
//! dropped; a client that floods audio is slowed by TCP back-pressure). The outbox (10 frames =
//! 200 ms of audio plus events): events wait; a bot audio frame that finds it full is dropped and
//! counted (`audio_dropped` in the `metrics` event at hang-up).
//!
//! The playout clock ticks every 20 ms only while something is queued to play; an idle call costs
//! no timer wake-ups.

use super::{now_ms, CallCommand, CallEvent, EventKind, InviteOptions, PlayRequest, TtsRequest};
use crate::engines::Engines;
use crate::sip::call::{SipLeg, SipSignal};
use crate::sip::{IncomingCall, SipService};
use crate::store::{CallRecord, Store, TranscriptRecord};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use voxgate_media::codec::{AudioEncoder, Codec};
use voxgate_media::pipeline::{InboundConfig, InboundPipeline, MediaEvent};
use voxgate_media::player::{Player, PlayerEvent};
use voxgate_media::resample::{resample_clip, StreamResampler};
use voxgate_media::speech::take_sentences;
use voxgate_media::vad::SegmenterConfig;
use voxgate_media::SampleRate;

/// Inbox capacity (messages).
pub const INBOX: usize = 256;
/// Outbox capacity (events and 20 ms audio frames).
pub const OUTBOX: usize = 10;
/// Sentences a TTS track may have waiting for synthesis.
const PENDING_SENTENCES: usize = 64;
/// Final transcripts a call may have waiting for the ASR engine.
const PENDING_ASR: usize = 32;

/// Everything an actor reacts to.
#[derive(Debug)]
pub enum ActorInput {
    Command(CallCommand),
    /// Caller audio in the invite's codec, any size.
    Audio(Bytes),
    /// `POST /call/kill/{id}`.
    Kill,
    /// The leg (WebSocket) closed.
    LegClosed,
    /// Server shutdown.
    Shutdown,
    Asr(AsrOutcome),
    /// Synthesised or decoded audio for a track: 16 kHz mono.
    TrackAudio {
        track_id: String,
        samples: Vec<i16>,
        engine: String,
    },
    /// A track's producer failed (`sender` is `tts` or `play`).
    TrackError {
        track_id: String,
        sender: &'static str,
        error: String,
        fatal: bool,
    },
    /// A track's producer is done.
    TrackDone {
        track_id: String,
    },
    /// An event a leg observed (RFC 4733 or SIP INFO DTMF), emitted in order.
    LegEvent(EventKind),
    /// The SIP dialog's progress (`/call/sip`).
    Sip(SipSignal),
    /// An inbound SIP call handed to this (waiting) `/call/sip` client.
    SipIncoming(Box<IncomingCall>),
}

/// Result of one ASR job.
#[derive(Debug)]
pub struct AsrOutcome {
    index: u32,
    partial: bool,
    start_ms: u64,
    end_ms: u64,
    queued_at: Instant,
    compute_ms: u64,
    result: Result<String, String>,
}

/// What leaves the actor, in order.
#[derive(Debug)]
pub enum Outbound {
    Event(CallEvent),
    Audio(Bytes),
}

/// Per-call settings from the server configuration.
#[derive(Clone)]
pub struct CallSettings {
    pub barge_in_ms: u32,
    pub vad_gate_dbfs: f32,
    pub segmenter: SegmenterConfig,
    pub partial_interval_ms: u32,
    pub drain: Duration,
}

/// What an actor needs from the server.
#[derive(Clone)]
pub struct CallContext {
    pub engines: Arc<Engines>,
    pub store: Arc<dyn Store>,
    pub http: reqwest::Client,
    pub settings: CallSettings,
}

struct AsrJob {
    index: u32,
    partial: bool,
    start_ms: u64,
    end_ms: u64,
    samples: Vec<f32>,
    queued_at: Instant,
}

struct Producer {
    /// Sentences to synthesise; `None` once the text is complete.
    tx: Option<mpsc::Sender<String>>,
    task: JoinHandle<()>,
    text: String,
    auto_hangup: bool,
    requested_at: Instant,
    first_audio: bool,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum State {
    Ringing,
    Answered,
    Ended,
}

enum Flow {
    Continue,
    Stop,
}

/// The actor. Build with [`CallActor::new`], then `run` it on its own task.
pub struct CallActor {
    id: String,
    transport: &'static str,
    ctx: CallContext,
    inbox: mpsc::Receiver<ActorInput>,
    self_tx: mpsc::Sender<ActorInput>,
    out: mpsc::Sender<Outbound>,
    state: State,
    created_at: i64,
    invite: Option<InviteOptions>,
    pipeline: Option<InboundPipeline>,
    encoder: Option<AudioEncoder>,
    out_resampler: Option<StreamResampler>,
    player: Player,
    producers: HashMap<String, Producer>,
    asr_queue: VecDeque<AsrJob>,
    asr_busy: bool,
    media_epoch_ms: Option<i64>,
    audio_dropped: u64,
    media_events: Vec<MediaEvent>,
    player_events: Vec<PlayerEvent>,
    audio_before_invite: bool,
    /// Set for `/call/sip` calls.
    sip_service: Option<Arc<SipService>>,
    sip: Option<SipLeg>,
    /// Bot audio goes here instead of the outbox (the RTP leg).
    audio_sink: Option<crate::sip::media::AudioSink>,
    /// The `invite` options while an outbound SIP call rings.
    dialing: Option<InviteOptions>,
}

impl CallActor {
    /// A new actor and the sender of its inbox.
    pub fn new(
        id: String,
        transport: &'static str,
        ctx: CallContext,
        out: mpsc::Sender<Outbound>,
    ) -> (Self, mpsc::Sender<ActorInput>) {
        let (tx, rx) = mpsc::channel(INBOX);
        let actor = CallActor {
            id,
            transport,
            ctx,
            inbox: rx,
            self_tx: tx.clone(),
            out,
            state: State::Ringing,
            created_at: now_ms(),
            invite: None,
            pipeline: None,
            encoder: None,
            out_resampler: None,
            player: Player::new(),
            producers: HashMap::new(),
            asr_queue: VecDeque::new(),
            asr_busy: false,
            media_epoch_ms: None,
            audio_dropped: 0,
            media_events: Vec::new(),
            player_events: Vec::new(),
            audio_before_invite: false,
            sip_service: None,
            sip: None,
            audio_sink: None,
            dialing: None,
        };
        (actor, tx)
    }

    /// Makes this a SIP call: `invite` dials, `accept` answers an inbound call, audio goes over RTP.
    pub fn with_sip(mut self, svc: Arc<SipService>, incoming: Option<IncomingCall>) -> Self {
        if let Some(call) = incoming {
            self.sip = Some(SipLeg::incoming(
                svc.clone(),
                call,
                self.self_tx.clone(),
                self.id.clone(),
            ));
        }
        self.sip_service = Some(svc);
        self
    }

    /// Runs the call until it ends; records it in the store.
    pub async fn run(mut self) {
        let rec = CallRecord {
            id: self.id.clone(),
            transport: self.transport.into(),
            created_at: self.created_at,
            ..Default::default()
        };
        if let Err(e) = self.ctx.store.call_created(&rec).await {
            tracing::error!(call = %self.id, "{e}");
        }
        if self.sip.is_some() {
            self.announce_incoming().await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut was_active = false;
        loop {
            let active = self.player.is_active() && !self.player.is_paused();
            if active && !was_active {
                tick.reset_immediately();
            }
            was_active = active;
            let flow = tokio::select! {
                biased;
                m = self.inbox.recv() => match m {
                    Some(m) => self.handle(m).await,
                    None => self.end("disconnected", "user").await,
                },
                _ = tick.tick(), if active => self.on_tick().await,
            };
            if let Flow::Stop = flow {
                break;
            }
        }
    }

    async fn emit(&mut self, kind: EventKind) {
        // Events wait for room: they are never dropped. A client that stops reading stalls its
        // own call only.
        let _ = self.out.send(Outbound::Event(CallEvent::now(kind))).await;
    }

    async fn error(&mut self, sender: &str, error: impl Into<String>, code: Option<u16>) {
        let error = error.into();
        tracing::debug!(call = %self.id, sender, "{error}");
        self.emit(EventKind::Error {
            track_id: self.id.clone(),
            sender: sender.into(),
            error,
            code,
        })
        .await;
    }

    fn epoch(&self, media_ms: u64) -> i64 {
        self.media_epoch_ms.unwrap_or(self.created_at) + media_ms as i64
    }

    async fn handle(&mut self, m: ActorInput) -> Flow {
        match m {
            ActorInput::Command(c) => return self.command(c).await,
            ActorInput::Audio(b) => self.audio(&b).await,
            ActorInput::Kill => return self.end("killed", "system").await,
            ActorInput::LegClosed => return self.end("disconnected", "user").await,
            ActorInput::Shutdown => return self.end("server_shutdown", "system").await,
            ActorInput::Asr(o) => self.asr_done(o).await,
            ActorInput::TrackAudio {
                track_id,
                samples,
                engine,
            } => {
                if let Some(p) = self.producers.get_mut(&track_id) {
                    if !p.first_audio {
                        p.first_audio = true;
                        let ms = p.requested_at.elapsed().as_millis() as u64;
                        let data = serde_json::json!({ "trackId": track_id });
                        self.emit(EventKind::Metrics {
                            key: format!("ttfb.tts.{engine}"),
                            duration: ms,
                            data,
                        })
                        .await;
                    }
                }
                self.player.push_audio(&track_id, &samples);
            }
            ActorInput::TrackError {
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
                })
                .await;
            }
            ActorInput::TrackDone { track_id } => {
                if let Some(p) = self.producers.remove(&track_id) {
                    self.player.finish_track(&track_id, p.auto_hangup);
                }
            }
            ActorInput::LegEvent(kind) => self.emit(kind).await,
            ActorInput::Sip(signal) => return self.sip_signal(signal).await,
            ActorInput::SipIncoming(call) => {
                if self.sip.is_some() || self.state != State::Ringing {
                    // Raced with our own invite: refuse it so the caller is not left ringing.
                    let _ = call.dialog.reject(
                        Some(rsipstack::sip::StatusCode::BusyHere),
                        Some("client busy".into()),
                    );
                } else if let Some(svc) = self.sip_service.clone() {
                    self.sip = Some(SipLeg::incoming(
                        svc,
                        *call,
                        self.self_tx.clone(),
                        self.id.clone(),
                    ));
                    self.announce_incoming().await;
                }
            }
        }
        Flow::Continue
    }

    async fn announce_incoming(&mut self) {
        let Some(leg) = self.sip.as_ref() else { return };
        let kind = EventKind::Incoming {
            track_id: self.id.clone(),
            caller: leg.caller.clone(),
            callee: leg.callee.clone(),
            sdp: leg.offer().unwrap_or_default().to_string(),
        };
        self.emit(kind).await;
    }

    /// `invite` on `/call/sip`: dial.
    async fn sip_invite(&mut self, o: InviteOptions) {
        if self.sip.is_some() || self.state != State::Ringing {
            return self
                .error("command", "this call already has a SIP dialog", Some(400))
                .await;
        }
        let Some(svc) = self.sip_service.clone() else {
            return;
        };
        match SipLeg::dial(svc, &o, self.self_tx.clone(), self.id.clone()).await {
            Ok(leg) => {
                self.sip = Some(leg);
                self.dialing = Some(o);
            }
            Err(e) => self.error("sip", e, Some(400)).await,
        }
    }

    /// `accept` on `/call/sip`: answer the inbound call this client was given.
    async fn sip_accept(&mut self, o: InviteOptions) -> Flow {
        let Some(leg) = self
            .sip
            .as_mut()
            .filter(|l| !l.is_outbound() && !l.is_answered())
        else {
            self.error("command", "`accept` needs an inbound call: wait for the `incoming` event (or connect with the id a webhook gave)", Some(400)).await;
            return Flow::Continue;
        };
        match leg.accept(o.codec).await {
            Ok((sdp, rate)) => {
                self.start_sip_media(o, rate, sdp).await;
                Flow::Continue
            }
            Err((code, e)) => {
                self.error("sip", format!("cannot answer: {e}"), Some(code))
                    .await;
                if let Some(l) = self.sip.as_mut() {
                    l.mark_remote_end();
                }
                self.end(crate::sip::call::reason_for_status(code), "system")
                    .await
            }
        }
    }

    async fn start_sip_media(&mut self, mut o: InviteOptions, rate: u32, sdp: String) {
        o.codec = Codec::Pcm(SampleRate::new(rate).unwrap_or(SampleRate::HZ_8000));
        if let Some(leg) = self.sip.as_ref() {
            o.caller = o.caller.or(Some(leg.caller.clone()));
            o.callee = o.callee.or(Some(leg.callee.clone()));
            self.audio_sink = leg.audio_sink();
        }
        self.answer(o, Some(sdp)).await;
    }

    async fn sip_signal(&mut self, s: SipSignal) -> Flow {
        match s {
            SipSignal::Ringing { early_media } => {
                self.emit(EventKind::Ringing {
                    track_id: self.id.clone(),
                    early_media,
                })
                .await
            }
            SipSignal::Answered { sdp } => {
                let Some(leg) = self.sip.as_mut() else {
                    return Flow::Continue;
                };
                match leg.on_answered(&sdp) {
                    Ok(rate) => {
                        let o = self.dialing.take().unwrap_or(InviteOptions {
                            caller: None,
                            callee: None,
                            offer: None,
                            codec: Codec::Pcmu,
                            asr: true,
                            tts_provider: None,
                            tts_speaker: None,
                            barge_in_ms: None,
                            barge_in: true,
                        });
                        self.start_sip_media(o, rate, sdp).await;
                    }
                    Err((code, e)) => {
                        self.error("sip", format!("unusable SDP answer: {e}"), Some(code))
                            .await;
                        return self.end("codec_mismatch", "system").await;
                    }
                }
            }
            SipSignal::Failed { code, reason } => {
                self.error("sip", format!("call failed: {reason}"), Some(code))
                    .await;
                if let Some(l) = self.sip.as_mut() {
                    l.mark_remote_end();
                }
                return self
                    .end(crate::sip::call::reason_for_status(code), "callee")
                    .await;
            }
            SipSignal::Transferred => return self.end("transferred", "system").await,
            SipSignal::TransferFailed { code, reason } => {
                self.error("sip", format!("transfer failed: {reason}"), Some(code))
                    .await
            }
            SipSignal::RingTimeout => {
                if self.sip.as_ref().is_some_and(|l| !l.is_answered()) {
                    return self.end("no_answer", "system").await;
                }
            }
            SipSignal::Ended { reason } => {
                let Some(l) = self.sip.as_mut() else {
                    return Flow::Continue;
                };
                l.mark_remote_end();
                let initiator = if l.is_outbound() { "callee" } else { "caller" };
                return self.end(&reason, initiator).await;
            }
        }
        Flow::Continue
    }

    async fn command(&mut self, c: CallCommand) -> Flow {
        match c {
            CallCommand::Invite(o) if self.sip_service.is_some() => self.sip_invite(o).await,
            CallCommand::Accept(o) if self.sip_service.is_some() => {
                return self.sip_accept(o).await
            }
            CallCommand::Invite(o) | CallCommand::Accept(o) => self.answer(o, None).await,
            CallCommand::Tts(t) => self.tts(t).await,
            CallCommand::Play(p) => self.play(p).await,
            CallCommand::Hangup { reason, initiator } => {
                let reason = reason.unwrap_or_else(|| "hangup".into());
                let initiator = initiator.unwrap_or_else(|| "user".into());
                return self.end(&reason, &initiator).await;
            }
            CallCommand::Interrupt => self.interrupt().await,
            CallCommand::Pause => self.player.pause(),
            CallCommand::Resume => self.player.resume(),
            CallCommand::SendDtmf(keys) => self.send_dtmf(keys).await,
            CallCommand::Transfer(target) => match self.sip.as_mut() {
                Some(leg) if leg.is_answered() => {
                    if let Err(e) = leg.refer(&target) {
                        self.error("sip", e, Some(400)).await;
                    }
                }
                _ => {
                    self.error(
                        "command",
                        "`refer` needs an answered call on /call/sip",
                        Some(400),
                    )
                    .await
                }
            },
        }
        Flow::Continue
    }

    async fn answer(&mut self, o: InviteOptions, sdp: Option<String>) {
        if self.state != State::Ringing {
            return self
                .error("command", "the call is already answered", Some(400))
                .await;
        }
        if o.codec == Codec::Opus {
            return self.error("command", "codec `opus` needs packets: use it on /call/sip (or /call/webrtc); /call carries pcm, pcmu, pcma or g722", Some(400)).await;
        }
        if o.asr && self.ctx.engines.asr.is_none() {
            self.error(
                "asr",
                "speech recognition is disabled on this server (asr.engine = \"none\")",
                Some(503),
            )
            .await;
        }
        if let Err(e) = self.ctx.engines.synthesizer(o.tts_provider.as_deref()) {
            return self.error("tts", e, Some(400)).await;
        }
        let cfg = InboundConfig {
            segmenter: self.ctx.settings.segmenter.clone(),
            asr: o.asr && self.ctx.engines.asr.is_some(),
            partial_interval_ms: self.ctx.settings.partial_interval_ms,
            vad_gate_dbfs: self.ctx.settings.vad_gate_dbfs,
            ..InboundConfig::default()
        };
        self.pipeline = Some(InboundPipeline::new(
            o.codec,
            self.ctx.engines.new_detector(),
            cfg,
        ));
        self.encoder = Some(AudioEncoder::new(o.codec));
        self.out_resampler = Some(
            StreamResampler::new(SampleRate::HZ_16000, o.codec.sample_rate())
                .expect("supported rates"),
        );
        self.state = State::Answered;
        let at = now_ms();
        if let Err(e) = self
            .ctx
            .store
            .call_answered(
                &self.id,
                o.codec.name(),
                o.caller.as_deref(),
                o.callee.as_deref(),
                at,
            )
            .await
        {
            tracing::error!(call = %self.id, "{e}");
        }
        self.invite = Some(o);
        self.emit(EventKind::Answer {
            track_id: self.id.clone(),
            sdp,
        })
        .await;
    }

    async fn audio(&mut self, bytes: &[u8]) {
        let Some(pipeline) = self.pipeline.as_mut() else {
            if !self.audio_before_invite {
                self.audio_before_invite = true;
                self.error("media", "binary audio before `invite`: send invite with a codec first; audio is dropped until then", Some(400)).await;
            }
            return;
        };
        if self.media_epoch_ms.is_none() {
            self.media_epoch_ms = Some(now_ms());
        }
        let mut events = std::mem::take(&mut self.media_events);
        pipeline.push_payload(bytes, &mut events);
        let voiced = pipeline.voiced_run_ms();
        for e in events.drain(..) {
            self.media_event(e).await;
        }
        self.media_events = events;
        let barge = self.invite.as_ref().map(|o| o.barge_in).unwrap_or(true);
        let min = self
            .invite
            .as_ref()
            .and_then(|o| o.barge_in_ms)
            .unwrap_or(self.ctx.settings.barge_in_ms) as u64;
        if barge && self.player.is_playing() && voiced >= min {
            self.interrupt().await;
        }
    }

    async fn media_event(&mut self, e: MediaEvent) {
        let track_id = self.id.clone();
        match e {
            MediaEvent::Speaking { start_ms } => {
                let start_time = self.epoch(start_ms);
                self.emit(EventKind::Speaking {
                    track_id,
                    start_time,
                })
                .await
            }
            MediaEvent::Silence {
                start_ms,
                duration_ms,
            } => {
                let start_time = self.epoch(start_ms);
                self.emit(EventKind::Silence {
                    track_id,
                    start_time,
                    duration: duration_ms,
                })
                .await
            }
            MediaEvent::Dtmf { digit, .. } => self.emit(EventKind::Dtmf { track_id, digit }).await,
            MediaEvent::UtterancePartial {
                index,
                start_ms,
                end_ms,
                samples,
            } => {
                // Only the newest partial matters: replace a waiting one.
                self.asr_queue.retain(|j| !j.partial);
                self.asr_queue.push_back(AsrJob {
                    index,
                    partial: true,
                    start_ms,
                    end_ms,
                    samples,
                    queued_at: Instant::now(),
                });
                self.pump_asr();
            }
            MediaEvent::UtteranceFinal {
                index,
                start_ms,
                end_ms,
                samples,
            } => {
                self.asr_queue.retain(|j| !(j.partial && j.index == index));
                if self.asr_queue.len() >= PENDING_ASR {
                    return self.error("asr", format!("speech recognition is behind; utterance {index} was not transcribed"), Some(503)).await;
                }
                self.asr_queue.push_back(AsrJob {
                    index,
                    partial: false,
                    start_ms,
                    end_ms,
                    samples,
                    queued_at: Instant::now(),
                });
                self.pump_asr();
            }
        }
    }

    fn pump_asr(&mut self) {
        if self.asr_busy {
            return;
        }
        let Some(asr) = self.ctx.engines.asr.clone() else {
            return;
        };
        let slots = self.ctx.engines.asr_slots.clone();
        let (job, permit) = loop {
            let Some(job) = self.asr_queue.pop_front() else {
                return;
            };
            if !job.partial {
                break (job, None);
            }
            // A partial result is worth computing only with an idle model.
            if let Ok(p) = slots.clone().try_acquire_owned() {
                break (job, Some(p));
            }
        };
        self.asr_busy = true;
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            let AsrJob {
                index,
                partial,
                start_ms,
                end_ms,
                samples,
                queued_at,
            } = job;
            let _permit = match permit {
                Some(p) => p,
                None => match slots.acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let r = tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                (asr.transcribe(&samples), t.elapsed().as_millis() as u64)
            })
            .await;
            let (result, compute_ms) = match r {
                Ok((r, ms)) => (r.map_err(|e| e.to_string()), ms),
                Err(e) => (Err(format!("asr task failed: {e}")), 0),
            };
            let _ = tx
                .send(ActorInput::Asr(AsrOutcome {
                    index,
                    partial,
                    start_ms,
                    end_ms,
                    queued_at,
                    compute_ms,
                    result,
                }))
                .await;
        });
    }

    async fn asr_done(&mut self, o: AsrOutcome) {
        self.asr_busy = false;
        let name = self
            .ctx
            .engines
            .asr
            .as_ref()
            .map(|a| a.name().to_string())
            .unwrap_or_default();
        let track_id = self.id.clone();
        let (start_time, end_time) = (self.epoch(o.start_ms), self.epoch(o.end_ms));
        match o.result {
            Err(e) => self.error("asr", e, Some(500)).await,
            Ok(text) if text.is_empty() => {}
            Ok(text) if o.partial => {
                self.emit(EventKind::AsrDelta {
                    track_id,
                    index: o.index,
                    start_time,
                    end_time,
                    text,
                })
                .await;
            }
            Ok(text) => {
                let latency = o.queued_at.elapsed().as_millis() as u64;
                let data = serde_json::json!({ "index": o.index, "computeMs": o.compute_ms });
                self.emit(EventKind::Metrics {
                    key: format!("ttfb.asr.{name}"),
                    duration: latency,
                    data,
                })
                .await;
                let rec = TranscriptRecord {
                    call_id: self.id.clone(),
                    index: o.index as i64,
                    start_ms: Some(start_time),
                    end_ms: Some(end_time),
                    text: text.clone(),
                    created_at: now_ms(),
                };
                if let Err(e) = self.ctx.store.transcript_added(&rec).await {
                    tracing::error!(call = %self.id, "{e}");
                }
                self.emit(EventKind::AsrFinal {
                    track_id,
                    index: o.index,
                    start_time,
                    end_time,
                    text,
                })
                .await;
            }
        }
        self.pump_asr();
    }

    async fn send_dtmf(&mut self, keys: String) {
        if self.state != State::Answered {
            return self
                .error("dtmf", "`dtmf` before the call is answered", Some(400))
                .await;
        }
        if let Some(leg) = &self.sip {
            if let Err(e) = leg.send_dtmf(&keys) {
                self.error("dtmf", e, Some(400)).await;
            }
            return;
        }
        // In-band: 100 ms of each key's two tones (ITU-T Q.23), 100 ms apart, as a bot track.
        let track_id = self.open_track(None, false).await;
        self.player.push_audio(&track_id, &dtmf_tones(&keys));
        self.player.finish_track(&track_id, false);
    }

    /// Stops bot audio now: drops queued audio and pending synthesis, reports the position.
    async fn interrupt(&mut self) {
        for (_, p) in self.producers.drain() {
            p.task.abort();
        }
        if let Some(i) = self.player.interrupt() {
            self.emit(EventKind::Interruption {
                track_id: i.track_id.clone(),
                play_id: i.play_id.clone(),
                position: i.position_ms,
            })
            .await;
            self.emit(EventKind::TrackEnd {
                track_id: i.track_id,
                play_id: i.play_id,
                duration: i.position_ms,
            })
            .await;
        }
    }

    /// Opens a track for `play_id` (interrupting other audio unless the `playId` is the playing
    /// one's) and returns its id.
    async fn open_track(&mut self, play_id: Option<&str>, auto_hangup: bool) -> String {
        if self.player.is_active() {
            self.interrupt().await;
        }
        let track_id = play_id
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.player.open_track(&track_id, play_id, auto_hangup);
        track_id
    }

    async fn tts(&mut self, t: TtsRequest) {
        if self.state != State::Answered {
            return self
                .error(
                    "tts",
                    "`tts` before `invite`: the call has no audio codec yet",
                    Some(400),
                )
                .await;
        }
        let default_provider = self.invite.as_ref().and_then(|o| o.tts_provider.clone());
        let synth = match self
            .ctx
            .engines
            .synthesizer(t.provider.as_deref().or(default_provider.as_deref()))
        {
            Ok(s) => s,
            Err(e) => return self.error("tts", e, Some(400)).await,
        };
        let speaker = t
            .speaker
            .clone()
            .or_else(|| self.invite.as_ref().and_then(|o| o.tts_speaker.clone()));
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
                let id = self.open_track(t.play_id.as_deref(), false).await;
                let (tx, rx) = mpsc::channel(PENDING_SENTENCES);
                let task = tokio::spawn(produce_tts(
                    rx,
                    synth,
                    speaker,
                    id.clone(),
                    self.self_tx.clone(),
                ));
                self.producers.insert(
                    id.clone(),
                    Producer {
                        tx: Some(tx),
                        task,
                        text: String::new(),
                        auto_hangup: false,
                        requested_at: Instant::now(),
                        first_audio: false,
                    },
                );
                id
            }
        };
        let p = self.producers.get_mut(&track_id).expect("producer exists");
        p.auto_hangup |= t.auto_hangup;
        p.text.push_str(&t.text);
        let complete = !t.streaming || t.end_of_stream;
        let mut overflow = false;
        if let Some(tx) = &p.tx {
            for s in take_sentences(&mut p.text, complete) {
                if tx.try_send(s).is_err() {
                    overflow = true;
                }
            }
        }
        if complete {
            p.tx = None;
        }
        if overflow {
            self.error("tts", format!("more than {PENDING_SENTENCES} sentences waiting for synthesis; text was dropped"), Some(429)).await;
        }
    }

    async fn play(&mut self, p: PlayRequest) {
        if self.state != State::Answered {
            return self
                .error(
                    "play",
                    "`play` before `invite`: the call has no audio codec yet",
                    Some(400),
                )
                .await;
        }
        let track_id = self.open_track(p.play_id.as_deref(), p.auto_hangup).await;
        let tx = self.self_tx.clone();
        let http = self.ctx.http.clone();
        let id = track_id.clone();
        let url = p.url.clone();
        let task = tokio::spawn(async move {
            let r = match crate::audio_file::fetch(&http, &url).await {
                Ok(bytes) => tokio::task::spawn_blocking(move || {
                    crate::audio_file::decode_to_16k(bytes, &url)
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string())),
                Err(e) => Err(e),
            };
            match r {
                Ok(samples) => {
                    let _ = tx
                        .send(ActorInput::TrackAudio {
                            track_id: id.clone(),
                            samples,
                            engine: "play".into(),
                        })
                        .await;
                    let _ = tx.send(ActorInput::TrackDone { track_id: id }).await;
                }
                Err(error) => {
                    let _ = tx
                        .send(ActorInput::TrackError {
                            track_id: id,
                            sender: "play",
                            error,
                            fatal: true,
                        })
                        .await;
                }
            }
        });
        self.producers.insert(
            track_id,
            Producer {
                tx: None,
                task,
                text: String::new(),
                auto_hangup: p.auto_hangup,
                requested_at: Instant::now(),
                first_audio: false,
            },
        );
    }

    async fn on_tick(&mut self) -> Flow {
        let mut events = std::mem::take(&mut self.player_events);
        let frame = self.player.next_frame(&mut events);
        let mut hangup = false;
        for e in events.drain(..) {
            match e {
                PlayerEvent::TrackStart { track_id, play_id } => {
                    self.emit(EventKind::TrackStart { track_id, play_id }).await
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
                    })
                    .await;
                    hangup |= auto_hangup;
                }
            }
        }
        self.player_events = events;
        if let (Some(frame), Some(rs), Some(enc)) =
            (frame, self.out_resampler.as_mut(), self.encoder.as_mut())
        {
            let frame = rs.process_frame(&frame);
            if !frame.samples.is_empty() {
                let payload = Bytes::from(enc.encode(&frame));
                let sent = match &self.audio_sink {
                    Some(sink) => sink.send(&payload),
                    None => self.out.try_send(Outbound::Audio(payload)).is_ok(),
                };
                if !sent {
                    self.audio_dropped += 1;
                }
            }
        }
        if hangup {
            return self.end("autohangup", "system").await;
        }
        Flow::Continue
    }

    /// Ends the call: finishes pending transcripts (up to the drain deadline), reports `hangup`,
    /// and writes the end to the store.
    async fn end(&mut self, reason: &str, initiator: &str) -> Flow {
        if self.state == State::Ended {
            return Flow::Stop;
        }
        self.state = State::Ended;
        for (_, p) in self.producers.drain() {
            p.task.abort();
        }
        self.player.interrupt();
        if let Some(p) = self.pipeline.as_mut() {
            let mut ev = Vec::new();
            p.finish(&mut ev);
            for e in ev {
                self.media_event(e).await;
            }
        }
        self.asr_queue.retain(|j| !j.partial);
        let deadline = tokio::time::Instant::now() + self.ctx.settings.drain;
        while self.asr_busy || !self.asr_queue.is_empty() {
            match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(ActorInput::Asr(o))) => self.asr_done(o).await,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(mut leg) = self.sip.take() {
            self.audio_sink = None;
            if let Some(q) = leg.hangup(reason).await {
                let data = serde_json::to_value(&q).unwrap_or_default();
                if let Err(e) = self.ctx.store.call_quality(&self.id, &data).await {
                    tracing::error!(call = %self.id, "{e}");
                }
                self.emit(EventKind::Metrics {
                    key: "rtp".into(),
                    duration: 0,
                    data,
                })
                .await;
            }
        }
        if self.audio_dropped > 0 {
            let data = serde_json::json!({ "frames": self.audio_dropped });
            self.emit(EventKind::Metrics {
                key: "audio_dropped".into(),
                duration: 0,
                data,
            })
            .await;
        }
        self.emit(EventKind::Hangup {
            reason: reason.into(),
            initiator: initiator.into(),
        })
        .await;
        if let Err(e) = self
            .ctx
            .store
            .call_ended(&self.id, now_ms(), reason, initiator)
            .await
        {
            tracing::error!(call = %self.id, "{e}");
        }
        tracing::info!(call = %self.id, reason, initiator, "call ended");
        Flow::Stop
    }
}

/// DTMF keys as 16 kHz audio: each key 100 ms of its row and column tones at −10 dBFS each,
/// then 100 ms of silence.
fn dtmf_tones(keys: &str) -> Vec<i16> {
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
        out.extend((0..1600).map(|i| {
            let t = i as f32 / 16000.0;
            (amp * ((2.0 * std::f32::consts::PI * ROWS[r] * t).sin()
                + (2.0 * std::f32::consts::PI * COLS[c] * t).sin())
                / 2.0) as i16
        }));
        out.extend(std::iter::repeat_n(0i16, 1600));
    }
    out
}

/// Synthesises sentences in order for one track and hands the audio to the actor.
async fn produce_tts(
    mut rx: mpsc::Receiver<String>,
    synth: Arc<dyn voxgate_media::speech::Synthesizer>,
    speaker: Option<String>,
    track_id: String,
    tx: mpsc::Sender<ActorInput>,
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
        match r {
            Ok(samples) => {
                if tx
                    .send(ActorInput::TrackAudio {
                        track_id: track_id.clone(),
                        samples,
                        engine: engine.clone(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err((fatal, error)) => {
                let _ = tx
                    .send(ActorInput::TrackError {
                        track_id: track_id.clone(),
                        sender: "tts",
                        error,
                        fatal,
                    })
                    .await;
                if fatal {
                    return;
                }
            }
        }
    }
    let _ = tx.send(ActorInput::TrackDone { track_id }).await;
}
