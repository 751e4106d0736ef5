//! The HTTP and WebSocket APIs (layer L4 "api"): routes and shared state.

pub mod agent;
pub mod bots;
pub mod call_ws;
pub mod keys;
pub mod openapi;
pub mod pbx;
pub mod rest;
pub mod twilio;

use crate::auth::{AuthError, Authenticator, Principal};
use crate::config::Config;
use crate::limits::Limits;
use crate::store::sqlite::SqliteStore;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// The live calls of this node.
    pub core: voxgate_call::CallCore,
    /// Reads of stored calls (the core writes through its own port).
    pub store: Arc<SqliteStore>,
    /// The SIP user agent, when `sip.enabled`.
    pub sip: Option<Arc<crate::sip::SipService>>,
    /// Seed 004 bots.
    pub bots: Arc<crate::bots::BotService>,
    /// The URL this server is reached at (`public_url`, or `http://` + the bound address).
    pub public_url: String,
    /// API keys and JWTs.
    pub auth: Authenticator,
    /// Rate limits and quotas.
    pub limits: Arc<Limits>,
    /// Seed 001 agents.
    pub agents: Arc<crate::agent::AgentService>,
    /// Seed 003's Socket.IO rooms.
    pub pbx: Arc<pbx::Pbx>,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// The error body of each API family (issue 8): seed 002 and 004 routes answer
/// `{"code","message"}`, seed 003 routes `{"status","errors","data":null}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiShape {
    Native,
    Pbx,
    /// Seed 001: `{"success": false, "error"}` (`{"error"}` for 400).
    Seed001,
}

impl ApiShape {
    /// An error response in this shape; `code` is the machine-readable code of the native shape.
    pub fn error(self, status: StatusCode, code: &str, message: &str) -> Response {
        match self {
            ApiShape::Native => json_error(status, code, message),
            ApiShape::Pbx => pbx::envelope_error(status, message),
            ApiShape::Seed001 => agent::error(status, message),
        }
    }

    /// 429 with `Retry-After` (seconds, at least 1).
    pub fn too_many(self, message: &str, retry_after_secs: u64) -> Response {
        let mut r = self.error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs.max(1)),
        );
        r
    }
}

/// The response to a failed authentication, in `shape`.
pub fn auth_failure(shape: ApiShape, e: &AuthError) -> Response {
    match e {
        AuthError::Store(m) => {
            tracing::error!("authentication store: {m}");
            shape.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "authentication is unavailable",
            )
        }
        _ => {
            let mut r = shape.error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string());
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

async fn authenticate(st: &AppState, shape: ApiShape, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let token = crate::auth::request_token(&parts);
    match st.auth.authenticate(token.as_deref()).await {
        Ok(p) => {
            parts.extensions.insert(p);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => auth_failure(shape, &e),
    }
}

async fn auth_native(State(st): State<AppState>, req: Request, next: Next) -> Response {
    authenticate(&st, ApiShape::Native, req, next).await
}

async fn auth_seed001(State(st): State<AppState>, req: Request, next: Next) -> Response {
    authenticate(&st, ApiShape::Seed001, req, next).await
}

async fn auth_pbx(State(st): State<AppState>, req: Request, next: Next) -> Response {
    authenticate(&st, ApiShape::Pbx, req, next).await
}

/// Why a request to place a call is refused before dialling; each API words it in its shape.
#[derive(Debug)]
pub enum DialRefusal {
    /// No way to dial (500): SIP is disabled, or no trunk is configured. The message says which.
    NoRoute(&'static str),
    /// Over the concurrent-calls quota or the originations rate (429 with `Retry-After`).
    Limited(crate::limits::LimitError),
}

/// The checks before a REST-originated call (seed 001 `/outbound-call`, seed 003 `/pbx/call`):
/// a SIP trunk exists, `p` has room for one more call, and one more origination this minute
/// (counted here).
///
/// # Errors
/// [`DialRefusal`].
pub async fn admit_dial(st: &AppState, p: &Principal) -> Result<(), DialRefusal> {
    let Some(sip) = st.sip.as_ref() else {
        return Err(DialRefusal::NoRoute("SIP is disabled on this server"));
    };
    if sip.trunk().is_none() {
        return Err(DialRefusal::NoRoute(
            "no SIP trunk is configured ([[sip.trunks]])",
        ));
    }
    st.limits
        .call_room(&st.core, p)
        .map_err(DialRefusal::Limited)?;
    st.limits.originate(p).await.map_err(DialRefusal::Limited)
}

/// The authenticated user of a request (set by the auth middleware of every protected route).
pub type Caller = axum::Extension<Principal>;

/// A JSON error body `{code, message}` with an HTTP status.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "code": code, "message": message })),
    )
        .into_response()
}

/// Epoch ms as RFC 3339 UTC with seconds (`2026-11-26T10:31:00Z`), the APIs' time format.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// 500 `{code: "server_error"}` for a failed store (the cause is logged, not shown).
pub fn store_failed(e: impl std::fmt::Display) -> Response {
    tracing::error!("{e}");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the store is unavailable",
    )
}

/// All routes. Every route but `/health` and Twilio's (which are checked by
/// `X-Twilio-Signature`) needs a key once authentication is on.
pub fn router(state: AppState) -> Router {
    let native = Router::new()
        .route("/call", get(call_ws::handler::call_ws))
        .route("/call/sip", get(call_ws::handler::call_sip))
        .route("/call/lists", get(rest::list_calls))
        .route("/call/kill/{id}", post(rest::kill_call))
        .route("/iceservers", get(rest::ice_servers))
        .route("/bots", post(bots::create).get(bots::list))
        .route("/bots/{id}", get(bots::get).delete(bots::delete))
        .route("/metrics", get(rest::metrics))
        .route("/admin/keys", post(keys::create).get(keys::list))
        .route("/admin/keys/{id}", axum::routing::delete(keys::revoke))
        .route_layer(from_fn_with_state(state.clone(), auth_native));
    let seed003 = Router::new()
        .route("/pbx/call", post(pbx::call))
        .route("/pbx/hangup", post(pbx::hangup))
        .route_layer(from_fn_with_state(state.clone(), auth_pbx));
    // Seed 001: errors in its own `{"error"}` shape (401 included).
    let seed001 = Router::new()
        .route("/outbound-call", post(agent::outbound_call))
        .route("/end-call", post(agent::end_call))
        .route("/call-status", get(agent::call_status))
        .route("/frontend-stream", get(agent::frontend_stream))
        .route_layer(from_fn_with_state(state.clone(), auth_seed001));
    let socketio = state.pbx.layer();
    Router::new()
        .merge(native)
        .merge(seed003)
        .merge(seed001)
        .route("/voice", post(twilio::twiml::voice))
        .route("/voice/next", post(twilio::twiml::voice_next))
        .route("/stream/{bot_id}", get(twilio::stream::stream))
        .route("/health", get(rest::health))
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .url("/openapi.json", openapi::document().clone()),
        )
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(socketio)
        .with_state(state)
}
