//! The webhook loop (seed 004 "USER WEBHOOK"): a controller of a bot's call. Each caller
//! utterance (`asrFinal`) becomes `POST {webhook}` with
//! `{bot_id, call_id, user_text, llm_suggestion, history, timestamp}`; the reply
//! `{say, action, transfer_to}` is spoken (streaming TTS, barge-in on) and its `action` done:
//! `continue`, `hangup` (once `say` has been heard), `transfer` (to `transfer_to`, or the bot's).
//!
//! Rules (seed 004 and the README's webhook contract):
//! - The webhook has `bots.webhook_timeout_ms` (3 s) per turn, retries included. A timeout (408),
//!   a non-2xx answer (its status) or an answer without `say` (502) is an error: the bot says
//!   `bots.apology`, the turn is stored with the error, and the call goes on.
//! - A connection failure or a 5xx is retried (twice, 100 and 300 ms later) within the time with
//!   the same `Idempotency-Key` (`CALLID-TURN`), so the webhook can drop duplicates.
//! - Every request is signed: `X-Voxgate-Timestamp` (Unix seconds) and `X-Voxgate-Signature:
//!   sha256=HEX`, the HMAC-SHA256 of `TIMESTAMP.BODY` with the bot's secret.
//! - At most `bots.webhook_rate_per_sec` (5) requests per second per bot; utterances that come
//!   while a request is in flight or a token is awaited are merged into the next turn, in order,
//!   never dropped.
//! - Every turn (user text, suggestion, reply, action, webhook latency, error) is stored.

use super::llm::{self, Turn};
use super::{BotService, Voice};
use crate::store::{BotRecord, BotStore, TurnRecord};
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use voxgate_call::{
    AnswerOptions, CallCommand, CallHandle, EventKind, MediaOptions, Subscription, TtsRequest,
};

/// Extra time a turn still in flight at hang-up is waited for, so that it is stored.
const LAST_TURN_GRACE: Duration = Duration::from_secs(1);

/// The signature header value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A webhook's reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub say: String,
    /// `continue`, `hangup` or `transfer`.
    pub action: String,
    pub transfer_to: Option<String>,
    /// A problem with an otherwise usable reply (an unknown action).
    pub warning: Option<String>,
}

/// Reads a webhook's 2xx body.
///
/// # Errors
/// `(502, why)` when it is not a JSON object with a non-empty string `say`.
pub fn parse_reply(body: &[u8]) -> Result<Reply, (u16, String)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (502, format!("the webhook's answer is not JSON: {e}")))?;
    let say = v
        .get("say")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or((502, "the webhook's answer has no `say`".to_string()))?
        .to_string();
    let mut warning = None;
    let action = match v.get("action").and_then(Value::as_str) {
        None => "continue".to_string(),
        Some(a @ ("continue" | "hangup" | "transfer")) => a.to_string(),
        Some(other) => {
            warning = Some(format!("unknown action `{other}`: treated as continue"));
            "continue".to_string()
        }
    };
    let transfer_to = v
        .get("transfer_to")
        .and_then(Value::as_str)
        .map(str::to_string)
        .filter(|t| !t.trim().is_empty());
    Ok(Reply {
        say,
        action,
        transfer_to,
        warning,
    })
}

/// What one turn needs, detached from the controller.
struct TurnJob {
    http: reqwest::Client,
    llm: crate::llm::LlmClient,
    bot: BotRecord,
    call_id: String,
    index: i64,
    history: Vec<Turn>,
    user_text: String,
    timeout: Duration,
}

struct TurnOutcome {
    index: i64,
    user_text: String,
    suggestion: Option<String>,
    reply: Result<Reply, (u16, String)>,
    /// `None` when no request was made.
    webhook_ms: Option<i64>,
}

