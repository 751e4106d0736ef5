//! Seed 001 (`001_7f4873ec537b8ae8.txt`): `POST /outbound-call`, `POST /end-call`,
//! `GET /call-status` and the `/frontend-stream` WebSocket. Errors are the seed's shapes: 400
//! `{"error"}`, 500 `{"success": false, "error"}`; 401/403/404/429 use `{"success": false,
//! "error"}` too.
//!
//! `user_id` names the user (tenant) of the call. With authentication on it must be the key's
//! user (an admin key may act for any user); without it, it still separates users: another
//! user's `callSid` answers 404.

use super::{ApiShape, AppState, Caller, DialRefusal};
use crate::agent::AgentCall;
use crate::auth::Principal;
use crate::store::{AgentCallRecord, AgentStore};
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use voxgate_call::subscriber::AudioTrack;
use voxgate_call::{CallCommand, DialOptions, EventKind, MediaOptions};
use voxgate_media::codec::Codec;
use voxgate_media::edge::Egress;
use voxgate_media::AudioFrame;

pub fn error(status: StatusCode, message: &str) -> Response {
    let body = if status == StatusCode::BAD_REQUEST {
        json!({ "error": message })
    } else {
        json!({ "success": false, "error": message })
    };
    (status, Json(body)).into_response()
}

/// The principal a request acts as for `user_id`: the key's own user, or (admin keys, and a
/// server without authentication) the named user.
///
/// # Errors
/// 403 when a user key names another user.
#[allow(clippy::result_large_err)]
fn acting_as(p: &Principal, user_id: &str) -> Result<Principal, Response> {
    if p.admin {
        return Ok(Principal {
            user: user_id.to_string(),
            admin: false,
        });
    }
    if p.user != user_id {
        return Err(error(
            StatusCode::FORBIDDEN,
            "user_id does not match the API key's user",
        ));
    }
    Ok(p.clone())
}

fn text(body: &Value, field: &str) -> Option<String> {
    body.get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Longest `prompt`, characters.
pub const MAX_PROMPT_CHARS: usize = 8000;
/// Longest `first_message`, characters.
pub const MAX_FIRST_MESSAGE_CHARS: usize = 1000;

/// `POST /outbound-call {user_id, number, prompt, first_message}` → `{success: true, message:
/// "Call initiated", callSid}`: dials `number` through the first SIP trunk and lets the agent
/// hold the conversation ([`crate::agent`]). `callSid` is Twilio-style, `CA` + 32 hex digits.
#[utoipa::path(post, path = "/outbound-call", operation_id = "outbound_call", tag = "agent (seed 001)",
    request_body = super::openapi::OutboundCallRequest,
    responses(
        (status = 200, description = "Dialling; the agent speaks first_message when answered", body = super::openapi::OutboundCallResponse),
        (status = 400, description = "`User ID and phone number are required`, a bad number, no prompt", body = super::openapi::Seed001Error),
        (status = 401, description = "No or a bad key (authentication on)", body = super::openapi::Seed001Error),
        (status = 403, description = "user_id is not the key's user", body = super::openapi::Seed001Error),
        (status = 429, description = "Over 5 calls a minute (Retry-After), or over the concurrent calls quota", body = super::openapi::Seed001Error),
        (status = 500, description = "`Failed to initiate call` (no SIP, no trunk, store failure)", body = super::openapi::Seed001Error),
    ))]
