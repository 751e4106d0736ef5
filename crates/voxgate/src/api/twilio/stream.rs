//! `WS /stream/{bot_id}` (seed 004): Twilio Media Streams into a bot's call. Twilio carries the
//! caller's audio; the bot's webhook loop drives the call.
//!
//! The socket is a leg of the call ([`TwilioLeg`]): caller `media` (base64 µ-law 8 kHz, 20 ms) is
//! decoded to the core's 16 kHz frames (gaps in `media.timestamp` are filled with silence, up to
//! a second); bot audio goes out as `media` paced in real time by the call. The leg reports
//! playout: it sends a `mark` every 200 ms of audio, Twilio echoes each one when it has played
//! it, and the difference is the backlog that corrects an `interruption`'s position. A barge-in
//! sends `clear` (Twilio drops what it buffered, and our audio still queued is dropped too); a
//! bot hang-up sends `stop` and closes the socket.
//!
//! Bad input (malformed JSON, unknown events, `media` before `start`, a wrong `streamSid`, bad
//! base64) is logged and counted (the `stream` metrics at the end); the call goes on.

use super::wire::{self, Inbound};
use crate::api::{json_error, AppState};
use crate::bots::BotService;
use crate::store::BotStore;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use voxgate_call::{
    Leg, LegCaps, LegCommand, LegEvent, LegInfo, LegPort, LegReply, LegReport, PendingLeg,
};
use voxgate_media::codec::Codec;
use voxgate_media::edge::{Egress, Ingress};
use voxgate_media::AudioFrame;

/// Messages waiting for the socket.
const OUT_QUEUE: usize = 256;
/// Bot audio frames that may wait for the socket (20 ms each).
const MAX_QUEUED_AUDIO: usize = 10;
/// A playout mark every this many frames of bot audio (200 ms).
const POSITION_MARK_FRAMES: u64 = 10;
/// Marks of the leg's own (position tracking), never reported to controllers.
const POSITION_MARK: &str = "voxgate-pos-";
/// Longest gap in `media.timestamp` filled with silence.
const MAX_GAP_FRAMES: u64 = 50;
/// Time Twilio has to send `start` after connecting.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What goes out on the socket, in order.
enum Out {
    /// Control messages (`mark`, `clear`, `stop`).
    Text(String),
    /// Bot audio of a playout epoch; audio of an epoch before the last `clear` is dropped.
    Audio {
        epoch: u64,
        text: String,
    },
    Close,
}

/// Counters of one stream (the leg's `stream` report).
#[derive(Default)]
struct Counters {
    media_in: AtomicU64,
    media_out: AtomicU64,
    marks_out: AtomicU64,
    clears: AtomicU64,
    gaps_filled: AtomicU64,
    violations: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    fn violation(&self, kind: &'static str, detail: &str, call: &str) {
        let mut v = self.violations.lock().expect("counters lock");
        let n = v.entry(kind).or_default();
        *n += 1;
        // The first few of each kind are logged; the rest only counted.
        if *n <= 3 {
            tracing::warn!(call, kind, "Twilio stream: {detail}");
        }
    }
}

/// State shared by the leg (on the call's task) and the socket reader and writer.
struct Shared {
    stream_sid: String,
    call_sid: String,
    /// Bot audio sent, ms.
    sent_ms: AtomicU64,
    /// Bot audio Twilio reported played (position marks), ms.
    heard_ms: AtomicU64,
    /// Incremented by `clear`: queued audio of older epochs is dropped.
    epoch: AtomicU64,
    queued_audio: AtomicUsize,
    counters: Counters,
    port: OnceLock<LegPort>,
    /// Twilio ended the stream (`stop`, or the socket closed): nothing more is sent.
    remote_ended: std::sync::atomic::AtomicBool,
}

/// A Twilio Media Stream as a leg of the call.
pub struct TwilioLeg {
    info: LegInfo,
    shared: Arc<Shared>,
    out: mpsc::Sender<Out>,
    egress: Egress,
    frames_sent: u64,
    bots: Arc<BotService>,
}

impl PendingLeg for TwilioLeg {
    fn info(&self) -> &LegInfo {
        &self.info
    }
    fn into_leg(self: Box<Self>, port: LegPort) -> Box<dyn Leg> {
        let _ = self.shared.port.set(port);
        self
    }
    fn refuse(self: Box<Self>, _reason: &str) {
        let _ = self.out.try_send(Out::Close);
    }
}