async fn run_turn(j: TurnJob) -> TurnOutcome {
    let suggestion = llm::suggest(
        &j.llm,
        &j.bot.goal,
        j.bot.context.as_deref(),
        &j.history,
        &j.user_text,
    )
    .await;
    let body = json!({
        "bot_id": j.bot.id,
        "call_id": j.call_id,
        "user_text": j.user_text,
        "llm_suggestion": suggestion,
        "history": j.history,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let key = format!("{}-{}", j.call_id, j.index);
    let started = Instant::now();
    let deadline = started + j.timeout;
    let mut backoff = [100u64, 300].into_iter();
    let reply = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err((408, "the webhook did not answer in time".to_string()));
        }
        let ts = chrono::Utc::now().timestamp();
        let attempt = j
            .http
            .post(&j.bot.webhook)
            .timeout(left)
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .header("x-voxgate-timestamp", ts.to_string())
            .header("x-voxgate-signature", signature(&j.bot.secret, ts, &body))
            .body(body.clone())
            .send()
            .await;
        let retry = match attempt {
            Ok(resp) if resp.status().is_success() => {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, resp.bytes()).await {
                    Ok(Ok(b)) => break parse_reply(&b),
                    Ok(Err(e)) => break Err((502, format!("reading the webhook's answer: {e}"))),
                    Err(_) => break Err((408, "the webhook did not answer in time".into())),
                }
            }
            Ok(resp) if resp.status().is_server_error() => (
                resp.status().as_u16(),
                format!("the webhook answered {}", resp.status()),
            ),
            Ok(resp) => {
                break Err((
                    resp.status().as_u16(),
                    format!("the webhook answered {}", resp.status()),
                ))
            }
            Err(e) if e.is_timeout() => {
                break Err((408, "the webhook did not answer in time".into()))
            }
            Err(e) if e.is_connect() => (502, format!("cannot reach the webhook: {e}")),
            Err(e) => break Err((502, format!("webhook request failed: {e}"))),
        };
        match backoff.next() {
            Some(ms) if Instant::now() + Duration::from_millis(ms) < deadline => {
                tracing::debug!(call = %j.call_id, "retrying the webhook: {}", retry.1);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            _ => break Err(retry),
        }
    };
    let elapsed = started.elapsed();
    metrics::histogram!("voxgate_webhook_seconds").record(elapsed.as_secs_f64());
    TurnOutcome {
        index: j.index,
        user_text: j.user_text,
        suggestion,
        reply,
        webhook_ms: Some(elapsed.as_millis() as i64),
    }
}

/// What the bot does once a reply's `say` has been played.
#[derive(Debug, Clone, PartialEq)]
enum After {
    Hangup,
    Transfer(String),
}

/// Runs one bot call: answers, then turns utterances into webhook requests and replies.
pub struct BotController {
    svc: Arc<BotService>,
    bot: BotRecord,
    call: CallHandle,
    events: Subscription,
    refused: bool,
}

impl BotController {
    pub fn new(
        svc: Arc<BotService>,
        bot: BotRecord,
        call: CallHandle,
        events: Subscription,
        refused: bool,
    ) -> Self {
        BotController {
            svc,
            bot,
            call,
            events,
            refused,
        }
    }

    async fn say(&self, text: &str, play_id: String, voice: &Voice, auto_hangup: bool) {
        let _ = self
            .call
            .command(CallCommand::Tts(TtsRequest {
                text: text.to_string(),
                speaker: voice.speaker.clone(),
                play_id: Some(play_id),
                auto_hangup,
                provider: Some(voice.provider.clone()),
                ..Default::default()
            }))
            .await;
    }

    /// Waits for the call to be answered; `false` when it ended first.
    async fn answered(&mut self) -> bool {
        while let Some(e) = self.events.recv().await {
            match e.kind {
                EventKind::Answer { .. } => return true,
                EventKind::Hangup { .. } => return false,
                EventKind::Error { sender, error, .. } => {
                    tracing::debug!(call = self.call.id(), sender, "{error}")
                }
                _ => {}
            }
        }
        false
    }

