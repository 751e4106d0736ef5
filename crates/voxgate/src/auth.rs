//! Users, API keys and JWTs (README "Going to production").
//!
//! A key is `vg_<ID>_<SECRET>`: `ID` is 12 hex digits (shown by `keys list`), `SECRET` 32 random
//! bytes in base64url. Only the SHA-256 of the secret is stored; a presented key is looked up by
//! its id and its hash compared in constant time (`subtle`). Keys are high-entropy random values,
//! so a fast hash is the right one (a password hash would only slow every request down).
//!
//! Bearer tokens may also be HS256 JSON Web Tokens signed with `auth.jwt_secret` (`sub` = user,
//! `exp` required): seed 003's example token is one.
//!
//! Authentication is on once any key was ever created, or with `auth.enabled` or
//! `auth.jwt_secret`. While it is off, every request acts as [`LOCAL_USER`], an admin, and the
//! server binds loopback only.

use crate::config::AuthConfig;
use crate::store::{KeyRecord, KeyStore, StoreError};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use voxgate_call::now_ms;

/// The user of a server without authentication (and the owner of its calls and bots).
pub const LOCAL_USER: &str = "local";

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user id (tenant).
    pub user: String,
    /// Sees and controls every user's resources.
    pub admin: bool,
}

impl Principal {
    /// The principal of a server without authentication.
    pub fn local() -> Self {
        Principal {
            user: LOCAL_USER.into(),
            admin: true,
        }
    }

    /// Whether this principal may see and control a resource owned by `owner` (a resource with
    /// no owner belongs to [`LOCAL_USER`]).
    pub fn owns(&self, owner: Option<&str>) -> bool {
        self.admin || owner.unwrap_or(LOCAL_USER) == self.user
    }
}

/// Why a request was not authenticated. The messages are safe to show to the client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("Authentication token is required")]
    Missing,
    #[error("Invalid or revoked token")]
    Invalid,
    #[error("Token expired")]
    Expired,
    #[error("authentication store failed: {0}")]
    Store(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Store(e.to_string())
    }
}

/// A new key: its record and the key itself, shown once.
pub struct NewKey {
    pub record: KeyRecord,
    pub key: String,
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Makes a key for `user` (not stored yet).
///
/// # Errors
/// The operating system's random source failing.
pub fn new_key(user: &str, label: Option<String>, admin: bool) -> Result<NewKey, String> {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| e.to_string())?;
    getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
    let id = hex::encode(id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Ok(NewKey {
        key: format!("vg_{id}_{secret}"),
        record: KeyRecord {
            id,
            user_id: user.into(),
            label,
            secret_hash: hash_secret(&secret),
            admin,
            created_at: now_ms(),
            revoked_at: None,
        },
    })
}

/// Splits `vg_ID_SECRET`.
fn parse_key(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("vg_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((id, secret))
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

/// Checks presented tokens. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn KeyStore>,
    jwt: Option<Arc<jsonwebtoken::DecodingKey>>,
    /// Set once authentication is on; it never turns off while the server runs.
    on: Arc<AtomicBool>,
}

impl Authenticator {
    /// # Errors
    /// The store failing to say whether keys exist.
    pub async fn new(cfg: &AuthConfig, store: Arc<dyn KeyStore>) -> Result<Self, StoreError> {
        let on = cfg.enabled || cfg.jwt_secret.is_some() || store.keys_exist().await?;
        Ok(Authenticator {
            jwt: cfg
                .jwt_secret
                .as_ref()
                .map(|s| Arc::new(jsonwebtoken::DecodingKey::from_secret(s.as_bytes()))),
            store,
            on: Arc::new(AtomicBool::new(on)),
        })
    }

    /// Whether requests need a key. Re-reads the store while off, so that the first
    /// `voxgate keys create` takes effect on a running server.
    pub async fn is_on(&self) -> bool {
        if self.on.load(Ordering::Relaxed) {
            return true;
        }
        if matches!(self.store.keys_exist().await, Ok(true)) {
            self.on.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Authenticates a request's token (`None`: none was presented).
    ///
    /// # Errors
    /// [`AuthError`]: missing, unknown, revoked, badly signed or expired.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        if !self.is_on().await {
            return Ok(Principal::local());
        }
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(AuthError::Missing);
        };
        if let Some((id, secret)) = parse_key(token) {
            let Some(k) = self.store.key(id).await? else {
                return Err(AuthError::Invalid);
            };
            let ok: bool = k
                .secret_hash
                .as_bytes()
                .ct_eq(hash_secret(secret).as_bytes())
                .into();
            if !ok || k.revoked_at.is_some() {
                return Err(AuthError::Invalid);
            }
            return Ok(Principal {
                user: k.user_id,
                admin: k.admin,
            });
        }
        if let (Some(key), 3) = (&self.jwt, token.split('.').count()) {
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            v.set_required_spec_claims(&["exp", "sub"]);
            v.leeway = 0;
            return match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(d) if !d.claims.sub.is_empty() => Ok(Principal {
                    user: d.claims.sub,
                    admin: false,
                }),
                Ok(_) => Err(AuthError::Invalid),
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                    _ => Err(AuthError::Invalid),
                },
            };
        }
        Err(AuthError::Invalid)
    }
}

/// The token of an HTTP request: `Authorization: Bearer T`, `X-API-Key: T`, or — on WebSocket
/// upgrades only, since browsers cannot set headers there — the `token` query parameter.
pub fn request_token(parts: &axum::http::request::Parts) -> Option<String> {
    let h = &parts.headers;
    if let Some(v) = h
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some((scheme, t)) = v.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(t.trim().to_string());
            }
        }
    }
    if let Some(v) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    let upgrade = h
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        if let Some(q) = parts.uri.query() {
            return url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_hash() {
        let k = new_key("alice", None, false).unwrap();
        let (id, secret) = parse_key(&k.key).unwrap();
        assert_eq!(id, k.record.id);
        assert_eq!(hash_secret(secret), k.record.secret_hash);
        assert!(parse_key("vg_zz_x").is_none());
        assert!(parse_key("Bearer").is_none());
        assert_ne!(k.key, new_key("alice", None, false).unwrap().key);
    }

    #[test]
    fn ownership() {
        let a = Principal {
            user: "a".into(),
            admin: false,
        };
        assert!(a.owns(Some("a")));
        assert!(!a.owns(Some("b")));
        assert!(!a.owns(None));
        assert!(Principal::local().owns(Some("b")));
    }
}
