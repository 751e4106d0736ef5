//! The HTTP and WebSocket APIs (layer L4 "api"): routes and shared state.

pub mod bots;
pub mod call_ws;
pub mod rest;
pub mod twilio;

use crate::config::Config;
use crate::store::sqlite::SqliteStore;
use axum::http::StatusCode;
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
}

/// A JSON error body `{code, message}` with an HTTP status.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "code": code, "message": message })),
    )
        .into_response()
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/call", get(call_ws::handler::call_ws))
        .route("/call/sip", get(call_ws::handler::call_sip))
        .route("/call/lists", get(rest::list_calls))
        .route("/call/kill/{id}", post(rest::kill_call))
        .route("/iceservers", get(rest::ice_servers))
        .route("/bots", post(bots::create).get(bots::list))
        .route("/bots/{id}", get(bots::get).delete(bots::delete))
        .route("/voice", post(twilio::twiml::voice))
        .route("/voice/next", post(twilio::twiml::voice_next))
        .route("/stream/{bot_id}", get(twilio::stream::stream))
        .route("/health", get(rest::health))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}
