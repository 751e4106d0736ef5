//! Socket glue for `/call`: upgrade, spawn the call actor, pump messages both ways, dump.

use super::adapter::{event_json, list_option, parse_command};
use crate::api::{json_error, AppState};
use crate::call::actor::{ActorInput, CallActor, Outbound, OUTBOX};
use crate::call::registry::CallInfo;
use crate::call::{now_ms, CallCommand, CallEvent, EventKind};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Mutex};

/// Query of `GET /call`: `id` (session id; a UUID when absent) and `dump` (`true`/`false`).
#[derive(Deserialize)]
pub struct CallQuery {
    id: Option<String>,
    dump: Option<String>,
}

type DumpFile = Arc<Mutex<tokio::io::BufWriter<tokio::fs::File>>>;

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
) -> Response {
    upgrade(ws, q, st, false)
}

/// `GET /call/sip` (seed 002 "SIP Call Handler"): the same commands and events, with the audio on
/// a SIP/RTP leg. `invite` dials; a client that has not dialled waits for inbound calls
/// (`incoming`, then `accept`); `?id=` of a webhook-announced call attaches to that call.
pub async fn call_sip(
    ws: WebSocketUpgrade,
    Query(q): Query<CallQuery>,
    State(st): State<AppState>,
) -> Response {
    if st.sip.is_none() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sip_disabled",
            "SIP is disabled on this server (sip.enabled = false)",
        );
    }
    upgrade(ws, q, st, true)
}

fn upgrade(ws: WebSocketUpgrade, q: CallQuery, st: AppState, sip: bool) -> Response {
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
    if st.registry.inbox(&id).is_some() {
        return json_error(
            StatusCode::CONFLICT,
            "conflict",
            &format!("a call with id `{id}` is already active"),
        );
    }
    let max = st.config.call.max_binary_bytes;
    // Small socket buffers: a call exchanges 20 ms frames (160-640 bytes), and tungstenite's
    // 128 KiB defaults cost memory per call and a 128 KiB clear per read.
    ws.max_message_size(max.max(16 * 1024 * 1024))
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| run(socket, id, dump, st, sip))
        .into_response()
}

