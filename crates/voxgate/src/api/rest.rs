//! Seed 002 REST endpoints: `GET /call/lists`, `POST /call/kill/{id}`, `GET /iceservers`; and
//! `GET /health`.

use super::openapi::{CallList, ErrorBody, Health, IceServerDoc};
use super::{json_error, AppState, Caller};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// `GET /call/lists`: `{"calls": [{id, call_type, created_at (RFC 3339), option}]}`: the
/// caller's live calls (an admin key: every user's, with `user`).
#[utoipa::path(get, path = "/call/lists", operation_id = "list_calls", tag = "calls (seed 002)",
    responses(
        (status = 200, description = "Live calls", body = CallList),
        (status = 401, description = "No or a bad key", body = ErrorBody),
    ))]
pub async fn list_calls(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
) -> Json<serde_json::Value> {
    let calls: Vec<serde_json::Value> = st
        .core
        .list()
        .into_iter()
        .filter(|c| p.owns(c.owner.as_deref()))
        .map(|c| {
            let created = chrono::DateTime::from_timestamp_millis(c.created_at)
                .unwrap_or_default()
                .to_rfc3339();
            let mut v = json!({ "id": c.id, "call_type": c.kind, "created_at": created, "option": c.option });
            if p.admin {
                v["user"] = json!(c.owner);
            }
            v
        })
        .collect();
    Json(json!({ "calls": calls }))
}

/// `POST /call/kill/{id}`: `true` (the call ends with `hangup`, reason `killed`), or 404
/// `{code, message}` for an unknown id or another user's call. Never waits on the call.
#[utoipa::path(post, path = "/call/kill/{id}", operation_id = "kill_call", tag = "calls (seed 002)",
    params(("id" = String, Path, description = "The call id")),
    responses(
        (status = 200, description = "The call is ending (`hangup`, reason `killed`)", body = bool, content_type = "application/json"),
        (status = 401, description = "No or a bad key", body = ErrorBody),
        (status = 404, description = "No such live call of this user", body = ErrorBody),
    ))]
pub async fn kill_call(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(id): Path<String>,
) -> Response {
    let owner = st.core.info(&id).map(|c| c.owner);
    match (st.core.get(&id), owner) {
        (Some(call), Some(owner)) if p.owns(owner.as_deref()) && call.end("killed", "system") => {
            Json(true).into_response()
        }
        _ => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no active call with id `{id}`"),
        ),
    }
}

/// `GET /iceservers`: the configured STUN/TURN servers.
#[utoipa::path(get, path = "/iceservers", operation_id = "ice_servers", tag = "calls (seed 002)",
    responses(
        (status = 200, description = "STUN/TURN servers", body = Vec<IceServerDoc>),
        (status = 401, description = "No or a bad key", body = ErrorBody),
    ))]
pub async fn ice_servers(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(json!(st.config.ice_servers))
}

/// `GET /health`: `{"status": "ok", "version", "calls", "sip"}`; `sip` (when enabled) holds the
/// SIP address and each trunk's OPTIONS/REGISTER status.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "server", security(()),
    responses((status = 200, description = "Up", body = Health)))]
pub async fn health(State(st): State<AppState>) -> Json<serde_json::Value> {
    let sip = st
        .sip
        .as_ref()
        .map(|s| json!({ "listen": s.local_addr.to_string(), "trunks": s.trunk_status() }));
    Json(
        json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "calls": st.core.len(), "sip": sip }),
    )
}

/// `GET /metrics`: Prometheus text format (version 0.0.4) of every `voxgate_*` metric (README
/// "Metrics"). Needs an admin key once authentication is on (labels name users); 403 otherwise.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "server",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 401, description = "No or a bad key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
    ))]
pub async fn metrics(State(st): State<AppState>, axum::Extension(p): Caller) -> Response {
    if !p.admin {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "/metrics needs an admin key (voxgate keys create --admin)",
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}
