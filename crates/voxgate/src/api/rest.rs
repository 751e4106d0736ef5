//! Seed 002 REST endpoints: `GET /call/lists`, `POST /call/kill/{id}`, `GET /iceservers`; and
//! `GET /health`.

use super::{json_error, AppState};
use crate::call::actor::ActorInput;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// `GET /call/lists`: `{"calls": [{id, call_type, created_at, option}]}`.
pub async fn list_calls(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "calls": st.registry.list() }))
}

/// `POST /call/kill/{id}`: `true`, or 404 `{code, message}` for an unknown id.
pub async fn kill_call(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match st.registry.inbox(&id) {
        Some(inbox) if inbox.send(ActorInput::Kill).await.is_ok() => Json(true).into_response(),
        _ => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no active call with id `{id}`"),
        ),
    }
}

/// `GET /iceservers`: the configured STUN/TURN servers.
pub async fn ice_servers(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(json!(st.config.ice_servers))
}

/// `GET /health`: `{"status": "ok", "version", "calls", "sip"}`; `sip` (when enabled) holds the
/// SIP address and each trunk's OPTIONS/REGISTER status.
pub async fn health(State(st): State<AppState>) -> Json<serde_json::Value> {
    let sip = st
        .sip
        .as_ref()
        .map(|s| json!({ "listen": s.local_addr.to_string(), "trunks": s.trunk_status() }));
    Json(
        json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "calls": st.registry.len(), "sip": sip }),
    )
}
