//! Digest-authenticated SIP devices (RFC 3261 §22, §10; RFC 8760 SHA-256 digest).
//!
//! With `[[sip.users]]` configured, softphones and desk phones may REGISTER with voxgate and
//! call in from any address: a request without credentials gets 401 with a challenge per
//! configured algorithm (`sip.digest_algorithms`, most preferred first: RFC 8760 §2.4; MD5
//! first by default, since many clients — SIPp 3.6 among them — read only the first), a wrong
//! password or unknown user 403 — and no call state either way. Nonces are stateless (a timestamp and its HMAC under a
//! per-process key) and live [`NONCE_SECS`]; a stale one is challenged again with `stale=true`.
//! Trunks and `sip.allow` addresses keep calling in without credentials.
//!
//! Users come from `[[sip.users]]` (passwords in the configuration) and from the store
//! (`voxgate sip-users add`, which keeps only the HA1 values of RFC 7616 §3.4.2 and is read at
//! each authentication, so accounts added or removed while the server runs count at once).

use crate::store::SipUserStore;
use hmac::{KeyInit, Mac};
use rsipstack::dialog::authenticate::verify_digest;
use rsipstack::sip::typed::Authorization;
use rsipstack::sip::{Header, Method, Request};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long "the store has no SIP users" is believed before asking again.
pub const STORE_RECHECK: Duration = Duration::from_secs(2);
/// How long a nonce may be used, seconds.
pub const NONCE_SECS: u64 = 300;
/// Registration lifetime bounds, seconds (`Expires`, RFC 3261 §10.3 step 7; 423 below the
/// minimum).
pub const MIN_EXPIRES: u32 = 60;
pub const MAX_EXPIRES: u32 = 3600;

/// What [`Registrar::authenticate`] found.
#[derive(Debug, PartialEq)]
pub enum Auth {
    /// Valid credentials of this user: (username, the tenant its calls belong to — the store
    /// account's `--user`; `None` for `[[sip.users]]`).
    User(String, Option<String>),
    /// No usable credentials: answer 401 with these `WWW-Authenticate` headers.
    Challenge(Vec<Header>),
    /// Unknown user or wrong password: answer 403 (the reason is for the log).
    Forbidden(&'static str),
}

/// One device's registration.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The Contact URI calls to the user are sent to.
    pub contact: String,
    pub expires: Instant,
}

