//! API key administration over REST (admin keys only; `voxgate keys` does the same from a
//! shell): `POST /admin/keys`, `GET /admin/keys`, `DELETE /admin/keys/{id}`.

use super::openapi::{ErrorBody, KeyCreate, KeyCreated, KeyInfo, KeyRevoked};
use super::{json_error, rfc3339, store_failed, AppState, Caller};
use crate::auth::Principal;
use crate::store::{KeyRecord, KeyStore};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

fn info(k: &KeyRecord) -> KeyInfo {
    KeyInfo {
        id: k.id.clone(),
        user: k.user_id.clone(),
        label: k.label.clone(),
        admin: k.admin,
        created_at: rfc3339(k.created_at),
        revoked_at: k.revoked_at.map(rfc3339),
    }
}

#[allow(clippy::result_large_err)]
fn admin_only(p: &Principal) -> Result<(), Response> {
    if p.admin {
        Ok(())
    } else {
        Err(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "managing keys needs an admin key",
        ))
    }
}

/// A user id: 1-128 characters of `A-Z a-z 0-9 - _ . @`.
pub fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 128
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// Creates a key for a user; the key is in this answer only.
#[utoipa::path(post, path = "/admin/keys", operation_id = "keys_create", tag = "keys",
    request_body = KeyCreate,
    responses(
        (status = 201, description = "The key (shown once)", body = KeyCreated),
        (status = 400, description = "Bad body or user id", body = ErrorBody),
        (status = 401, description = "No or a bad key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
    ))]
pub async fn create(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    body: Result<Json<KeyCreate>, JsonRejection>,
) -> Response {
    if let Err(r) = admin_only(&p) {
        return r;
    }
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!(
                    "the body must be JSON {{user, label?, admin?}}: {}",
                    e.body_text()
                ),
            )
        }
    };
    if !valid_user(&b.user) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`user` must be 1-128 characters of A-Z a-z 0-9 - _ . @",
        );
    }
    if b.label.as_ref().is_some_and(|l| l.len() > 200) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`label` is over 200 characters",
        );
    }
    let k = match crate::auth::new_key(&b.user, b.label, b.admin.unwrap_or(false)) {
        Ok(k) => k,
        Err(e) => return store_failed(e),
    };
    if let Err(e) = st.store.key_create(&k.record).await {
        return store_failed(e);
    }
    tracing::info!(
        key = k.record.id,
        user = k.record.user_id,
        by = p.user,
        "key created"
    );
    (
        StatusCode::CREATED,
        Json(KeyCreated {
            key: k.key,
            info: info(&k.record),
        }),
    )
        .into_response()
}

/// Query of `GET /admin/keys`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeysQuery {
    /// Only this user's keys.
    user: Option<String>,
}

/// Lists keys (never the keys themselves), oldest first.
#[utoipa::path(get, path = "/admin/keys", operation_id = "keys_list", tag = "keys", params(KeysQuery),
    responses(
        (status = 200, description = "Keys", body = Vec<KeyInfo>),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "No or a bad key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
    ))]
pub async fn list(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    q: Result<Query<KeysQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = admin_only(&p) {
        return r;
    }
    let Ok(Query(q)) = q else {
        return json_error(StatusCode::BAD_REQUEST, "bad_request", "bad query");
    };
    match st.store.keys(q.user.as_deref()).await {
        Ok(keys) => Json(keys.iter().map(info).collect::<Vec<_>>()).into_response(),
        Err(e) => store_failed(e),
    }
}

/// Revokes a key: running servers refuse it at once.
#[utoipa::path(delete, path = "/admin/keys/{id}", operation_id = "keys_revoke", tag = "keys",
    params(("id" = String, Path, description = "The key id (12 hex digits)")),
    responses(
        (status = 200, description = "Revoked", body = KeyRevoked),
        (status = 401, description = "No or a bad key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No active key with this id", body = ErrorBody),
    ))]
pub async fn revoke(
    State(st): State<AppState>,
    axum::Extension(p): Caller,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = admin_only(&p) {
        return r;
    }
    match st.store.key_revoke(&id, voxgate_call::now_ms()).await {
        Ok(true) => {
            tracing::info!(key = id, by = p.user, "key revoked");
            Json(KeyRevoked { id, revoked: true }).into_response()
        }
        Ok(false) => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no active key with id `{id}`"),
        ),
        Err(e) => store_failed(e),
    }
}
