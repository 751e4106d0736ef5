//! Seed 004 REST: `POST /bots`, `GET /bots`, `GET /bots/{id}`, `DELETE /bots/{id}`. Errors are
//! `{"code","message"}` with the seed's statuses: 400 (naming the bad field), 404, 429 (more
//! than `bots.max_per_user` bots), 503 (no free number in `[bots] numbers`), 500.

use super::{json_error, rfc3339, store_failed, AppState};
use crate::api::openapi::{Bot, BotCreate, BotCreated, BotSummary, Deleted, ErrorBody};
use crate::api::Caller;
use crate::auth::Principal;
use crate::store::KeyStore;
use crate::store::{BotCreateError, BotRecord, BotStore};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

const MAX_GOAL: usize = 2_000;
const MAX_CONTEXT: usize = 20_000;
const MAX_GREETING: usize = 500;

fn bad(message: impl AsRef<str>) -> Response {
    json_error(StatusCode::BAD_REQUEST, "bad_request", message.as_ref())
}

/// An optional string field: absent or null is `None`; anything but a string is a 400.
#[allow(clippy::result_large_err)] // the error is the HTTP answer, returned once
fn opt_str(body: &Value, field: &str, max: usize) -> Result<Option<String>, Response> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() > max => {
            Err(bad(format!("`{field}` is longer than {max} characters")))
        }
        Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.trim().is_empty())),
        Some(_) => Err(bad(format!("`{field}` must be a string"))),
    }
}

fn valid_transfer_target(t: &str) -> bool {
    let t = t.trim();
    if t.starts_with("sip:") || t.starts_with("sips:") {
        return t.len() > 4 && !t.contains(char::is_whitespace);
    }
    let digits = t.strip_prefix('+').unwrap_or(t);
    !digits.is_empty() && digits.len() <= 20 && digits.chars().all(|c| c.is_ascii_digit())
}

/// The JSON of a bot for its owner (never its secret, which is shown once at creation).
fn bot_json(st: &AppState, b: &BotRecord, calls_today: i64) -> Value {
    let effective = st
        .bots
        .voice(b.voice.as_deref())
        .map(|v| v.effective)
        .unwrap_or_default();
    json!({
        "id": b.id,
        "number": b.number,
        "goal": b.goal,
        "webhook": b.webhook,
        "context": b.context,
        "voice": b.voice,
        "effective_voice": effective,
        "transfer_to": b.transfer_to,
        "greeting": b.greeting,
        "status": b.status,
        "calls_today": calls_today,
        "created_at": rfc3339(b.created_at),
    })
}

/// `POST /bots`: `goal` and `webhook` (an http(s) URL) required; `context`, `voice` (seed 004's
/// `elevenlabs:emma`, `polly:joanna`, `playht:sarah`, or local `piper:joe`, `flite:slt`),
/// `transfer_to` and `greeting` (voxgate extensions) optional. Answers
/// `{id, number, status, created_at, secret, voice, effective_voice}`; `secret` signs the
/// webhook requests and is shown only here.
#[utoipa::path(post, path = "/bots", operation_id = "bots_create", tag = "bots (seed 004)",
    request_body = BotCreate,
    responses(
        (status = 200, description = "The bot, with its number and webhook secret", body = BotCreated),
        (status = 400, description = "Bad body", body = ErrorBody),
        (status = 401, description = "No or a bad key", body = ErrorBody),
        (status = 429, description = "The user has the most bots allowed", body = ErrorBody),
        (status = 503, description = "No phone number is free", body = ErrorBody),
    ))]
pub async fn create(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad(format!("the body must be a JSON object: {}", e.body_text())),
    };
    if !body.is_object() {
        return bad("the body must be a JSON object");
    }
    let goal = match opt_str(&body, "goal", MAX_GOAL) {
        Ok(Some(g)) => g,
        Ok(None) => return bad("`goal` is required: what the bot should do"),
        Err(r) => return r,
    };
    let webhook = match opt_str(&body, "webhook", 2_000) {
        Ok(Some(w)) => w,
        Ok(None) => {
            return bad("`webhook` is required: the URL that receives each caller utterance")
        }
        Err(r) => return r,
    };
    match url::Url::parse(&webhook) {
        Ok(u) if ["http", "https"].contains(&u.scheme()) && u.host_str().is_some() => {}
        _ => return bad(format!("`webhook`: `{webhook}` is not an http(s) URL")),
    }
    let (context, voice, transfer_to, greeting) = match (
        opt_str(&body, "context", MAX_CONTEXT),
        opt_str(&body, "voice", 100),
        opt_str(&body, "transfer_to", 256),
        opt_str(&body, "greeting", MAX_GREETING),
    ) {
        (Ok(c), Ok(v), Ok(t), Ok(g)) => (c, v, t, g),
        (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) | (.., Err(r)) => return r,
    };
    let effective = match st.bots.voice(voice.as_deref()) {
        Ok(v) => v.effective,
        Err(e) => return bad(e),
    };
    if let Some(t) = &transfer_to {
        if !valid_transfer_target(t) {
            return bad(format!(
                "`transfer_to`: `{t}` is neither a phone number nor a sip: URI"
            ));
        }
    }
    let id: String = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let secret = format!("whsec_{}", uuid::Uuid::new_v4().simple());
    let rec = BotRecord {
        id,
        user_id: p.user.clone(),
        number: String::new(),
        goal,
        webhook,
        context,
        voice: voice.clone(),
        transfer_to,
        greeting,
        secret: secret.clone(),
        status: "active".into(),
        created_at: voxgate_call::now_ms(),
    };
    let cfg = &st.bots.config.bots;
    match st
        .bots
        .store
        .bot_create(&rec, &cfg.numbers, cfg.max_per_user)
        .await
    {
        Ok(b) => {
            tracing::info!(bot = b.id, number = b.number, "bot created");
            Json(json!({
                "id": b.id,
                "number": b.number,
                "status": b.status,
                "created_at": rfc3339(b.created_at),
                "secret": secret,
                "voice": voice,
                "effective_voice": effective,
            }))
            .into_response()
        }
        Err(BotCreateError::TooMany(n)) => {
            metrics::counter!("voxgate_rate_limited_total", "limit" => "bots_per_user")
                .increment(1);
            json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &format!("you already have {n} bots, the limit; delete one first"),
            )
        }
        Err(BotCreateError::NoNumber) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_numbers",
            "no phone number is free: add numbers to `[bots] numbers` in the configuration",
        ),
        Err(BotCreateError::Store(e)) => store_failed(e),
    }
}