pub async fn outbound_call(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be JSON: {}", e.body_text()),
            )
        }
    };
    let (Some(user_id), Some(raw)) = (text(&body, "user_id"), text(&body, "number")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "User ID and phone number are required",
        );
    };
    if user_id.len() > 128 {
        return error(
            StatusCode::BAD_REQUEST,
            "user_id is longer than 128 characters",
        );
    }
    let Some(number) = super::pbx::normalize_number(&raw) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid phone number format: use digits with an optional leading +, e.g. +12025550100",
        );
    };
    let Some(prompt) = text(&body, "prompt") else {
        return error(
            StatusCode::BAD_REQUEST,
            "prompt is required: the agent's instructions (system prompt)",
        );
    };
    if body
        .get("first_message")
        .is_some_and(|v| !v.is_null() && !v.is_string())
    {
        return error(StatusCode::BAD_REQUEST, "first_message must be a string");
    }
    let first_message = text(&body, "first_message").unwrap_or_default();
    if prompt.chars().count() > MAX_PROMPT_CHARS
        || first_message.chars().count() > MAX_FIRST_MESSAGE_CHARS
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("prompt is limited to {MAX_PROMPT_CHARS} characters and first_message to {MAX_FIRST_MESSAGE_CHARS}"),
        );
    }
    let me = match acting_as(&p, &user_id) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match super::admit_dial(&st, &me).await {
        Ok(()) => {}
        Err(DialRefusal::NoRoute(why)) => {
            // The seed's message; the cause goes to the log.
            tracing::error!("/outbound-call: {why}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to initiate call");
        }
        Err(DialRefusal::Limited(e)) => {
            return ApiShape::Seed001.too_many(&e.message, e.retry_after_secs)
        }
    }
    let call_sid = format!("CA{}", uuid::Uuid::new_v4().simple());
    let (sub, events) = voxgate_call::subscriber::channel(4096, 0);
    let h = match st
        .core
        .originate(
            Some(call_sid.clone()),
            Some(user_id.clone()),
            DialOptions {
                callee: Some(number.clone()),
                media: MediaOptions {
                    tts_provider: st.config.agent.tts_provider.clone(),
                    tts_speaker: st.config.agent.tts_speaker.clone(),
                    barge_in_ms: Some(st.config.agent.barge_in_ms),
                    // The agent answers finals: partial transcripts would only take the model
                    // from other calls' finals.
                    partials: false,
                    adaptive_endpointing: true,
                    min_silence_ms: None,
                    // A cough, a click or "mhm" over the agent pauses it; only words stop it.
                    false_interruption_resume: true,
                    // The LLM request starts on the transcript computed while endpointing waits.
                    speculative_transcripts: true,
                    ..MediaOptions::default()
                },
                ..Default::default()
            },
            vec![sub],
        )
        .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("/outbound-call: {e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to initiate call");
        }
    };
    let rec = AgentCallRecord {
        call_id: call_sid.clone(),
        user_id: user_id.clone(),
        number: number.clone(),
        prompt: prompt.clone(),
        first_message: first_message.clone(),
        created_at: voxgate_call::now_ms(),
    };
    if let Err(e) = st.store.agent_call_added(&rec).await {
        tracing::error!(call = %call_sid, "storing the agent call: {e}");
        h.end("failed", "system");
        return error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to initiate call");
    }
    tracing::info!(call = %call_sid, user = user_id, number, "seed-001 agent call");
    st.agents.start(h, &user_id, prompt, first_message, events);
    Json(json!({ "success": true, "message": "Call initiated", "callSid": call_sid }))
        .into_response()
}

/// `POST /end-call {callSid, user_id}` → `{success: true, message: "Call ended successfully"}`:
/// hangs up (BYE, or CANCEL while ringing). 404 for an unknown, ended or another user's call.
#[utoipa::path(post, path = "/end-call", operation_id = "end_call", tag = "agent (seed 001)",
    request_body = super::openapi::EndCallRequest,
    responses(
        (status = 200, description = "The call ends", body = super::openapi::EndCallResponse),
        (status = 400, description = "No callSid or user_id", body = super::openapi::Seed001Error),
        (status = 403, description = "user_id is not the key's user", body = super::openapi::Seed001Error),
        (status = 404, description = "`Call not found` (unknown, ended, or another user's)", body = super::openapi::Seed001Error),
    ))]
pub async fn end_call(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let (Some(sid), Some(user_id)) = (text(&body, "callSid"), text(&body, "user_id")) else {
        return error(StatusCode::BAD_REQUEST, "callSid and user_id are required");
    };
    if let Err(r) = acting_as(&p, &user_id) {
        return r;
    }
    let Some(call) = st.agents.call(&sid).filter(|c| c.owner == user_id) else {
        return error(StatusCode::NOT_FOUND, "Call not found");
    };
    let _ = call
        .handle
        .command(CallCommand::Hangup {
            reason: Some("hangup".into()),
            initiator: Some("user".into()),
            headers: Vec::new(),
        })
        .await;
    Json(json!({ "success": true, "message": "Call ended successfully" })).into_response()
}

/// Twilio's status word of a call that has ended.
pub fn ended_status(answered: bool, reason: &str, initiator: &str) -> &'static str {
    if answered {
        return "completed";
    }
    match reason {
        "busy" | "declined" => "busy",
        "no_answer" => "no-answer",
        _ if initiator == "user" => "canceled",
        _ => "failed",
    }
}

