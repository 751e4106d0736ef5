//! Seed 003 ("Outgoing Call Service", `seeds/003_4439a23f411bf3d2.txt`): `POST /pbx/call`,
//! `POST /pbx/hangup` and the Socket.IO call rooms (socketioxide, Engine.IO v4, path
//! `pbx.socketio_path`, websocket and polling).
//!
//! A session is a call of the call core whose audio is a SIP leg and whose controller is the
//! Socket.IO room named by the session id. Every socket of the owner joins the room
//! `user:<id>` at connect and gets `newSession` there; `joinRoom` puts a socket in the call's
//! room, which receives:
//! - `dialStatus {sessionId, status}`: `Dialing` (at `/pbx/call`), `Ringing`, `Connected`, and when
//!   the call fails before the answer `Busy` (486/600), `NoAnswer` (408/480/487, ring timeout) or
//!   `Failed` (anything else). A socket that joins late gets the current status at once.
//! - `audio {sessionId, audioData}`: the far end's audio as 320-byte Buffers, s16le 8 kHz mono,
//!   20 ms each, 50 per second.
//! - `dtmf {sessionId, digit}`, `checkPoint {sessionId, name}` (when all audio sent before it has
//!   been played to the far end), `hangup {sessionId}`.
//!
//! Client events: `joinRoom`, `audio` (ack `{success, error}`), `checkPoint`, `dtmf`,
//! `interruption`, `hangup` — each with `sessionId`, for a call of the socket's user that the
//! socket has joined.

use super::{ApiShape, AppState, Caller, DialRefusal};
use crate::auth::{Authenticator, Principal};
use crate::limits::Limits;
use crate::mp3_stream::Mp3Stream;
use async_trait::async_trait;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::SocketIo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use voxgate_call::subscriber::{AudioTrack, Subscription};
use voxgate_call::{
    AnswerOptions, CallCommand, CallCore, CallHandle, CallSpec, DialOptions, EventKind,
    MediaOptions, PendingLeg,
};
use voxgate_media::codec::Codec;
use voxgate_media::edge::{Egress, Ingress};
use voxgate_media::{AudioFrame, SampleRate};

/// Samples in a 20 ms frame at 16 kHz.
const FRAME_16K: usize = 320;
/// Largest `audio` message accepted, bytes.
const MAX_AUDIO_BYTES: usize = 256 * 1024;

/// The seed-003 envelope `{status, errors, data}` with an HTTP status.
pub fn envelope(status: StatusCode, errors: &str, data: Value) -> Response {
    (
        status,
        Json(json!({ "status": status.as_u16(), "errors": errors, "data": data })),
    )
        .into_response()
}

/// A seed-003 error: `{"status": N, "errors": "...", "data": null}`.
pub fn envelope_error(status: StatusCode, message: &str) -> Response {
    envelope(status, message, Value::Null)
}

/// A phone number as seed 003 dials it: optional `+`, then 3 to 20 digits; spaces, dashes,
/// dots and parentheses between digits are removed.
pub fn normalize_number(s: &str) -> Option<String> {
    let s = s.trim();
    let (plus, rest) = match s.strip_prefix('+') {
        Some(r) => ("+", r),
        None => ("", s),
    };
    let mut digits = String::new();
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    (3..=20)
        .contains(&digits.len())
        .then(|| format!("{plus}{digits}"))
}

/// One call room.
struct Session {
    id: String,
    owner: String,
    handle: CallHandle,
    /// The last `dialStatus`.
    status: Mutex<&'static str>,
    /// An inbound call waits for its first `joinRoom` to be answered.
    inbound_unanswered: Mutex<bool>,
}

/// Seed 003's sessions and Socket.IO server.
pub struct Pbx {
    layer: Mutex<Option<SocketIoLayer>>,
    inner: Arc<Inner>,
}

struct Inner {
    io: SocketIo,
    core: CallCore,
    auth: Authenticator,
    limits: Arc<Limits>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Inbound number → owner.
    numbers: HashMap<String, String>,
    ring_timeout: Duration,
}