/// The users from the configuration and their current registrations.
pub struct Registrar {
    realm: String,
    /// `MD5` / `SHA-256`, most preferred first.
    algorithms: Vec<String>,
    users: HashMap<String, String>,
    /// Accounts kept in the store (HA1 values only).
    store: Option<Arc<dyn SipUserStore>>,
    /// The store has had an account since we looked (cached once true).
    store_has_users: AtomicBool,
    /// When the store last had none (asked again after [`STORE_RECHECK`]).
    store_empty_at: Mutex<Option<Instant>>,
    key: [u8; 32],
    bindings: Mutex<HashMap<String, Binding>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Registrar {
    /// `users`: (username, password) pairs; `realm` names them in challenges; `algorithms`
    /// (`MD5`, `SHA-256`) are challenged in this order.
    pub fn new(
        realm: &str,
        algorithms: &[String],
        users: impl IntoIterator<Item = (String, String)>,
        store: Option<Arc<dyn SipUserStore>>,
    ) -> Registrar {
        Registrar {
            realm: realm.to_string(),
            algorithms: algorithms.to_vec(),
            users: users.into_iter().collect(),
            store,
            store_has_users: AtomicBool::new(false),
            store_empty_at: Mutex::new(None),
            key: {
                // 32 random octets (UUID v4s come from the OS's generator).
                let mut k = [0u8; 32];
                k[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
                k[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
                k
            },
            bindings: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, ts: u64) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("any key size");
        mac.update(&ts.to_be_bytes());
        hex::encode(&mac.finalize().into_bytes()[..12])
    }

    fn nonce(&self) -> String {
        let ts = now_secs();
        format!("{ts:x}{}", self.mac(ts))
    }

    /// `Some(true)` for a nonce we issued that is still fresh, `Some(false)` for ours but
    /// stale, `None` for one we never issued.
    fn nonce_fresh(&self, nonce: &str) -> Option<bool> {
        if nonce.len() <= 24 || !nonce.is_ascii() {
            return None;
        }
        let (ts, mac) = nonce.split_at(nonce.len() - 24);
        let ts = u64::from_str_radix(ts, 16).ok()?;
        let ok: bool = subtle_eq(mac.as_bytes(), self.mac(ts).as_bytes());
        ok.then(|| now_secs().saturating_sub(ts) <= NONCE_SECS)
    }

    fn challenge(&self, stale: bool) -> Vec<Header> {
        let nonce = self.nonce();
        let stale = if stale { ", stale=true" } else { "" };
        self.algorithms
            .iter()
            .map(|alg| {
                Header::WwwAuthenticate(
                    format!(
                        "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={alg}, qop=\"auth\"{stale}",
                        self.realm
                    )
                    .into(),
                )
            })
            .collect()
    }

    /// Whether there are SIP devices at all: `[[sip.users]]`, or accounts in the store. Without
    /// them REGISTER is not served (405) and INVITEs from outside `sip.allow` get 403.
    pub async fn active(&self) -> bool {
        if !self.users.is_empty() || self.store_has_users.load(Ordering::Relaxed) {
            return true;
        }
        let Some(store) = &self.store else {
            return false;
        };
        // A request flood must not become a query flood: "none" is believed for a while.
        let recent = self
            .store_empty_at
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() < STORE_RECHECK);
        if recent {
            return false;
        }
        let has = store.sip_users_exist().await.unwrap_or_else(|e| {
            tracing::warn!("SIP users in the store: {e}");
            false
        });
        if has {
            self.store_has_users.store(true, Ordering::Relaxed);
        } else if let Ok(mut t) = self.store_empty_at.lock() {
            *t = Some(Instant::now());
        }
        has
    }

    /// Checks a request's `Authorization` (RFC 3261 §22.4, RFC 7616 §3.4 with qop=auth or
    /// none; MD5 or SHA-256) against `[[sip.users]]`, then the store's accounts.
    pub async fn authenticate(&self, req: &Request) -> Auth {
        let raw = req.headers.iter().find_map(|h| match h {
            Header::Authorization(v) => Some(v.value().to_string()),
            _ => None,
        });
        let Some(raw) = raw else {
            return Auth::Challenge(self.challenge(false));
        };
        let Ok(auth) = Authorization::parse(&rsip_algorithm(&raw)) else {
            return Auth::Challenge(self.challenge(false));
        };
        let offered = auth.algorithm.map_or("MD5", |a| match a {
            rsipstack::sip::headers::auth::Algorithm::Md5 => "MD5",
            rsipstack::sip::headers::auth::Algorithm::Sha256 => "SHA-256",
            _ => "",
        });
        if auth.realm != self.realm || !self.algorithms.iter().any(|a| a == offered) {
            return Auth::Challenge(self.challenge(false));
        }
        let password = self.users.get(&auth.username).cloned();
        let mut tenant = None;
        let ha1 = match (&password, &self.store) {
            (None, Some(store)) => match store.sip_user(&auth.username).await {
                Ok(Some(u)) if u.realm == self.realm => {
                    tenant = Some(u.user_id);
                    Some(if offered == "SHA-256" {
                        u.ha1_sha256
                    } else {
                        u.ha1_md5
                    })
                }
                Ok(Some(_)) => return Auth::Forbidden("account made for another realm"),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!("SIP user lookup: {e}");
                    None
                }
            },
            _ => None,
        };
        if password.is_none() && ha1.is_none() {
            return Auth::Forbidden("unknown user");
        }
        match self.nonce_fresh(&auth.nonce) {
            None => return Auth::Challenge(self.challenge(false)),
            Some(false) => return Auth::Challenge(self.challenge(true)),
            Some(true) => {}
        }
        let ok = match (password, ha1) {
            (Some(p), _) => verify_digest(&auth, &p, &req.method, &raw),
            (None, Some(h)) => verify_with_ha1(&raw, &h, offered, &req.method),
            (None, None) => false,
        };
        if ok {
            Auth::User(auth.username, tenant)
        } else {
            Auth::Forbidden("wrong password")
        }
    }

    /// Applies an authenticated REGISTER of `user` (RFC 3261 §10.3): the answer's status and
    /// headers. The To user must be `user` (403 otherwise); `Contact: *` with `Expires: 0`
    /// removes the binding; an interval below [`MIN_EXPIRES`] gets 423 with `Min-Expires`.
    pub fn register(&self, req: &Request, user: &str) -> (u16, Vec<Header>) {
        let to_user = req
            .headers
            .iter()
            .find_map(|h| match h {
                Header::To(t) => Some(t.value().to_string()),
                _ => None,
            })
            .and_then(|t| {
                let uri = t
                    .split(['<', '>'])
                    .find(|p| p.contains("sip:"))?
                    .to_string();
                let user = uri.split_once(':')?.1.split('@').next()?.to_string();
                Some(user)
            });
        if to_user.as_deref() != Some(user) {
            return (403, vec![]);
        }
        let contacts: Vec<String> = req
            .headers
            .iter()
            .filter(|h| matches!(h, Header::Contact(_)))
            .map(|h| h.value().trim().to_string())
            .collect();
        let header_expires = req.headers.iter().find_map(|h| match h {
            Header::Expires(v) => v.value().trim().parse::<u32>().ok(),
            _ => None,
        });
        let mut bindings = self.bindings.lock().expect("lock");
        if contacts.iter().any(|c| c == "*") {
            if header_expires != Some(0) || contacts.len() != 1 {
                return (400, vec![]);
            }
            bindings.remove(user);
            return (200, vec![]);
        }
        if let Some(c) = contacts.first() {
            let param_expires = c.rsplit_once('>').and_then(|(_, params)| {
                params.split(';').find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("expires")
                        .then(|| v.trim().parse::<u32>().ok())?
                })
            });
            let expires = param_expires.or(header_expires).unwrap_or(MAX_EXPIRES);
            if expires == 0 {
                bindings.remove(user);
                return (200, vec![]);
            }
            if expires < MIN_EXPIRES {
                return (
                    423,
                    vec![Header::Other("Min-Expires".into(), MIN_EXPIRES.to_string())],
                );
            }
            let expires = expires.min(MAX_EXPIRES);
            let uri = super::guard::addr_uri(c).to_string();
            bindings.insert(
                user.to_string(),
                Binding {
                    contact: uri,
                    expires: Instant::now() + Duration::from_secs(u64::from(expires)),
                },
            );
        }
        // The current bindings (§10.3 step 8).
        let headers = bindings
            .get(user)
            .filter(|b| b.expires > Instant::now())
            .map(|b| {
                let left = b
                    .expires
                    .saturating_duration_since(Instant::now())
                    .as_secs();
                vec![Header::Contact(
                    format!("<{}>;expires={left}", b.contact).into(),
                )]
            })
            .unwrap_or_default();
        (200, headers)
    }

    /// Where `user` is registered now (its Contact URI), if anywhere.
    pub fn contact_of(&self, user: &str) -> Option<String> {
        let mut bindings = self.bindings.lock().expect("lock");
        bindings.retain(|_, b| b.expires > Instant::now());
        bindings.get(user).map(|b| b.contact.clone())
    }
}