async fn run(socket: WebSocket, id: String, dump: bool, st: AppState, sip: bool) {
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(OUTBOX);
    let call_type = if sip { "sip" } else { "websocket" };
    let (mut actor, inbox) = CallActor::new(
        id.clone(),
        call_type,
        st.call_context.clone(),
        out_tx.clone(),
    );
    let sip_svc = if sip { st.sip.clone() } else { None };
    let mut waiting = false;
    if let Some(svc) = &sip_svc {
        // A webhook-announced inbound call is attached by its id; otherwise the client waits.
        let incoming = svc.take_pending(&id);
        waiting = incoming.is_none();
        actor = actor.with_sip(svc.clone(), incoming);
    }
    let info = CallInfo {
        id: id.clone(),
        call_type: call_type.into(),
        created_at: chrono::Utc::now().to_rfc3339(),
        option: serde_json::json!({}),
    };
    if !st.registry.insert(info, inbox.clone()) {
        // Lost a race with another connection using the same id.
        let (mut sink, _) = socket.split();
        let e = CallEvent::now(EventKind::Error {
            track_id: id.clone(),
            sender: "command".into(),
            error: format!("a call with id `{id}` is already active"),
            code: Some(409),
        });
        let _ = sink
            .send(Message::Text(event_json(&e).to_string().into()))
            .await;
        return;
    }
    tracing::info!(call = %id, dump, call_type, "call connected");
    if waiting {
        if let Some(svc) = &sip_svc {
            svc.add_waiting(&id, inbox.clone());
        }
    }
    let dump: Option<DumpFile> = if dump {
        let dir = st.config.data_dir.join("dumps");
        let path = dir.join(format!("{id}.jsonl"));
        match tokio::fs::create_dir_all(&dir).await {
            Ok(()) => match tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
            {
                Ok(f) => Some(Arc::new(Mutex::new(tokio::io::BufWriter::new(f)))),
                Err(e) => {
                    tracing::warn!(call = %id, "cannot open dump {}: {e}", path.display());
                    None
                }
            },
            Err(e) => {
                tracing::warn!(call = %id, "cannot create {}: {e}", dir.display());
                None
            }
        }
    } else {
        None
    };
    let registry = st.registry.clone();
    let actor_id = id.clone();
    let actor_task = tokio::spawn(async move {
        actor.run().await;
        registry.remove(&actor_id);
    });

    let (mut sink, mut stream) = socket.split();
    let writer_dump = dump.clone();
    let writer = tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            let msg = match o {
                Outbound::Event(e) => {
                    let v = event_json(&e);
                    dump_line(&writer_dump, "event", v.clone()).await;
                    Message::Text(v.to_string().into())
                }
                Outbound::Audio(b) => Message::Binary(b),
            };
            if sink.send(msg).await.is_err() {
                // The client is gone; keep draining so the actor never blocks on us.
                while out_rx.recv().await.is_some() {}
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });

    let max = st.config.call.max_binary_bytes;
    let mut actor_task = actor_task;
    let mut actor_done = false;
    loop {
        // The call can end on its own (hangup, autoHangup, kill): stop reading then, so that the
        // writer can close the socket.
        let msg = tokio::select! {
            m = stream.next() => match m {
                Some(m) => m,
                None => break,
            },
            _ = &mut actor_task => {
                actor_done = true;
                break;
            }
        };
        let input = match msg {
            Ok(Message::Text(t)) => {
                let parsed: serde_json::Value = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|_| serde_json::Value::String(t.to_string()));
                dump_line(&dump, "command", parsed).await;
                match parse_command(t.as_str()) {
                    Ok(cmd) => {
                        if let CallCommand::Invite(o) | CallCommand::Accept(o) = &cmd {
                            st.registry.set_option(&id, list_option(o));
                        }
                        if let (Some(svc), CallCommand::Invite(_)) = (&sip_svc, &cmd) {
                            svc.remove_waiting(&id);
                        }
                        ActorInput::Command(cmd)
                    }
                    Err(e) => {
                        let ev = CallEvent::now(EventKind::Error {
                            track_id: id.clone(),
                            sender: "command".into(),
                            error: e.0,
                            code: Some(400),
                        });
                        if out_tx.send(Outbound::Event(ev)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                }
            }
            Ok(Message::Binary(_)) if sip_svc.is_some() => {
                let ev = CallEvent::now(EventKind::Error {
                    track_id: id.clone(),
                    sender: "media".into(),
                    error:
                        "binary audio is not used on /call/sip: the call's audio travels over RTP"
                            .into(),
                    code: Some(400),
                });
                if out_tx.send(Outbound::Event(ev)).await.is_err() {
                    break;
                }
                continue;
            }
            Ok(Message::Binary(b)) => {
                if b.len() > max {
                    let ev = CallEvent::now(EventKind::Error {
                        track_id: id.clone(),
                        sender: "media".into(),
                        error: format!(
                            "binary message of {} bytes rejected (limit {max}); send 20 ms frames",
                            b.len()
                        ),
                        code: Some(413),
                    });
                    if out_tx.send(Outbound::Event(ev)).await.is_err() {
                        break;
                    }
                    continue;
                }
                ActorInput::Audio(b)
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if inbox.send(input).await.is_err() {
            break;
        }
    }
    if let Some(svc) = &sip_svc {
        svc.remove_waiting(&id);
    }
    drop(out_tx);
    if !actor_done {
        let _ = inbox.send(ActorInput::LegClosed).await;
        let _ = actor_task.await;
    }
    let _ = writer.await;
    if let Some(d) = dump {
        let _ = d.lock().await.flush().await;
    }
    tracing::info!(call = %id, "call disconnected");
}