/// `GET /call-status?callSid&user_id` → `{success, callSid, status, startTime, endTime,
/// duration}`. `status` is Twilio's word: `queued`, `ringing`, `in-progress`, then `completed`,
/// `busy`, `failed`, `no-answer` or `canceled`. `startTime` is when the call was placed,
/// `endTime` when it ended (`null` while live), both RFC 3339 UTC; `duration` is seconds since
/// it was answered (to its end; 0 when never answered).
#[utoipa::path(get, path = "/call-status", operation_id = "call_status", tag = "agent (seed 001)",
    params(super::openapi::CallStatusQuery),
    responses(
        (status = 200, description = "The call's status", body = super::openapi::CallStatusResponse),
        (status = 400, description = "No callSid or user_id", body = super::openapi::Seed001Error),
        (status = 403, description = "user_id is not the key's user", body = super::openapi::Seed001Error),
        (status = 404, description = "`Call not found` (unknown or another user's)", body = super::openapi::Seed001Error),
    ))]
pub async fn call_status(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(sid), Some(user_id)) = (
        q.get("callSid").filter(|s| !s.is_empty()),
        q.get("user_id").filter(|s| !s.is_empty()),
    ) else {
        return error(StatusCode::BAD_REQUEST, "callSid and user_id are required");
    };
    if let Err(r) = acting_as(&p, user_id) {
        return r;
    }
    let agent = match st.store.agent_call(sid).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store is unavailable",
            );
        }
    };
    if agent.as_ref().map(|a| a.user_id.as_str()) != Some(user_id.as_str()) {
        return error(StatusCode::NOT_FOUND, "Call not found");
    }
    let rec = match crate::store::Store::call(st.store.as_ref(), sid).await {
        Ok(Some(r)) => r,
        Ok(None) => return error(StatusCode::NOT_FOUND, "Call not found"),
        Err(e) => {
            tracing::error!("{e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store is unavailable",
            );
        }
    };
    let live = st.agents.call(sid);
    let status = match (&live, &rec.ended_at) {
        (Some(c), None) => *c.status.lock().expect("status"),
        _ => ended_status(
            rec.answered_at.is_some(),
            rec.hangup_reason.as_deref().unwrap_or("failed"),
            rec.hangup_initiator.as_deref().unwrap_or("system"),
        ),
    };
    let end = rec.ended_at.unwrap_or_else(voxgate_call::now_ms);
    let duration = rec
        .answered_at
        .map_or(0, |a| ((end - a).max(0) + 500) / 1000);
    Json(json!({
        "success": true,
        "callSid": sid,
        "status": status,
        "startTime": super::rfc3339(rec.created_at),
        "endTime": rec.ended_at.map(super::rfc3339),
        "duration": duration,
    }))
    .into_response()
}

/// How often `/frontend-stream` pings, and how long a client may stay silent (no pong, no
/// message) before it is closed.
const PING_EVERY: Duration = Duration::from_secs(20);
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Bot frames waiting for a caller frame to be mixed with (20 ms each).
const MIX_BACKLOG: usize = 25;

/// `GET /frontend-stream?callSid&user_id` (WebSocket): the live view of an agent call. After the
/// client's `{"event": "connect-twilio", ...}` it receives
/// - `{"event": "audio", "payload"}`: base64 of 160 bytes, one 20 ms frame of 8 kHz mono µ-law
///   (G.711, as Twilio Media Streams send) of the call's mixed audio, caller and agent summed;
/// - `{"event": "transcription", "text", "speaker": "caller"|"agent", "final": true}`: each
///   final transcript of either side (`speaker` and `final` are voxgate's extensions).
///
/// It never controls the call. The server pings every 20 s; at most `limits.streams_per_user`
/// (3) connections per user (the 4th is closed with code 1008 and the reason); an unknown,
/// ended or another user's call is closed with 1008 too. A client that reconnects gets the live
/// stream from then on.
pub async fn frontend_stream(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let sid = q.get("callSid").cloned().unwrap_or_default();
    let user_id = q.get("user_id").cloned().unwrap_or_default();
    let refusal: Result<(Arc<AgentCall>, _), String> = (|| {
        if sid.is_empty() || user_id.is_empty() {
            return Err("callSid and user_id are required".to_string());
        }
        let me = acting_as(&p, &user_id)
            .map_err(|_| "user_id does not match the API key's user".to_string())?;
        let call = st
            .agents
            .call(&sid)
            .filter(|c| c.owner == user_id)
            .ok_or_else(|| "Call not found (unknown, ended, or another user's)".to_string())?;
        let slot = st.limits.stream(&me).map_err(|e| e.message)?;
        Ok((call, slot))
    })();
    ws.on_upgrade(move |socket| async move {
        match refusal {
            Ok((call, slot)) => {
                run_frontend(socket, call).await;
                drop(slot);
            }
            Err(reason) => refuse(socket, reason).await,
        }
    })
}