/// What a socket keeps per session it streams audio into.
struct ClientAudio {
    format: &'static str,
    mp3: Option<Mp3Stream>,
    ingress: Option<Ingress>,
    /// 16 kHz samples short of a whole frame.
    rest: Vec<i16>,
}

type ClientAudios = Arc<Mutex<HashMap<String, ClientAudio>>>;

fn media() -> MediaOptions {
    // The application drives the call: no ASR, no barge-in (it sends `interruption`).
    MediaOptions {
        asr: false,
        barge_in: false,
        vad: false,
        ..Default::default()
    }
}

impl Pbx {
    pub fn new(
        core: CallCore,
        auth: Authenticator,
        limits: Arc<Limits>,
        cfg: &crate::config::Config,
    ) -> Arc<Self> {
        let (layer, io) = SocketIo::builder()
            .req_path(cfg.pbx.socketio_path.clone())
            .max_payload(1024 * 1024)
            .max_buffer_size(1024)
            .build_layer();
        let inner = Arc::new(Inner {
            io: io.clone(),
            core,
            auth,
            limits,
            sessions: Mutex::new(HashMap::new()),
            numbers: cfg
                .pbx
                .numbers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ring_timeout: Duration::from_secs(cfg.sip.ring_timeout_secs),
        });
        let st = inner.clone();
        io.ns(
            "/",
            (async move |s: SocketRef| on_connect(s)).with(
                move |s: SocketRef, TryData(auth): TryData<Value>| {
                    let st = st.clone();
                    async move { authenticate_socket(st, s, auth.ok()).await }
                },
            ),
        );
        // The handlers reach `inner` through the socket's extensions (set at connect).
        Arc::new(Pbx {
            layer: Mutex::new(Some(layer)),
            inner,
        })
    }

    /// The Socket.IO tower layer (taken once, by the router).
    pub fn layer(&self) -> SocketIoLayer {
        self.layer
            .lock()
            .expect("layer lock")
            .take()
            .expect("the Socket.IO layer is taken once")
    }

    /// Takes inbound SIP calls to `[pbx] numbers`.
    pub fn router(self: &Arc<Self>) -> Arc<dyn crate::sip::InboundRouter> {
        Arc::new(PbxRouter(self.inner.clone()))
    }

    /// Live sessions (for tests and `/health`).
    pub fn sessions(&self) -> usize {
        self.inner.sessions.lock().expect("sessions").len()
    }
}

#[derive(Debug)]
struct SocketAuthError(String);

impl std::fmt::Display for SocketAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

async fn authenticate_socket(
    st: Arc<Inner>,
    s: SocketRef,
    auth: Option<Value>,
) -> Result<(), SocketAuthError> {
    let token = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).to_string());
    match st.auth.authenticate(token.as_deref()).await {
        Ok(p) => {
            s.extensions.insert(p);
            s.extensions.insert(st);
            // Everything the socket needs is set up here, before socketioxide sends the
            // CONNECT answer: it runs the connect handler only after that, so an event the
            // client emits at once could otherwise arrive before its handler exists.
            setup_socket(&s);
            Ok(())
        }
        Err(e) => {
            tracing::info!(socket = %s.id, "Socket.IO connection refused: {e}");
            Err(SocketAuthError(e.to_string()))
        }
    }
}

fn on_connect(s: SocketRef) {
    if let Some(p) = s.extensions.get::<Principal>() {
        tracing::debug!(socket = %s.id, user = p.user, "Socket.IO connected");
    }
}

/// Joins the user's rooms and registers the event handlers (from the auth middleware).
fn setup_socket(s: &SocketRef) {
    let Some(p) = s.extensions.get::<Principal>() else {
        return;
    };
    s.join(format!("user:{}", p.user));
    if p.admin {
        s.join("admins");
    }
    s.extensions.insert::<ClientAudios>(Arc::default());
    s.on("joinRoom", on_join);
    s.on("audio", on_audio);
    s.on("checkPoint", on_checkpoint);
    s.on("dtmf", on_dtmf);
    s.on("interruption", on_interruption);
    s.on("hangup", on_hangup);
}