impl TwilioLeg {
    fn send_text(&self, text: String) -> bool {
        self.out.try_send(Out::Text(text)).is_ok()
    }
}

#[async_trait::async_trait]
impl Leg for TwilioLeg {
    fn info(&self) -> &LegInfo {
        &self.info
    }

    fn send_audio(&mut self, frame: &AudioFrame) -> bool {
        let s = &self.shared;
        if s.queued_audio.load(Ordering::Relaxed) >= MAX_QUEUED_AUDIO {
            return false;
        }
        let Some(bytes) = self.egress.encode(frame) else {
            return true;
        };
        let payload = base64::engine::general_purpose::STANDARD.encode(bytes);
        let epoch = s.epoch.load(Ordering::Relaxed);
        let text = wire::media(&s.stream_sid, &payload);
        if self.out.try_send(Out::Audio { epoch, text }).is_err() {
            return false;
        }
        s.queued_audio.fetch_add(1, Ordering::Relaxed);
        s.counters.media_out.fetch_add(1, Ordering::Relaxed);
        let sent = s.sent_ms.fetch_add(20, Ordering::Relaxed) + 20;
        self.frames_sent += 1;
        if self.frames_sent.is_multiple_of(POSITION_MARK_FRAMES) {
            let name = format!("{POSITION_MARK}{sent}");
            if self.send_text(wire::mark(&s.stream_sid, &name)) {
                s.counters.marks_out.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    fn command(&mut self, cmd: LegCommand) -> LegReply {
        let s = self.shared.clone();
        match cmd {
            // The Twilio call is already answered when its stream starts.
            LegCommand::Answer { .. } => LegReply::Answered {
                sdp: None,
                codec: "pcmu".into(),
            },
            LegCommand::Clear => {
                s.epoch.fetch_add(1, Ordering::Relaxed);
                s.heard_ms
                    .store(s.sent_ms.load(Ordering::Relaxed), Ordering::Relaxed);
                s.counters.clears.fetch_add(1, Ordering::Relaxed);
                self.send_text(wire::clear(&s.stream_sid));
                LegReply::Done
            }
            LegCommand::Mark(name) => {
                if self.send_text(wire::mark(&s.stream_sid, &name)) {
                    s.counters.marks_out.fetch_add(1, Ordering::Relaxed);
                    LegReply::Done
                } else {
                    LegReply::Refused {
                        sender: "media",
                        code: 503,
                        message: "the stream's queue is full".into(),
                    }
                }
            }
            LegCommand::Transfer(target) => {
                // Closing the stream ends `<Connect>`: Twilio goes on with the TwiML after it,
                // our `<Redirect>` to `/voice/next`, which dials `target`.
                self.bots.set_transfer(&s.call_sid, &target);
                let _ = self.out.try_send(Out::Close);
                if let Some(port) = s.port.get().cloned() {
                    tokio::spawn(async move {
                        let _ = port.event(LegEvent::Transferred).await;
                    });
                }
                LegReply::Pending
            }
            LegCommand::SendDtmf { .. } => LegReply::Refused {
                sender: "dtmf",
                code: 400,
                message: "a Twilio stream cannot send DTMF events".into(),
            },
            LegCommand::TransferReply { .. } => LegReply::Refused {
                sender: "command",
                code: 400,
                message: "a Twilio stream gets no transfer requests".into(),
            },
            LegCommand::EarlyMedia { .. } => LegReply::Refused {
                sender: "command",
                code: 400,
                message: "a Twilio stream starts answered: no early media".into(),
            },
        }
    }

    fn playout_backlog_ms(&self) -> u64 {
        let s = &self.shared;
        s.sent_ms
            .load(Ordering::Relaxed)
            .saturating_sub(s.heard_ms.load(Ordering::Relaxed))
    }

    async fn close(
        self: Box<Self>,
        _reason: &str,
        _headers: &[(String, String)],
    ) -> Option<LegReport> {
        let s = &self.shared;
        if !s.remote_ended.load(Ordering::Relaxed) {
            // The bot hung up (seed 004: `stop`, then the socket closes).
            let _ = self.out.try_send(Out::Text(wire::stop(&s.stream_sid)));
        }
        let _ = self.out.try_send(Out::Close);
        let c = &s.counters;
        let violations = c.violations.lock().map(|v| v.clone()).unwrap_or_default();
        Some(LegReport {
            key: "stream".into(),
            data: json!({
                "streamSid": s.stream_sid,
                "callSid": s.call_sid,
                "mediaIn": c.media_in.load(Ordering::Relaxed),
                "mediaOut": c.media_out.load(Ordering::Relaxed),
                "marksOut": c.marks_out.load(Ordering::Relaxed),
                "clears": c.clears.load(Ordering::Relaxed),
                "gapsFilled": c.gaps_filled.load(Ordering::Relaxed),
                "violations": violations,
            }),
        })
    }
}

/// `GET /stream/{bot_id}`: 404 for an unknown bot, 429 (with `Retry-After`) when the bot has
/// taken `bots.calls_per_day` calls today; otherwise the Twilio Media Streams WebSocket.
pub async fn stream(
    ws: WebSocketUpgrade,
    Path(bot_id): Path<String>,
    State(st): State<AppState>,
) -> Response {
    let bots = st.bots.clone();
    let bot = match bots.store.bot(&bot_id).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no bot with id `{bot_id}`"),
            )
        }
        Err(e) => {
            tracing::error!("{e}");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                "the store is unavailable",
            );
        }
    };
    if !bots.admit(&bot.id).await {
        let mut r = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!(
                "bot `{}` has taken its {} calls for today",
                bot.id, bots.config.bots.calls_per_day
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&crate::bots::secs_to_tomorrow().to_string()) {
            r.headers_mut().insert("retry-after", v);
        }
        return r;
    }
    ws.max_message_size(256 * 1024)
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| run(socket, bot, bots))
        .into_response()
}