async fn refuse(mut socket: WebSocket, reason: String) {
    let _ = socket
        .send(WsMessage::Close(Some(CloseFrame {
            code: 1008,
            reason: reason.chars().take(120).collect::<String>().into(),
        })))
        .await;
}

async fn run_frontend(mut socket: WebSocket, call: Arc<AgentCall>) {
    // Wait for `connect-twilio` (other messages are ignored; the client never controls the call).
    let connected = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(m)) = socket.recv().await {
            if let WsMessage::Text(t) = &m {
                let v: Value = serde_json::from_str(t).unwrap_or_default();
                if v["event"] == "connect-twilio" {
                    return true;
                }
            }
            if matches!(m, WsMessage::Close(_)) {
                return false;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !connected {
        return refuse(socket, "expected {\"event\": \"connect-twilio\"}".into()).await;
    }
    let (sub, mut events) = voxgate_call::subscriber::channel(256, 100);
    if call.handle.subscribe(sub).await.is_err() {
        return refuse(socket, "the call has ended".into()).await;
    }
    let mut audio = events.take_audio();
    let mut feed = call.feed.subscribe();
    let mut egress = Egress::new(Codec::Pcmu);
    let mut bot: VecDeque<AudioFrame> = VecDeque::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut last_heard = tokio::time::Instant::now();
    let b64 = base64::engine::general_purpose::STANDARD;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                None => break,
                Some(e) if matches!(e.kind, EventKind::Hangup { .. }) => break,
                Some(_) => {}
            },
            a = async { audio.as_mut()?.recv().await }, if audio.is_some() => {
                let Some((track, frame)) = a else { audio = None; continue };
                match track {
                    AudioTrack::Bot => {
                        if bot.len() >= MIX_BACKLOG {
                            bot.pop_front();
                        }
                        bot.push_back(frame);
                    }
                    AudioTrack::Caller => {
                        // The caller's frames pace the mix (they arrive every 20 ms while the
                        // call is up); the agent's frames are summed into them.
                        let mixed = match bot.pop_front() {
                            Some(b) => mix(&frame, &b),
                            None => frame,
                        };
                        if let Some(bytes) = egress.encode(&mixed) {
                            let msg = json!({ "event": "audio", "payload": b64.encode(bytes) });
                            if socket.send(WsMessage::Text(msg.to_string().into())).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            line = feed.recv() => match line {
                Ok(l) => {
                    let msg = json!({ "event": "transcription", "text": l.text, "speaker": l.speaker, "final": l.is_final });
                    if socket.send(WsMessage::Text(msg.to_string().into())).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(call = %call.id, "frontend-stream lagged: {n} transcripts skipped");
                }
                Err(_) => break,
            },
            m = socket.recv() => match m {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => last_heard = tokio::time::Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_LIMIT {
                    tracing::info!(call = %call.id, "frontend-stream client silent for {IDLE_LIMIT:?}: closed");
                    break;
                }
                if socket.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = socket
        .send(WsMessage::Close(Some(CloseFrame {
            code: 1000,
            reason: "call ended".into(),
        })))
        .await;
}

/// Sums two 16 kHz frames with saturation (the shorter one is padded with silence).
fn mix(a: &AudioFrame, b: &AudioFrame) -> AudioFrame {
    let n = a.samples.len().max(b.samples.len());
    let samples = (0..n)
        .map(|i| {
            let x = i32::from(a.samples.get(i).copied().unwrap_or(0));
            let y = i32::from(b.samples.get(i).copied().unwrap_or(0));
            (x + y).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
        })
        .collect();
    AudioFrame {
        samples,
        ..a.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_status_words() {
        assert_eq!(ended_status(true, "hangup", "user"), "completed");
        assert_eq!(ended_status(false, "busy", "system"), "busy");
        assert_eq!(ended_status(false, "no_answer", "system"), "no-answer");
        assert_eq!(ended_status(false, "hangup", "user"), "canceled");
        assert_eq!(ended_status(false, "failed", "system"), "failed");
    }
}