fn state(s: &SocketRef) -> Option<(Arc<Inner>, Principal)> {
    Some((
        s.extensions.get::<Arc<Inner>>()?,
        s.extensions.get::<Principal>()?,
    ))
}

fn session_id(d: &Result<Value, impl std::fmt::Display>) -> Result<String, String> {
    match d {
        Ok(v) => v
            .get("sessionId")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| "`sessionId` is required".to_string()),
        Err(e) => Err(format!("the payload must be an object: {e}")),
    }
}

impl Inner {
    /// The session if `p` may see it (another user's is "not found").
    fn session(&self, id: &str, p: &Principal) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .expect("sessions")
            .get(id)
            .filter(|s| p.owns(Some(&s.owner)))
            .cloned()
    }

    /// The session of a socket's event: owned and joined.
    fn joined(&self, s: &SocketRef, p: &Principal, id: &str) -> Result<Arc<Session>, String> {
        let sess = self
            .session(id, p)
            .ok_or_else(|| format!("no session `{id}`"))?;
        if !s.rooms().iter().any(|r| r == id) {
            return Err(format!("join the room of session `{id}` first (joinRoom)"));
        }
        Ok(sess)
    }

    async fn emit_to_user(&self, owner: &str, event: &str, data: Value) {
        let _ = self
            .io
            .to(format!("user:{owner}"))
            .to("admins")
            .emit(event, &data)
            .await;
    }

    /// Registers a session, runs its room and announces it with `newSession`.
    async fn open(
        self: &Arc<Self>,
        handle: CallHandle,
        owner: &str,
        kind: &'static str,
        sub: Subscription,
    ) {
        let sess = Arc::new(Session {
            id: handle.id().to_string(),
            owner: owner.to_string(),
            handle,
            status: Mutex::new(if kind == "inbound" {
                "Ringing"
            } else {
                "Dialing"
            }),
            inbound_unanswered: Mutex::new(kind == "inbound"),
        });
        self.sessions
            .lock()
            .expect("sessions")
            .insert(sess.id.clone(), sess.clone());
        let st = self.clone();
        tokio::spawn(run_room(st, sess.clone(), sub));
        self.emit_to_user(
            owner,
            "newSession",
            json!({ "sessionId": sess.id, "type": kind }),
        )
        .await;
        if kind == "inbound" {
            // Nobody joined in time: the call is refused (480).
            let ring = self.ring_timeout;
            let sess = sess.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ring).await;
                if *sess.inbound_unanswered.lock().expect("inbound") {
                    let _ = sess
                        .handle
                        .command(CallCommand::Hangup {
                            reason: Some("no_answer".into()),
                            initiator: Some("system".into()),
                            headers: Vec::new(),
                        })
                        .await;
                }
            });
        }
    }
}

