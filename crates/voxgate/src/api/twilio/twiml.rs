//! `POST /voice?bot_id=ID` (seed 004): Twilio asks what to do with a call to a bot's number.
//! voxgate answers TwiML that connects the call to `wss://HOST/stream/ID` (Media Streams), then
//! `<Redirect>`s to `/voice/next`, which Twilio requests when the stream ends: it `<Dial>`s the
//! transfer target when the bot transferred the call, and hangs up otherwise. (Seed 004's example
//! puts a `<Say>` after `<Connect>`; it would only play after the bot hung up, so voxgate does
//! not.)
//!
//! With `[twilio] auth_token`, every request must carry a valid `X-Twilio-Signature` (Twilio's
//! documented scheme: base64 HMAC-SHA1, keyed with the auth token, of the full URL followed by
//! each POST parameter's name and value, sorted by name); others get 403. The URL is
//! `public_url` + the request's path and query, so `public_url` must be the address Twilio
//! calls.

use crate::api::AppState;
use crate::store::BotStore;
use axum::extract::{OriginalUri, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use std::collections::BTreeMap;

/// Query of `/voice` and `/voice/next`.
#[derive(Debug, serde::Deserialize)]
pub struct VoiceQuery {
    pub bot_id: Option<String>,
}

/// Twilio's request signature for `url` and the POST `params` (base64 HMAC-SHA1).
pub fn twilio_signature(auth_token: &str, url: &str, params: &BTreeMap<String, String>) -> String {
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (k, v) in params {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks `X-Twilio-Signature` in constant time.
pub fn signature_ok(
    auth_token: &str,
    url: &str,
    params: &BTreeMap<String, String>,
    header: Option<&str>,
) -> bool {
    let Some(given) = header.and_then(|h| base64::engine::general_purpose::STANDARD.decode(h).ok())
    else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (k, v) in params {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac.verify_slice(&given).is_ok()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn twiml(body: String) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/xml; charset=utf-8")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>{body}</Response>\n"),
    )
        .into_response()
}

fn say_and_hang_up(text: &str) -> Response {
    twiml(format!("<Say>{}</Say><Hangup/>", xml_escape(text)))
}

/// 403 unless the request is signed by Twilio (when an auth token is configured).
#[allow(clippy::result_large_err)] // the error is the HTTP answer, returned once
fn check_signature(
    st: &AppState,
    uri: &OriginalUri,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Result<(), Response> {
    let Some(token) = st.config.twilio.auth_token.as_deref() else {
        return Ok(());
    };
    let url = format!(
        "{}{}",
        st.public_url,
        uri.0.path_and_query().map_or("/", |p| p.as_str())
    );
    let header = headers
        .get("x-twilio-signature")
        .and_then(|h| h.to_str().ok());
    if signature_ok(token, &url, params, header) {
        Ok(())
    } else {
        tracing::warn!(%url, "refused a Twilio request: bad or missing X-Twilio-Signature");
        Err(crate::api::json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "invalid X-Twilio-Signature",
        ))
    }
}

/// `POST /voice?bot_id=ID`: TwiML for a call to the bot's number.
#[utoipa::path(post, path = "/voice", operation_id = "voice", tag = "bots (seed 004)", security(()),
    params(("bot_id" = Option<String>, Query, description = "The bot the call is for")),
    request_body(content = std::collections::BTreeMap<String, String>, content_type = "application/x-www-form-urlencoded",
        description = "Twilio's voice webhook parameters (CallSid, From, To, ...)"),
    responses(
        (status = 200, description = "TwiML: `<Connect><Stream>` to the bot, or a spoken refusal", body = String, content_type = "text/xml"),
        (status = 400, description = "A body that is not a form", body = String, content_type = "text/plain"),
        (status = 403, description = "Bad X-Twilio-Signature (when twilio.auth_token is set)", body = crate::api::openapi::ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = String, content_type = "text/plain"),
        (status = 422, description = "A form that cannot be read", body = String, content_type = "text/plain"),
    ))]
pub async fn voice(
    State(st): State<AppState>,
    Query(q): Query<VoiceQuery>,
    uri: OriginalUri,
    headers: HeaderMap,
    Form(params): Form<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = check_signature(&st, &uri, &headers, &params) {
        return r;
    }
    let bots = &st.bots;
    let bot = match q.bot_id.as_deref() {
        Some(id) => bots.store.bot(id).await.ok().flatten(),
        None => None,
    };
    let Some(bot) = bot else {
        tracing::info!(bot = ?q.bot_id, call = ?params.get("CallSid"), "TwiML for an unknown bot");
        return say_and_hang_up("Sorry, this number is not in service. Goodbye.");
    };
    if bots.calls_today(&bot.id).await >= bots.config.bots.calls_per_day as i64 {
        return say_and_hang_up(&bots.config.bots.refusal);
    }
    let ws = if let Some(rest) = st.public_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        format!("ws://{}", st.public_url.trim_start_matches("http://"))
    };
    let stream = xml_escape(&format!("{ws}/stream/{}", bot.id));
    let next = xml_escape(&format!("{}/voice/next?bot_id={}", st.public_url, bot.id));
    twiml(format!(
        "<Connect><Stream url=\"{stream}\"><Parameter name=\"bot_id\" value=\"{}\"/></Stream></Connect><Redirect method=\"POST\">{next}</Redirect>",
        xml_escape(&bot.id)
    ))
}

/// `POST /voice/next`: where Twilio goes when the stream ended: `<Dial>` the transfer target the
/// bot chose, or hang up.
#[utoipa::path(post, path = "/voice/next", operation_id = "voice_next", tag = "bots (seed 004)", security(()),
    request_body(content = std::collections::BTreeMap<String, String>, content_type = "application/x-www-form-urlencoded",
        description = "Twilio's `<Redirect>` parameters (CallSid, ...)"),
    responses(
        (status = 200, description = "TwiML: `<Dial>` the transfer target, or `<Hangup/>`", body = String, content_type = "text/xml"),
        (status = 400, description = "A body that is not a form", body = String, content_type = "text/plain"),
        (status = 403, description = "Bad X-Twilio-Signature (when twilio.auth_token is set)", body = crate::api::openapi::ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = String, content_type = "text/plain"),
        (status = 422, description = "A form that cannot be read", body = String, content_type = "text/plain"),
    ))]
pub async fn voice_next(
    State(st): State<AppState>,
    uri: OriginalUri,
    headers: HeaderMap,
    Form(params): Form<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = check_signature(&st, &uri, &headers, &params) {
        return r;
    }
    let target = params
        .get("CallSid")
        .and_then(|sid| st.bots.take_transfer(sid));
    match target {
        Some(t) if t.starts_with("sip:") || t.starts_with("sips:") => {
            twiml(format!("<Dial><Sip>{}</Sip></Dial>", xml_escape(&t)))
        }
        Some(t) => twiml(format!("<Dial>{}</Dial>", xml_escape(&t))),
        None => twiml("<Hangup/>".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in Twilio's security documentation
    /// (<https://www.twilio.com/docs/usage/security#validating-requests>).
    #[test]
    fn twilio_documentation_example() {
        let params: BTreeMap<String, String> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let sig = twilio_signature("12345", url, &params);
        assert_eq!(sig, "GvWf1cFY/Q7PnoempGyD5oXAezc=");
        assert!(signature_ok("12345", url, &params, Some(&sig)));
        assert!(!signature_ok("12346", url, &params, Some(&sig)));
        assert!(!signature_ok("12345", url, &params, Some("bm9wZQ==")));
        assert!(!signature_ok("12345", url, &params, None));
    }
}
