//! Socket glue for seed 002's `/call` and `/call/sip`: upgrade, start the call, pump messages
//! both ways, dump.
//!
//! On `/call` the WebSocket is both the call's **leg** (binary audio in the `invite` codec, see
//! [`WsLeg`]) and its **controller** (JSON commands in, events out). Events and bot audio leave
//! through one queue in the order the call produced them, so that no bot audio follows an
//! `interruption`:
//! - the queue holds [`OUT_QUEUE`] messages; bot audio may use [`MAX_QUEUED_AUDIO`] of them
//!   (200 ms) and a frame that finds them used is dropped and counted (`audio_dropped`);
//! - an event that finds the queue full means the client stopped reading: the call drops it as a
//!   subscriber and this handler ends the call (`hangup` reason `disconnected`).
//!
//! On `/call/sip` the WebSocket is only the controller; the audio travels over SIP/RTP.

use super::adapter::{event_json, list_option, parse_command, Endpoint};
use crate::api::{json_error, ApiShape, AppState, Caller};
use crate::auth::Principal;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use voxgate_call::{
    now_ms, CallCommand, CallEvent, CallSpec, Delivery, EventKind, Leg, LegCaps, LegCommand,
    LegInfo, LegPort, LegReply, LegReport, PendingLeg, StartError, Subscriber, Unsubscribed,
};
use voxgate_media::codec::Codec;
use voxgate_media::edge::{Egress, Ingress};
use voxgate_media::{AudioFrame, SampleRate};

/// Messages waiting for the socket (events and bot audio).
pub const OUT_QUEUE: usize = 128;
/// Bot audio frames that may wait for the socket (20 ms each).
pub const MAX_QUEUED_AUDIO: usize = 10;

/// Query of `GET /call`: `id` (session id; a UUID when absent), `dump` (`true`/`false`) and
/// `token` (an API key, for clients that cannot set headers; read by the auth middleware).
#[derive(Deserialize)]
pub struct CallQuery {
    id: Option<String>,
    dump: Option<String>,
}

/// What goes out on the socket, in order.
pub(crate) enum Outbound {
    Event(CallEvent),
    /// A handler-made event (bad input), already JSON.
    Json(serde_json::Value),
    Audio(Bytes),
}

type DumpFile = Arc<tokio::sync::Mutex<tokio::io::BufWriter<tokio::fs::File>>>;

async fn dump_line(dump: &Option<DumpFile>, direction: &str, data: serde_json::Value) {
    if let Some(d) = dump {
        let line =
            serde_json::json!({ "timestamp": now_ms(), "direction": direction, "data": data });
        let mut f = d.lock().await;
        let _ = f.write_all(format!("{line}\n").as_bytes()).await;
    }
}

/// `GET /call`: audio in WebSocket binary messages.
pub async fn call_ws(
    ws: WebSocketUpgrade,
    Query(q): Query<CallQuery>,
    State(st): State<AppState>,
    axum::Extension(p): Caller,
) -> Response {
    upgrade(ws, q, st, Endpoint::Call, p).await
}

/// `GET /call/sip` (seed 002 "SIP Call Handler"): the same commands and events, with the audio on
/// a SIP/RTP leg. `invite` dials; a client that has not dialled waits for inbound calls
/// (`incoming`, then `accept`); `?id=` of a webhook-announced call attaches to that call.
pub async fn call_sip(
    ws: WebSocketUpgrade,
    Query(q): Query<CallQuery>,
    State(st): State<AppState>,
    axum::Extension(p): Caller,
) -> Response {
    if st.sip.is_none() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sip_disabled",
            "SIP is disabled on this server (sip.enabled = false)",
        );
    }
    upgrade(ws, q, st, Endpoint::Sip, p).await
}

fn conflict(id: &str) -> Response {
    json_error(
        StatusCode::CONFLICT,
        "conflict",
        &format!("a call with id `{id}` is active or was used before; call ids are never reused"),
    )
}