/// Forwards a session's events and the far end's audio to its room until the call ends.
async fn run_room(st: Arc<Inner>, sess: Arc<Session>, mut sub: Subscription) {
    let room = sess.id.clone();
    let mut egress = Egress::new(Codec::Pcm(SampleRate::HZ_8000));
    let mut audio = sub.take_audio();
    let mut answered = false;
    loop {
        tokio::select! {
            ev = sub.recv() => {
                let Some(ev) = ev else { break };
                let (event, data) = match ev.kind {
                    EventKind::Ringing { .. } => {
                        *sess.status.lock().expect("status") = "Ringing";
                        ("dialStatus", json!({ "sessionId": room, "status": "Ringing" }))
                    }
                    EventKind::Answer { .. } => {
                        answered = true;
                        *sess.status.lock().expect("status") = "Connected";
                        ("dialStatus", json!({ "sessionId": room, "status": "Connected" }))
                    }
                    EventKind::Dtmf { digit, .. } => {
                        ("dtmf", json!({ "sessionId": room, "digit": digit.to_string() }))
                    }
                    EventKind::Mark { name } => {
                        ("checkPoint", json!({ "sessionId": room, "name": name }))
                    }
                    EventKind::Hangup { reason, .. } => {
                        if !answered {
                            let status = match reason.as_str() {
                                "busy" => "Busy",
                                "no_answer" => "NoAnswer",
                                _ => "Failed",
                            };
                            *sess.status.lock().expect("status") = status;
                            let _ = st
                                .io
                                .to(room.clone())
                                .emit("dialStatus", &json!({ "sessionId": room, "status": status, "reason": reason }))
                                .await;
                        }
                        ("hangup", json!({ "sessionId": room, "reason": reason }))
                    }
                    EventKind::Error { sender, error, .. } => {
                        tracing::info!(call = %room, sender, "{error}");
                        continue;
                    }
                    _ => continue,
                };
                let _ = st.io.to(room.clone()).emit(event, &data).await;
            }
            a = async { audio.as_mut()?.recv().await }, if audio.is_some() => {
                match a {
                    Some((AudioTrack::Caller, frame)) => {
                        if let Some(b) = egress.encode(&frame) {
                            let msg = AudioOut { session_id: &room, audio_data: Bytes::from(b) };
                            let _ = st.io.to(room.clone()).emit("audio", &msg).await;
                        }
                    }
                    Some(_) => {}
                    None => audio = None,
                }
            }
        }
    }
    st.sessions.lock().expect("sessions").remove(&room);
    tracing::debug!(call = %room, "seed-003 room closed");
}

#[derive(serde::Serialize)]
struct AudioOut<'a> {
    #[serde(rename = "sessionId")]
    session_id: &'a str,
    #[serde(rename = "audioData")]
    audio_data: Bytes,
}

async fn on_join(s: SocketRef, TryData(d): TryData<Value>) {
    let Some((st, p)) = state(&s) else { return };
    let id = match session_id(&d) {
        Ok(id) => id,
        Err(e) => {
            let _ = s.emit(
                "roomJoined",
                &json!({ "sessionId": null, "status": "failed", "error": e }),
            );
            return;
        }
    };
    let Some(sess) = st.session(&id, &p) else {
        let _ = s.emit(
            "roomJoined",
            &json!({ "sessionId": id, "status": "failed", "error": format!("no session `{id}`") }),
        );
        return;
    };
    s.join(id.clone());
    let _ = s.emit(
        "roomJoined",
        &json!({ "sessionId": id, "status": "success" }),
    );
    let status = *sess.status.lock().expect("status");
    let _ = s.emit("dialStatus", &json!({ "sessionId": id, "status": status }));
    let answer = std::mem::take(&mut *sess.inbound_unanswered.lock().expect("inbound"));
    if answer {
        let _ = sess
            .handle
            .command(CallCommand::Answer(AnswerOptions {
                media: media(),
                ..Default::default()
            }))
            .await;
    }
}

#[derive(serde::Deserialize)]
struct AudioIn {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
    /// Not an `Option`: socketioxide's parser substitutes binary attachments only where the
    /// field is deserialized as bytes directly. Absent: empty.
    #[serde(rename = "audioData", default)]
    audio_data: Bytes,
    #[serde(rename = "audioFormat")]
    audio_format: Option<String>,
}

async fn on_audio(s: SocketRef, TryData(d): TryData<AudioIn>, ack: AckSender) {
    let r = audio(&s, d.map_err(|e| e.to_string())).await;
    let body = match r {
        Ok(()) => json!({ "success": true, "error": null }),
        Err(e) => json!({ "success": false, "error": e }),
    };
    let _ = ack.send(&body);
}