/// `algorithm=SHA-256` (RFC 7616 §6.1's token, RFC 8760) spelled as `rsipstack`'s parser
/// knows it (`SHA256`); the digest is the same.
fn rsip_algorithm(raw: &str) -> String {
    let lower = raw.to_ascii_lowercase();
    let Some(at) = lower.find("algorithm") else {
        return raw.to_string();
    };
    let rest = &lower[at..];
    let Some(eq) = rest.find('=') else {
        return raw.to_string();
    };
    let start = at + eq + 1;
    let value_end = lower[start..].find(',').map_or(lower.len(), |e| start + e);
    let value = raw[start..value_end]
        .replace("SHA-", "SHA")
        .replace("sha-", "sha");
    format!("{}{value}{}", &raw[..start], &raw[value_end..])
}

/// Constant-time equality of two byte strings of equal length.
/// `H(text)` in lower-case hex for a digest algorithm (`MD5` or `SHA-256`).
fn digest_hex(algorithm: &str, text: &str) -> String {
    use sha2::Digest;
    if algorithm == "SHA-256" {
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    } else {
        hex::encode(md5::Md5::digest(text.as_bytes()))
    }
}

/// The HA1 of RFC 7616 §3.4.2, `H(username:realm:password)`, as stored for a SIP user.
pub fn ha1(algorithm: &str, username: &str, realm: &str, password: &str) -> String {
    digest_hex(algorithm, &format!("{username}:{realm}:{password}"))
}