async fn run(socket: WebSocket, bot: crate::store::BotRecord, bots: Arc<BotService>) {
    let (mut sink, mut stream) = socket.split();
    // `connected`, then `start`: the stream's identity.
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let counters = Counters::default();
    let start = loop {
        let msg = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => return,
            Err(_) => {
                tracing::warn!(
                    bot = bot.id,
                    "Twilio stream: no `start` within {START_TIMEOUT:?}"
                );
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
        };
        let Message::Text(t) = msg else { continue };
        match wire::parse(t.as_str()) {
            Ok(Inbound::Start(s)) => break s,
            Ok(Inbound::Connected) => {}
            Ok(Inbound::Stop { .. }) => return,
            Ok(_) => counters.violation("before_start", "a message before `start`", &bot.id),
            Err(v) => counters.violation(v.kind(), &v.to_string(), &bot.id),
        }
    };
    if let Some(f) = &start.media_format {
        if f.encoding != "audio/x-mulaw" || f.sample_rate != 8000 || f.channels != 1 {
            counters.violation(
                "media_format",
                &format!("unexpected mediaFormat {f:?}: treating the audio as µ-law 8 kHz mono"),
                &start.call_sid,
            );
        }
    }
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let shared = Arc::new(Shared {
        stream_sid: start.stream_sid.clone(),
        call_sid: start.call_sid.clone(),
        sent_ms: AtomicU64::new(0),
        heard_ms: AtomicU64::new(0),
        epoch: AtomicU64::new(0),
        queued_audio: AtomicUsize::new(0),
        counters,
        port: OnceLock::new(),
        remote_ended: std::sync::atomic::AtomicBool::new(false),
    });
    let leg = TwilioLeg {
        info: LegInfo {
            kind: "twilio",
            caller: start
                .custom_parameters
                .get("From")
                .cloned()
                .unwrap_or_default(),
            callee: bot.number.clone(),
            offer: None,
            ringing: false,
            headers: Vec::new(),
            caps: LegCaps {
                rfc4733: false,
                transfer: true,
                playout_marks: true,
            },
        },
        shared: shared.clone(),
        out: out_tx.clone(),
        egress: Egress::new(Codec::Pcmu),
        frames_sent: 0,
        bots: bots.clone(),
    };
    let call_id = Some(start.call_sid.clone()).filter(|c| {
        !c.is_empty()
            && c.len() <= 128
            && c.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    });
    let call = match bots
        .start_call(bot.clone(), Box::new(leg), call_id, false)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                bot = bot.id,
                call_sid = start.call_sid,
                "cannot start the call: {e}"
            );
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let Some(port) = shared.port.get().cloned() else {
        return;
    };
    let writer_shared = shared.clone();
    let writer = tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            let msg = match o {
                Out::Text(t) => Message::Text(t.into()),
                Out::Audio { epoch, text } => {
                    writer_shared.queued_audio.fetch_sub(1, Ordering::Relaxed);
                    if epoch != writer_shared.epoch.load(Ordering::Relaxed) {
                        continue; // cleared before it went out
                    }
                    Message::Text(text.into())
                }
                Out::Close => break,
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        // Keep draining so that the leg never waits on a closed socket.
        while let Some(o) = out_rx.recv().await {
            if let Out::Audio { .. } = o {
                writer_shared.queued_audio.fetch_sub(1, Ordering::Relaxed);
            }
        }
    });

    let mut ingress = Ingress::new(Codec::Pcmu, 64 * 1024);
    let mut frames: Vec<AudioFrame> = Vec::new();
    let mut next_ts: Option<u64> = None;
    let silence = vec![0xffu8; 160];
    let call_id = call.id().to_string();
    let (end_reason, end_initiator) = loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = call.ended() => break ("", ""),
        };
        let t = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                shared.counters.violation(
                    "binary",
                    "a binary message (Media Streams are JSON text)",
                    &call_id,
                );
                continue;
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break ("disconnected", "caller"),
            Some(Ok(_)) => continue,
        };
        let parsed = match wire::parse(t.as_str()) {
            Ok(p) => p,
            Err(v) => {
                shared
                    .counters
                    .violation(v.kind(), &v.to_string(), &call_id);
                continue;
            }
        };
        let sid_ok = |sid: &Option<String>| sid.as_deref().is_none_or(|s| s == shared.stream_sid);
        match parsed {
            Inbound::Media { stream_sid, media } => {
                if !sid_ok(&stream_sid) {
                    shared.counters.violation(
                        "wrong_stream_sid",
                        "media for another streamSid",
                        &call_id,
                    );
                    continue;
                }
                if media.track.as_deref().is_some_and(|t| t != "inbound") {
                    continue;
                }
                let Ok(payload) = base64::engine::general_purpose::STANDARD.decode(&media.payload)
                else {
                    shared.counters.violation(
                        "bad_base64",
                        "media.payload is not base64",
                        &call_id,
                    );
                    continue;
                };
                shared.counters.media_in.fetch_add(1, Ordering::Relaxed);
                // Audio Twilio never received shows as a jump in presentation time: silence.
                if let Some(ts) = media
                    .timestamp
                    .as_deref()
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    if let Some(expected) = next_ts {
                        let missing = ts.saturating_sub(expected) / 20;
                        for _ in 0..missing.min(MAX_GAP_FRAMES) {
                            ingress.push_payload(&silence, &mut frames);
                        }
                        if missing > 0 {
                            shared
                                .counters
                                .gaps_filled
                                .fetch_add(missing, Ordering::Relaxed);
                        }
                    }
                    next_ts = Some(ts + payload.len() as u64 / 8);
                }
                ingress.push_payload(&payload, &mut frames);
                let mut gone = false;
                for f in frames.drain(..) {
                    if port.audio(f).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    break ("", "");
                }
            }
            Inbound::Dtmf { stream_sid, digit } => {
                if sid_ok(&stream_sid) {
                    let _ = port.event(LegEvent::Dtmf(digit)).await;
                }
            }
            Inbound::Mark { stream_sid, name } => {
                if !sid_ok(&stream_sid) {
                    continue;
                }
                match name.strip_prefix(POSITION_MARK).map(str::parse::<u64>) {
                    Some(Ok(at)) => {
                        shared.heard_ms.fetch_max(at, Ordering::Relaxed);
                    }
                    Some(Err(_)) => {}
                    None => {
                        let _ = port.event(LegEvent::MarkPlayed(name)).await;
                    }
                }
            }
            Inbound::Stop { .. } => break ("bye", "caller"),
            Inbound::Start(_) => {
                shared
                    .counters
                    .violation("second_start", "a second `start`", &call_id)
            }
            Inbound::Connected => {}
        }
    };
    if !end_reason.is_empty() {
        shared.remote_ended.store(true, Ordering::Relaxed);
        let _ = port
            .event(LegEvent::Ended {
                reason: end_reason.into(),
                initiator: end_initiator.into(),
            })
            .await;
    }
    call.ended().await;
    drop(out_tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn position_marks_parse() {
        let name = format!("{}{}", super::POSITION_MARK, 1200);
        assert_eq!(
            name.strip_prefix(super::POSITION_MARK)
                .map(str::parse::<u64>),
            Some(Ok(1200))
        );
    }
}