async fn audio(s: &SocketRef, d: Result<AudioIn, String>) -> Result<(), String> {
    let (st, p) = state(s).ok_or("not authenticated")?;
    let d = d.map_err(|e| format!("bad payload: {e}"))?;
    let id = d
        .session_id
        .filter(|i| !i.is_empty())
        .ok_or("`sessionId` is required")?;
    let sess = st.joined(s, &p, &id)?;
    let data = d.audio_data;
    if data.is_empty() {
        return Err("`audioData` is required (a binary Buffer)".into());
    }
    if data.len() > MAX_AUDIO_BYTES {
        return Err(format!(
            "`audioData` of {} bytes is over the {MAX_AUDIO_BYTES}-byte limit",
            data.len()
        ));
    }
    let format: &'static str = match d.audio_format.as_deref().unwrap_or("mp3") {
        "mp3" => "mp3",
        "ulaw" => "ulaw",
        "alaw" => "alaw",
        "pcm16" => "pcm16",
        other => {
            return Err(format!(
                "unknown audioFormat `{other}`: use mp3, ulaw, alaw or pcm16"
            ))
        }
    };
    if *sess.status.lock().expect("status") != "Connected" {
        return Err("the call is not connected yet (wait for dialStatus Connected)".into());
    }
    let audios = s.extensions.get::<ClientAudios>().ok_or("not connected")?;
    let (samples, skipped) = {
        let mut all = audios.lock().expect("client audio");
        let ca = all.entry(id.clone()).or_insert_with(|| ClientAudio {
            format,
            mp3: None,
            ingress: None,
            rest: Vec::new(),
        });
        if ca.format != format {
            *ca = ClientAudio {
                format,
                mp3: None,
                ingress: None,
                rest: std::mem::take(&mut ca.rest),
            };
        }
        let mut skipped = 0;
        let mut decoded: Vec<i16> = Vec::new();
        if format == "mp3" {
            let m = ca.mp3.get_or_insert_with(Mp3Stream::new);
            let r = m.push(&data, &mut decoded)?;
            skipped = r.skipped;
        } else {
            let codec = match format {
                "ulaw" => Codec::Pcmu,
                "alaw" => Codec::Pcma,
                _ => Codec::Pcm(SampleRate::HZ_8000),
            };
            let ing = ca
                .ingress
                .get_or_insert_with(|| Ingress::new(codec, MAX_AUDIO_BYTES + 1024));
            let mut frames: Vec<AudioFrame> = Vec::new();
            ing.push_payload(&data, &mut frames);
            for f in frames {
                decoded.extend_from_slice(&f.samples);
            }
        }
        ca.rest.extend_from_slice(&decoded);
        let whole = ca.rest.len() / FRAME_16K * FRAME_16K;
        let samples: Vec<i16> = ca.rest.drain(..whole).collect();
        (samples, skipped)
    };
    if !samples.is_empty() {
        sess.handle
            .command(CallCommand::Audio(samples))
            .await
            .map_err(|_| "the call has ended".to_string())?;
    }
    if skipped > 0 {
        return Err(format!(
            "{skipped} bytes were not MP3 (garbage or a truncated frame) and were skipped"
        ));
    }
    Ok(())
}

/// The session an event names, when this socket's user owns it and the socket joined its room.
fn joined_session(
    s: &SocketRef,
    d: &Result<Value, impl std::fmt::Display>,
) -> Option<(Arc<Session>, String)> {
    let (st, p) = state(s)?;
    let id = session_id(d).ok()?;
    let sess = st.joined(s, &p, &id).ok()?;
    Some((sess, id))
}