    pub async fn run(mut self) {
        let voice = self
            .svc
            .voice(self.bot.voice.as_deref())
            .unwrap_or_else(|e| {
                tracing::warn!(bot = self.bot.id, "{e}; using the default voice");
                self.svc.voice(None).expect("the default voice")
            });
        let answer = AnswerOptions {
            callee: Some(self.bot.number.clone()),
            media: MediaOptions {
                tts_provider: Some(voice.provider.clone()),
                tts_speaker: voice.speaker.clone(),
                // A webhook turn starts from a final transcript: no partials.
                partials: false,
                adaptive_endpointing: true,
                min_silence_ms: None,
                ..MediaOptions::default()
            },
            ..AnswerOptions::default()
        };
        let _ = self.call.command(CallCommand::Answer(answer)).await;
        if !self.answered().await {
            return;
        }
        if self.refused {
            let refusal = self.svc.config.bots.refusal.clone();
            self.say(&refusal, "refusal".into(), &voice, true).await;
            while let Some(e) = self.events.recv().await {
                match e.kind {
                    EventKind::Hangup { .. } => break,
                    // Interrupted or not, the call ends.
                    EventKind::Interruption { .. } => {
                        let _ = self
                            .call
                            .command(CallCommand::Hangup {
                                reason: Some("limit".into()),
                                initiator: Some("system".into()),
                                headers: Vec::new(),
                            })
                            .await;
                    }
                    _ => {}
                }
            }
            return;
        }
        if let Some(g) = self.bot.greeting.clone() {
            self.say(&g, "greeting".into(), &voice, false).await;
        }
        let timeout = Duration::from_millis(self.svc.config.bots.webhook_timeout_ms);
        let mut history: Vec<Turn> = Vec::new();
        let mut pending: Vec<String> = Vec::new();
        let mut in_flight: Option<JoinHandle<TurnOutcome>> = None;
        let mut next_index = 1i64;
        let mut after: HashMap<String, After> = HashMap::new();
        loop {
            // Start a turn when there is something to say, nothing in flight, and a token.
            let mut token_wait = None;
            if in_flight.is_none() && !pending.is_empty() {
                match self.svc.take_webhook_token(&self.bot.id) {
                    Ok(()) => {
                        let job = TurnJob {
                            http: self.svc.http.clone(),
                            llm: self.svc.llm.client(),
                            bot: self.bot.clone(),
                            call_id: self.call.id().to_string(),
                            index: next_index,
                            history: history.clone(),
                            user_text: std::mem::take(&mut pending).join(" "),
                            timeout,
                        };
                        next_index += 1;
                        in_flight = Some(tokio::spawn(run_turn(job)));
                    }
                    Err(wait) => token_wait = Some(wait),
                }
            }
            tokio::select! {
                ev = self.events.recv() => {
                    let Some(ev) = ev else { break };
                    match ev.kind {
                        EventKind::AsrFinal { text, .. } if !text.trim().is_empty() => {
                            pending.push(text.trim().to_string())
                        }
                        EventKind::TrackEnd { track_id, .. } => {
                            if let Some(After::Transfer(t)) = after.remove(&track_id) {
                                let _ = self.call.command(CallCommand::Transfer(t)).await;
                            }
                        }
                        EventKind::Interruption { track_id, .. } => {
                            // The caller talked over the last words: the action still happens.
                            match after.remove(&track_id) {
                                Some(After::Hangup) => {
                                    let _ = self.call.command(CallCommand::Hangup {
                                        reason: Some("hangup".into()),
                                        initiator: Some("bot".into()),
                                        headers: Vec::new(),
                                    }).await;
                                }
                                Some(After::Transfer(t)) => {
                                    let _ = self.call.command(CallCommand::Transfer(t)).await;
                                }
                                None => {}
                            }
                        }
                        EventKind::Error { sender, error, .. } => {
                            tracing::debug!(call = self.call.id(), sender, "{error}")
                        }
                        EventKind::Hangup { .. } => break,
                        _ => {}
                    }
                }
                r = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    let Ok(o) = r else { continue };
                    let (spoken, action, error) = match &o.reply {
                        Ok(reply) => {
                            let play_id = format!("turn-{}", o.index);
                            let mut error = reply.warning.clone();
                            let mut action = reply.action.clone();
                            match reply.action.as_str() {
                                "hangup" => {
                                    after.insert(play_id.clone(), After::Hangup);
                                }
                                "transfer" => match reply.transfer_to.clone().or(self.bot.transfer_to.clone()) {
                                    Some(t) => {
                                        after.insert(play_id.clone(), After::Transfer(t));
                                    }
                                    None => {
                                        action = "continue".into();
                                        error = Some("`action: transfer` without `transfer_to` (and the bot has no transfer target): treated as continue".into());
                                    }
                                },
                                _ => {}
                            }
                            self.say(&reply.say, play_id, &voice, action == "hangup").await;
                            (reply.say.clone(), action, error.map(|e| (None, e)))
                        }
                        Err((code, why)) => {
                            tracing::warn!(call = self.call.id(), bot = self.bot.id, code, "webhook turn failed: {why}");
                            let apology = self.svc.config.bots.apology.clone();
                            self.say(&apology, format!("turn-{}", o.index), &voice, false).await;
                            (apology, "continue".to_string(), Some((Some(*code), why.clone())))
                        }
                    };
                    history.push(Turn { role: "user".into(), content: o.user_text.clone() });
                    history.push(Turn { role: "bot".into(), content: spoken.clone() });
                    self.store_turn(&o, Some(spoken), Some(action), error).await;
                }
                _ = tokio::time::sleep(token_wait.unwrap_or_default()), if token_wait.is_some() => {}
            }
        }
        // The call ended with a turn in flight: it is still stored (the caller hears nothing).
        if let Some(h) = in_flight {
            if let Ok(Ok(o)) = tokio::time::timeout(timeout + LAST_TURN_GRACE, h).await {
                let (reply, action, error) = match &o.reply {
                    Ok(r) => (Some(r.say.clone()), Some(r.action.clone()), None),
                    Err((c, e)) => (None, None, Some((Some(*c), e.clone()))),
                };
                self.store_turn(&o, reply, action, error).await;
            }
        }
        if !pending.is_empty() {
            // Said after the last request: stored as a turn without a reply.
            let o = TurnOutcome {
                index: next_index,
                user_text: pending.join(" "),
                suggestion: None,
                reply: Err((499, "the call ended before this was sent".into())),
                webhook_ms: None,
            };
            self.store_turn(
                &o,
                None,
                None,
                Some((None, "the call ended before this was sent".into())),
            )
            .await;
        }
    }

    async fn store_turn(
        &self,
        o: &TurnOutcome,
        reply: Option<String>,
        action: Option<String>,
        error: Option<(Option<u16>, String)>,
    ) {
        let t = TurnRecord {
            call_id: self.call.id().to_string(),
            index: o.index,
            bot_id: self.bot.id.clone(),
            user_text: o.user_text.clone(),
            llm_suggestion: o.suggestion.clone(),
            reply,
            action,
            webhook_ms: o.webhook_ms,
            error_code: error.as_ref().and_then(|e| e.0).map(i64::from),
            error: error.map(|e| e.1),
            created_at: voxgate_call::now_ms(),
        };
        if let Err(e) = self.svc.store.turn_added(&t).await {
            tracing::error!(call = self.call.id(), "storing turn {}: {e}", t.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_strictly() {
        assert_eq!(
            parse_reply(br#"{"say":"Got it! Name please?","action":"continue"}"#),
            Ok(Reply {
                say: "Got it! Name please?".into(),
                action: "continue".into(),
                transfer_to: None,
                warning: None
            })
        );
        let r = parse_reply(br#"{"say":"Bye","action":"hangup"}"#).unwrap();
        assert_eq!(r.action, "hangup");
        let r =
            parse_reply(br#"{"say":"One moment","action":"transfer","transfer_to":"+15550100"}"#)
                .unwrap();
        assert_eq!(r.transfer_to.as_deref(), Some("+15550100"));
        let r = parse_reply(br#"{"say":"Hm","action":"dance"}"#).unwrap();
        assert_eq!(r.action, "continue");
        assert!(r.warning.unwrap().contains("dance"));
        assert_eq!(parse_reply(br#"{"action":"continue"}"#).unwrap_err().0, 502);
        assert_eq!(parse_reply(br#"{"say":"  "}"#).unwrap_err().0, 502);
        assert_eq!(parse_reply(b"<html>").unwrap_err().0, 502);
    }

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // Reference value computed independently:
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"whsec_test",b"1700000000.{\"a\":1}",hashlib.sha256).hexdigest())'
        assert_eq!(
            signature("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "sha256=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }
}