async fn upgrade(
    ws: WebSocketUpgrade,
    q: CallQuery,
    st: AppState,
    ep: Endpoint,
    p: Principal,
) -> Response {
    let id =
        q.id.filter(|s| !s.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`id` must be 1-128 characters of A-Z a-z 0-9 - _ . :",
        );
    }
    let dump = match q.dump.as_deref() {
        None => st.config.call.dump_default,
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("`dump` must be true or false, not `{other}`"),
            )
        }
    };
    if st.core.get(&id).is_some() {
        return conflict(&id);
    }
    // A call id is never reused: its stored call and transcripts belong to the first call.
    match crate::store::Store::call(st.store.as_ref(), &id).await {
        Ok(Some(_)) => return conflict(&id),
        Ok(None) => {}
        Err(e) => {
            tracing::error!("{e}");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                "the store is unavailable",
            );
        }
    }
    let slot = match st.limits.stream(&p) {
        Ok(s) => s,
        Err(e) => return ApiShape::Native.too_many(&e.message, e.retry_after_secs),
    };
    if let Err(e) = st.limits.call_room(&st.core, &p) {
        return ApiShape::Native.too_many(&e.message, e.retry_after_secs);
    }
    let max = st.config.call.max_binary_bytes;
    // Messages up to 4 × `max_binary_bytes` are read and answered (audio over the limit gets a
    // 413 `error` event); larger ones close the socket (1009). Small socket buffers: a call
    // exchanges 20 ms frames (160-640 bytes), and tungstenite's 128 KiB defaults cost memory per
    // call and a 128 KiB clear per read.
    ws.max_message_size(max.saturating_mul(4).max(64 * 1024))
        .max_frame_size(max.saturating_mul(4).max(64 * 1024))
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            run(socket, id, dump, st, ep, p).await;
            drop(slot);
        })
        .into_response()
}

/// State the `/call` leg shares with the socket reader.
#[derive(Default)]
struct WsShared {
    /// The binary audio codec, set by `invite`/`accept`.
    codec: Mutex<Option<Codec>>,
    /// The call's port, for caller audio.
    port: OnceLock<LegPort>,
}

/// The `/call` WebSocket's binary audio as a leg of the call: bot frames are encoded in the
/// `invite` codec and queued for the socket; caller audio is decoded by the socket reader.
struct WsLeg {
    info: LegInfo,
    shared: Arc<WsShared>,
    egress: Option<Egress>,
    out: mpsc::Sender<Outbound>,
    queued_audio: Arc<AtomicUsize>,
}

impl PendingLeg for WsLeg {
    fn info(&self) -> &LegInfo {
        &self.info
    }
    fn into_leg(self: Box<Self>, port: LegPort) -> Box<dyn Leg> {
        let _ = self.shared.port.set(port);
        self
    }
    fn refuse(self: Box<Self>, _reason: &str) {}
}

#[async_trait::async_trait]
impl Leg for WsLeg {
    fn info(&self) -> &LegInfo {
        &self.info
    }