/// A field as text (a number is written out: `digit: 1` is `"1"`); empty when absent.
fn text_field(d: &Result<Value, impl std::fmt::Display>, field: &str) -> String {
    d.as_ref()
        .ok()
        .and_then(|v| v.get(field))
        .map(|n| match n {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

async fn on_checkpoint(s: SocketRef, TryData(d): TryData<Value>) {
    let Some((sess, id)) = joined_session(&s, &d) else {
        return;
    };
    let name = text_field(&d, "name");
    // What this socket sent short of a frame is played (padded) before the mark.
    let rest = s
        .extensions
        .get::<ClientAudios>()
        .and_then(|a| {
            a.lock()
                .expect("client audio")
                .get_mut(&id)
                .map(|c| std::mem::take(&mut c.rest))
        })
        .unwrap_or_default();
    if !rest.is_empty() {
        let _ = sess.handle.command(CallCommand::Audio(rest)).await;
    }
    let _ = sess.handle.command(CallCommand::Mark(name)).await;
}

async fn on_dtmf(s: SocketRef, TryData(d): TryData<Value>) {
    let Some((sess, _)) = joined_session(&s, &d) else {
        return;
    };
    let digit = text_field(&d, "digit");
    if digit.is_empty() {
        return;
    }
    // `duration` in ms (seed 003), 40-2000; 100 when absent.
    let duration_ms = d
        .as_ref()
        .ok()
        .and_then(|v| v.get("duration"))
        .and_then(Value::as_u64)
        .map_or(voxgate_call::DTMF_MS, |ms| ms.clamp(40, 2000) as u32);
    let _ = sess
        .handle
        .command(CallCommand::SendDtmf {
            keys: digit.to_ascii_uppercase(),
            duration_ms,
        })
        .await;
}

async fn on_interruption(s: SocketRef, TryData(d): TryData<Value>) {
    let Some((sess, id)) = joined_session(&s, &d) else {
        return;
    };
    if let Some(a) = s.extensions.get::<ClientAudios>() {
        if let Some(c) = a.lock().expect("client audio").get_mut(&id) {
            c.rest.clear();
        }
    }
    let _ = sess.handle.command(CallCommand::Interrupt).await;
}

async fn on_hangup(s: SocketRef, TryData(d): TryData<Value>) {
    let Some((st, p)) = state(&s) else { return };
    let Ok(id) = session_id(&d) else { return };
    // Hanging up needs ownership, not a join.
    let Some(sess) = st.session(&id, &p) else {
        return;
    };
    let _ = sess
        .handle
        .command(CallCommand::Hangup {
            reason: Some("hangup".into()),
            initiator: Some("user".into()),
            headers: Vec::new(),
        })
        .await;
}

/// Inbound SIP calls to `[pbx] numbers`.
struct PbxRouter(Arc<Inner>);

#[async_trait]
impl crate::sip::InboundRouter for PbxRouter {
    async fn owns(&self, callee: &str) -> bool {
        self.0.numbers.contains_key(callee)
    }

    async fn admit(&self, callee: &str) -> Result<(), u64> {
        let Some(owner) = self.0.numbers.get(callee) else {
            return Ok(());
        };
        let who = Principal {
            user: owner.clone(),
            admin: false,
        };
        self.0
            .limits
            .call_room(&self.0.core, &who)
            .map_err(|e| e.retry_after_secs)
    }

    async fn take(&self, callee: &str, leg: Box<dyn PendingLeg>) {
        let Some(owner) = self.0.numbers.get(callee).cloned() else {
            leg.refuse("failed");
            return;
        };
        let who = Principal {
            user: owner.clone(),
            admin: false,
        };
        if let Err(e) = self.0.limits.call_room(&self.0.core, &who) {
            tracing::info!(callee, "inbound call refused: {e}");
            leg.refuse("busy");
            return;
        }
        let (sub, events) = voxgate_call::subscriber::channel(4096, 64);
        match self
            .0
            .core
            .start(CallSpec {
                owner: Some(owner.clone()),
                leg: Some(leg),
                subscribers: vec![sub],
                ..Default::default()
            })
            .await
        {
            Ok(h) => self.0.open(h, &owner, "inbound", events).await,
            Err(e) => tracing::warn!(callee, "inbound call not started: {e}"),
        }
    }
}

/// `POST /pbx/call {phoneNumber}` → `{status: 200, errors: "", data: {phoneNumber, sessionId}}`.
/// 400 `Invalid phone number format`, 429 (with `Retry-After`) over a limit, 500 when the call
/// cannot be placed (no SIP, no trunk). The call's progress arrives as `dialStatus`.
#[utoipa::path(post, path = "/pbx/call", operation_id = "pbx_call", tag = "pbx (seed 003)",
    request_body = super::openapi::PbxCallRequest,
    responses(
        (status = 200, description = "Dialling; progress arrives as Socket.IO dialStatus", body = super::openapi::PbxCallResponse),
        (status = 400, description = "`Invalid phone number format`, or a bad body", body = super::openapi::PbxError),
        (status = 401, description = "`Authentication token is required`, or a bad token", body = super::openapi::PbxError),
        (status = 429, description = "Over a limit (Retry-After)", body = super::openapi::PbxError),
        (status = 500, description = "`Failed to initiate call` (no SIP, no trunk)", body = super::openapi::PbxError),
    ))]
pub async fn call(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return envelope_error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be JSON: {}", e.body_text()),
            )
        }
    };
    let Some(raw) = body.get("phoneNumber").and_then(Value::as_str) else {
        return envelope_error(StatusCode::BAD_REQUEST, "phoneNumber is required");
    };
    let Some(number) = normalize_number(raw) else {
        return envelope_error(StatusCode::BAD_REQUEST, "Invalid phone number format");
    };
    match super::admit_dial(&st, &p).await {
        Ok(()) => {}
        Err(DialRefusal::NoRoute(why)) => {
            return envelope_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Failed to initiate call: {why}"),
            )
        }
        Err(DialRefusal::Limited(e)) => {
            return ApiShape::Pbx.too_many(&e.message, e.retry_after_secs)
        }
    }
    let (sub, events) = voxgate_call::subscriber::channel(4096, 64);
    let h = match st
        .core
        .originate(
            None,
            Some(p.user.clone()),
            DialOptions {
                callee: Some(number.clone()),
                media: media(),
                ..Default::default()
            },
            vec![sub],
        )
        .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("/pbx/call: {e}");
            return envelope_error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to initiate call");
        }
    };
    let id = h.id().to_string();
    tracing::info!(call = %id, user = p.user, number, "seed-003 call");
    st.pbx.inner.open(h, &p.user, "outbound", events).await;
    envelope(
        StatusCode::OK,
        "",
        json!({ "phoneNumber": raw, "sessionId": id }),
    )
}