/// A parameter of an `Authorization` value as the client wrote it (quoted or token).
fn auth_param<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = raw.split_once(' ').map(|(_, r)| r).unwrap_or(raw);
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(value);
        }
        rest = tail.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    None
}

/// Checks the `response` of an `Authorization` value against a stored HA1 (RFC 7616 §3.4.1:
/// with qop=auth `H(HA1:nonce:nc:cnonce:qop:HA2)`, without qop `H(HA1:nonce:HA2)`; HA2 =
/// `H(method:digest-uri)`), with the values exactly as the client sent them.
pub fn verify_with_ha1(raw: &str, ha1: &str, algorithm: &str, method: &Method) -> bool {
    let (Some(nonce), Some(uri), Some(response)) = (
        auth_param(raw, "nonce"),
        auth_param(raw, "uri"),
        auth_param(raw, "response"),
    ) else {
        return false;
    };
    let ha2 = digest_hex(algorithm, &format!("{method}:{uri}"));
    let expected = match auth_param(raw, "qop") {
        Some(qop) if qop.eq_ignore_ascii_case("auth") => {
            let (Some(nc), Some(cnonce)) = (auth_param(raw, "nc"), auth_param(raw, "cnonce"))
            else {
                return false;
            };
            digest_hex(
                algorithm,
                &format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"),
            )
        }
        Some(_) => return false,
        None => digest_hex(algorithm, &format!("{ha1}:{nonce}:{ha2}")),
    };
    subtle_eq(
        expected.as_bytes(),
        response.to_ascii_lowercase().as_bytes(),
    )
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `method` may be authenticated here: REGISTER and INVITE.
pub fn authenticated_method(method: &Method) -> bool {
    matches!(method, Method::Register | Method::Invite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sha_256_token_is_read() {
        assert_eq!(
            rsip_algorithm("Digest username=\"a\", algorithm=SHA-256, qop=auth"),
            "Digest username=\"a\", algorithm=SHA256, qop=auth"
        );
        assert_eq!(
            rsip_algorithm("Digest algorithm=\"sha-256-sess\""),
            "Digest algorithm=\"sha256-sess\""
        );
        assert_eq!(
            rsip_algorithm("Digest algorithm=MD5"),
            "Digest algorithm=MD5"
        );
        assert_eq!(
            rsip_algorithm("Digest username=\"a\""),
            "Digest username=\"a\""
        );
    }

    #[test]
    fn nonces_are_ours_and_age() {
        let r = Registrar::new("voxgate", &[], [("a".to_string(), "b".to_string())], None);
        let n = r.nonce();
        assert_eq!(r.nonce_fresh(&n), Some(true));
        let old = now_secs() - NONCE_SECS - 5;
        assert_eq!(
            r.nonce_fresh(&format!("{old:x}{}", r.mac(old))),
            Some(false)
        );
        let mut forged = n.clone();
        forged.replace_range(n.len() - 1.., if n.ends_with('0') { "1" } else { "0" });
        assert_eq!(r.nonce_fresh(&forged), None);
        assert_eq!(r.nonce_fresh("short"), None);
    }
}