    fn send_audio(&mut self, frame: &AudioFrame) -> bool {
        let Some(e) = self.egress.as_mut() else {
            return false;
        };
        if self.queued_audio.load(Ordering::Relaxed) >= MAX_QUEUED_AUDIO {
            return false;
        }
        let Some(bytes) = e.encode(frame) else {
            return true;
        };
        if self
            .out
            .try_send(Outbound::Audio(Bytes::from(bytes)))
            .is_ok()
        {
            self.queued_audio.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    fn command(&mut self, cmd: LegCommand) -> LegReply {
        match cmd {
            LegCommand::Answer { codec } => {
                let codec = codec.unwrap_or(Codec::Pcm(SampleRate::HZ_16000));
                if codec == Codec::Opus {
                    return LegReply::Refused {
                        sender: "command",
                        code: 400,
                        message:
                            "codec `opus` needs packets: /call carries pcm, pcmu, pcma or g722"
                                .into(),
                    };
                }
                if let Ok(mut c) = self.shared.codec.lock() {
                    *c = Some(codec);
                }
                self.egress = Some(Egress::new(codec));
                LegReply::Answered {
                    sdp: None,
                    codec: codec.name().into(),
                }
            }
            // The client plays what it receives; nothing is buffered on our side of the socket
            // beyond the 200 ms queue.
            LegCommand::Clear | LegCommand::Mark(_) => LegReply::Done,
            LegCommand::SendDtmf { .. }
            | LegCommand::Transfer(_)
            | LegCommand::TransferReply { .. }
            | LegCommand::EarlyMedia { .. } => LegReply::Refused {
                sender: "command",
                code: 400,
                message: "not available on /call".into(),
            },
        }
    }

    async fn close(
        self: Box<Self>,
        _reason: &str,
        _headers: &[(String, String)],
    ) -> Option<LegReport> {
        None
    }
}

/// The socket as the call's controller: events go into the socket's queue without waiting.
struct WsSubscriber {
    out: mpsc::Sender<Outbound>,
    lagged: Arc<(AtomicBool, Notify)>,
}

impl Subscriber for WsSubscriber {
    fn deliver(&mut self, event: &CallEvent) -> Delivery {
        match self.out.try_send(Outbound::Event(event.clone())) {
            Ok(()) => Delivery::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
        }
    }
    fn closed(&mut self, why: Unsubscribed) {
        if why == Unsubscribed::Lagged {
            self.lagged.0.store(true, Ordering::Relaxed);
            self.lagged.1.notify_one();
        }
    }
}

fn error_json(id: &str, sender: &str, error: String, code: u16) -> Outbound {
    Outbound::Json(event_json(&CallEvent::now(EventKind::Error {
        track_id: id.to_string(),
        sender: sender.into(),
        error,
        code: Some(code),
    })))
}

async fn open_dump(st: &AppState, id: &str) -> Option<DumpFile> {
    let dir = st.config.data_dir.join("dumps");
    let path = dir.join(format!("{id}.jsonl"));
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        tracing::warn!(call = %id, "cannot create {}: {e}", dir.display());
        return None;
    }
    match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
    {
        Ok(f) => Some(Arc::new(tokio::sync::Mutex::new(
            tokio::io::BufWriter::new(f),
        ))),
        Err(e) => {
            tracing::warn!(call = %id, "cannot open dump {}: {e}", path.display());
            None
        }
    }
}

async fn run(socket: WebSocket, id: String, dump: bool, st: AppState, ep: Endpoint, p: Principal) {
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(OUT_QUEUE);
    let queued_audio = Arc::new(AtomicUsize::new(0));
    let lagged = Arc::new((AtomicBool::new(false), Notify::new()));
    let shared = Arc::new(WsShared::default());
    let sip = if ep == Endpoint::Sip {
        st.sip.clone()
    } else {
        None
    };
    let (kind, leg): (&'static str, Option<Box<dyn PendingLeg>>) = match (&sip, ep) {
        // A webhook-announced inbound call is attached by its id; otherwise the client waits.
        (Some(svc), _) => (
            "sip",
            svc.take_pending(&id, &p)
                .map(|l| Box::new(l) as Box<dyn PendingLeg>),
        ),
        (None, _) => (
            "websocket",
            Some(Box::new(WsLeg {
                info: LegInfo {
                    kind: "websocket",
                    caps: LegCaps::default(),
                    ..Default::default()
                },
                shared: shared.clone(),
                egress: None,
                out: out_tx.clone(),
                queued_audio: queued_audio.clone(),
            })),
        ),
    };
    let waiting = sip.is_some() && leg.is_none();
    let subscriber = WsSubscriber {
        out: out_tx.clone(),
        lagged: lagged.clone(),
    };
    let (mut sink, mut stream) = socket.split();
    let call = match st
        .core
        .start(CallSpec {
            id: Some(id.clone()),
            owner: Some(p.user.clone()),
            kind,
            leg,
            subscribers: vec![Box::new(subscriber)],
        })
        .await
    {
        Ok(h) => h,
        Err(e) => {
            // Lost a race with another connection using the same id, or the store failed.
            let code = if matches!(e, StartError::Conflict(_)) {
                409
            } else {
                500
            };
            if let Outbound::Json(v) = error_json(&id, "command", e.to_string(), code) {
                let _ = sink.send(Message::Text(v.to_string().into())).await;
            }
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    tracing::info!(call = %id, dump, call_type = kind, "call connected");
    if let (true, Some(svc)) = (waiting, &sip) {
        svc.add_waiting(&id, &p, call.clone());
    }
    let dump = if dump {
        open_dump(&st, &id).await
    } else {
        None
    };

    let writer_dump = dump.clone();
    let writer_queued = queued_audio.clone();
    let writer = tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            let msg = match o {
                Outbound::Event(e) => {
                    let v = event_json(&e);
                    dump_line(&writer_dump, "event", v.clone()).await;
                    Message::Text(v.to_string().into())
                }
                Outbound::Json(v) => {
                    dump_line(&writer_dump, "event", v.clone()).await;
                    Message::Text(v.to_string().into())
                }
                Outbound::Audio(b) => {
                    writer_queued.fetch_sub(1, Ordering::Relaxed);
                    Message::Binary(b)
                }
            };
            if sink.send(msg).await.is_err() {
                // The client is gone; keep draining so that nothing waits on us.
                while let Some(o) = out_rx.recv().await {
                    if let Outbound::Audio(_) = o {
                        writer_queued.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });

    let max = st.config.call.max_binary_bytes;
    let mut ingress: Option<Ingress> = None;
    let mut frames: Vec<AudioFrame> = Vec::new();
    let mut audio_before_invite = false;
    loop {
        // The call can end on its own (hangup, autoHangup, kill): stop reading then, so that the
        // writer can close the socket.
        let msg = tokio::select! {
            m = stream.next() => match m {
                Some(m) => m,
                None => break,
            },
            _ = call.ended() => break,
            _ = lagged.1.notified() => {
                tracing::warn!(call = %id, "the client does not read its events: ending the call");
                break;
            }
        };
        match msg {
            Ok(Message::Text(t)) => {
                let parsed: serde_json::Value = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|_| serde_json::Value::String(t.to_string()));
                dump_line(&dump, "command", parsed).await;
                match parse_command(t.as_str(), ep) {
                    Ok(cmd) => {
                        if let Some(o) = list_option(&cmd) {
                            st.core.set_option(&id, o);
                        }
                        if let (Some(svc), CallCommand::Dial(_)) = (&sip, &cmd) {
                            if let Err(e) = st.limits.originate(&p).await {
                                let e = error_json(&id, "command", e.message, 429);
                                if out_tx.send(e).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                            svc.remove_waiting(&id);
                        }
                        if call.command(cmd).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if out_tx
                            .send(error_json(&id, "command", e.0, 400))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            Ok(Message::Binary(_)) if sip.is_some() => {
                let e = error_json(
                    &id,
                    "media",
                    "binary audio is not used on /call/sip: the call's audio travels over RTP"
                        .into(),
                    400,
                );
                if out_tx.send(e).await.is_err() {
                    break;
                }
            }
            Ok(Message::Binary(b)) => {
                if b.len() > max {
                    let e = error_json(
                        &id,
                        "media",
                        format!(
                            "binary message of {} bytes rejected (limit {max}); send 20 ms frames",
                            b.len()
                        ),
                        413,
                    );
                    if out_tx.send(e).await.is_err() {
                        break;
                    }
                    continue;
                }
                let codec = shared.codec.lock().ok().and_then(|c| *c);
                let Some(codec) = codec else {
                    if !audio_before_invite {
                        audio_before_invite = true;
                        let e = error_json(&id, "media", "binary audio before `invite`: send invite with a codec first; audio is dropped until then".into(), 400);
                        if out_tx.send(e).await.is_err() {
                            break;
                        }
                    }
                    continue;
                };
                let ing = match ingress.as_mut() {
                    Some(i) if i.codec() == codec => i,
                    _ => ingress.insert(Ingress::new(codec, max + 1024)),
                };
                // Every whole frame of the message goes to the call, however long it is.
                ing.push_payload(&b, &mut frames);
                let Some(port) = shared.port.get() else {
                    frames.clear();
                    continue;
                };
                let mut gone = false;
                for f in frames.drain(..) {
                    if port.audio(f).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    break;
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    if let Some(svc) = &sip {
        svc.remove_waiting(&id);
    }
    call.end("disconnected", "user");
    call.ended().await;
    drop(out_tx);
    let _ = writer.await;
    if let Some(d) = dump {
        let _ = d.lock().await.flush().await;
    }
    tracing::info!(call = %id, "call disconnected");
}