/// `POST /pbx/hangup {sessionId}` → `{status: 200, errors: "", data: {sessionId}}`; 404 for an
/// unknown (or another user's) session.
#[utoipa::path(post, path = "/pbx/hangup", operation_id = "pbx_hangup", tag = "pbx (seed 003)",
    request_body = super::openapi::PbxHangupRequest,
    responses(
        (status = 200, description = "The call ends (BYE); Socket.IO hangup follows", body = super::openapi::PbxHangupResponse),
        (status = 400, description = "No sessionId", body = super::openapi::PbxError),
        (status = 401, description = "No or a bad token", body = super::openapi::PbxError),
        (status = 404, description = "`Session not found`", body = super::openapi::PbxError),
    ))]
pub async fn hangup(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let id = match body {
        Ok(Json(b)) => b
            .get("sessionId")
            .and_then(Value::as_str)
            .map(str::to_string),
        Err(_) => None,
    };
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        return envelope_error(StatusCode::BAD_REQUEST, "sessionId is required");
    };
    let Some(sess) = st.pbx.inner.session(&id, &p) else {
        return envelope_error(StatusCode::NOT_FOUND, "Session not found");
    };
    if sess
        .handle
        .command(CallCommand::Hangup {
            reason: Some("hangup".into()),
            initiator: Some("user".into()),
            headers: Vec::new(),
        })
        .await
        .is_err()
    {
        return envelope_error(StatusCode::NOT_FOUND, "Session not found");
    }
    envelope(StatusCode::OK, "", json!({ "sessionId": id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(normalize_number("089608675796").unwrap(), "089608675796");
        assert_eq!(
            normalize_number("+1 (202) 555-0100").unwrap(),
            "+12025550100"
        );
        for bad in [
            "",
            "12",
            "abc",
            "+",
            "12345678901234567890123",
            "1; DROP",
            "++1234",
        ] {
            assert!(normalize_number(bad).is_none(), "{bad}");
        }
    }
}