/// `GET /bots`: `[{id, number, goal, status, calls_today}]`, the caller's bots (an admin key:
/// every user's).
#[utoipa::path(get, path = "/bots", operation_id = "bots_list", tag = "bots (seed 004)",
    responses(
        (status = 200, description = "The user's bots", body = Vec<BotSummary>),
        (status = 401, description = "No or a bad key", body = ErrorBody),
    ))]
pub async fn list(State(st): State<AppState>, axum::Extension(p): Caller) -> Response {
    let bots = if p.admin {
        st.store.all_bots().await
    } else {
        st.bots.store.bots(&p.user).await
    };
    let bots = match bots {
        Ok(b) => b,
        Err(e) => return store_failed(e),
    };
    let mut out = Vec::with_capacity(bots.len());
    for b in &bots {
        let calls = st.bots.calls_today(&b.id).await;
        out.push(json!({
            "id": b.id, "number": b.number, "goal": b.goal, "status": b.status, "calls_today": calls,
        }));
    }
    Json(Value::Array(out)).into_response()
}

#[allow(clippy::result_large_err)]
async fn find(st: &AppState, p: &Principal, id: &str) -> Result<BotRecord, Response> {
    match st.bots.store.bot(id).await {
        // Another user's bot is "not found": its existence is not revealed.
        Ok(Some(b)) if p.owns(Some(&b.user_id)) => Ok(b),
        Ok(_) => Err(json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no bot with id `{id}`"),
        )),
        Err(e) => Err(store_failed(e)),
    }
}

/// `GET /bots/{id}`: `{id, number, goal, webhook, context, voice, effective_voice, created_at, ...}`.
#[utoipa::path(get, path = "/bots/{id}", operation_id = "bots_get", tag = "bots (seed 004)",
    params(("id" = String, Path, description = "The bot id")),
    responses(
        (status = 200, description = "The bot", body = Bot),
        (status = 401, description = "No or a bad key", body = ErrorBody),
        (status = 404, description = "No such bot of this user", body = ErrorBody),
    ))]
pub async fn get(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(id): Path<String>,
) -> Response {
    match find(&st, &p, &id).await {
        Ok(b) => {
            let calls = st.bots.calls_today(&b.id).await;
            Json(bot_json(&st, &b, calls)).into_response()
        }
        Err(r) => r,
    }
}

/// `DELETE /bots/{id}`: `{"message": "Bot deleted"}`; the number is free for the next bot. Calls
/// in progress go on; new calls to the number are refused.
#[utoipa::path(delete, path = "/bots/{id}", operation_id = "bots_delete", tag = "bots (seed 004)",
    params(("id" = String, Path, description = "The bot id")),
    responses(
        (status = 200, description = "Deleted; its number is free", body = Deleted),
        (status = 401, description = "No or a bad key", body = ErrorBody),
        (status = 404, description = "No such bot of this user", body = ErrorBody),
    ))]
pub async fn delete(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = find(&st, &p, &id).await {
        return r;
    }
    match st.bots.store.bot_delete(&id).await {
        Ok(true) => {
            tracing::info!(bot = id, "bot deleted");
            Json(json!({ "message": "Bot deleted" })).into_response()
        }
        Ok(false) => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no bot with id `{id}`"),
        ),
        Err(e) => store_failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_targets() {
        for ok in [
            "+15550100",
            "15550100",
            "sip:agent@127.0.0.1:5070",
            "sips:a@b",
        ] {
            assert!(valid_transfer_target(ok), "{ok}");
        }
        for bad in ["", "sip:", "call me", "+1-555", "sip:a b@c"] {
            assert!(!valid_transfer_target(bad), "{bad}");
        }
    }
}
