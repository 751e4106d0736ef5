//! Seed 004 bots (`004_3089664f3a1e9cc1.txt`, "CallBot Studio"): a bot has a phone number and a
//! webhook; every caller utterance becomes a webhook request whose reply the bot speaks.
//!
//! - [`BotService`] holds what every bot call shares: the store, the call core, voices, limits
//!   (bots per user, calls per bot per day, webhook requests per second per bot) and the
//!   transfers waiting for Twilio's `<Redirect>`.
//! - A bot call is a call of the core whose controller is [`webhook::BotController`], and whose
//!   leg is a Twilio Media Stream (`/stream/{bot_id}`) or an inbound SIP call to the bot's number
//!   ([`BotRouter`]).

pub mod llm;
pub mod webhook;

use crate::config::Config;
use crate::sip::InboundRouter;
use crate::store::sqlite::SqliteStore;
use crate::store::{BotRecord, BotStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use voxgate_call::{CallCore, CallHandle, CallSpec, PendingLeg, StartError};

/// Cloud voices named by seed 004. voxgate has no cloud TTS adapter yet, so they speak with the
/// offline default voice (and say so in `effective_voice`).
const CLOUD_PROVIDERS: [&str; 3] = ["elevenlabs", "polly", "playht"];
/// flite's built-in voices.
const FLITE_VOICES: [&str; 5] = ["slt", "kal", "kal16", "awb", "rms"];

/// The voice a bot speaks with.
#[derive(Debug, Clone, PartialEq)]
pub struct Voice {
    /// TTS engine (`piper`, `flite`).
    pub provider: String,
    pub speaker: Option<String>,
    /// `provider:speaker` of what actually speaks.
    pub effective: String,
}

/// A token bucket: `rate` tokens per second, bursts of `rate`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `rate` tokens at `now`.
    pub fn new(rate: f64, now: Instant) -> Self {
        Bucket {
            tokens: rate,
            at: now,
        }
    }

    /// Takes a token at `now`, or says how long until one is there.
    pub fn take(&mut self, rate: f64, now: Instant) -> Result<(), Duration> {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// What every bot call shares.
pub struct BotService {
    pub store: Arc<SqliteStore>,
    pub core: CallCore,
    pub config: Arc<Config>,
    pub http: reqwest::Client,
    /// The LLM of `llm_suggestion`.
    pub llm: crate::llm::Llm,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Twilio CallSid → where `action: transfer` sends the caller (read by `/voice/next`).
    transfers: Mutex<HashMap<String, String>>,
}

/// The UTC day, the period of the daily limits.
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// Seconds until the next UTC day (`Retry-After` of the daily limit).
pub fn secs_to_tomorrow() -> u64 {
    let now = chrono::Utc::now();
    let tomorrow = (now.date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(now);
    (tomorrow - now).num_seconds().max(1) as u64
}

fn calls_scope(bot_id: &str) -> String {
    format!("bot:{bot_id}:calls")
}

impl BotService {
    pub fn new(
        store: Arc<SqliteStore>,
        core: CallCore,
        config: Arc<Config>,
        http: reqwest::Client,
        llm: crate::llm::Llm,
    ) -> Arc<Self> {
        if core.context().speech.asr.is_none() {
            tracing::warn!("asr.engine = \"none\": bots answer calls but cannot hear callers (no webhook requests)");
        }
        Arc::new(BotService {
            store,
            core,
            config,
            http,
            llm,
            buckets: Mutex::new(HashMap::new()),
            transfers: Mutex::new(HashMap::new()),
        })
    }

    /// Resolves a seed-004 voice id: the seed's cloud voices (`elevenlabs:emma`, `polly:joanna`,
    /// `playht:sarah`, and other names of those providers) fall back to the offline default;
    /// `piper:joe` and `flite:slt|kal|kal16|awb|rms` are local; none is the server's default.
    ///
    /// # Errors
    /// A message for the 400 answer: an unknown provider or voice, or an engine not loaded.
    pub fn voice(&self, id: Option<&str>) -> Result<Voice, String> {
        let speech = &self.core.context().speech;
        let default = || {
            let p = speech.default_tts.clone();
            let s = if p == "flite" { "slt" } else { "joe" };
            Voice {
                effective: format!("{p}:{s}"),
                provider: p,
                speaker: (s == "slt").then(|| s.to_string()),
            }
        };
        let Some(id) = id.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(default());
        };
        let (provider, name) = id.split_once(':').ok_or_else(|| {
            format!("`voice`: `{id}` is not `provider:name` (e.g. elevenlabs:emma, piper:joe, flite:slt)")
        })?;
        let (provider, name) = (provider.to_ascii_lowercase(), name.to_ascii_lowercase());
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        if !valid_name {
            return Err(format!("`voice`: `{id}` has no valid voice name"));
        }
        let loaded = |p: &str| speech.tts.contains_key(p);
        match provider.as_str() {
            p if CLOUD_PROVIDERS.contains(&p) => Ok(default()),
            "piper" if name == "joe" && loaded("piper") => Ok(Voice {
                provider: "piper".into(),
                speaker: None,
                effective: "piper:joe".into(),
            }),
            "flite" if FLITE_VOICES.contains(&name.as_str()) && loaded("flite") => Ok(Voice {
                provider: "flite".into(),
                speaker: Some(name.clone()),
                effective: format!("flite:{name}"),
            }),
            "piper" | "flite" => Err(format!(
                "`voice`: `{id}` is not available on this server (available: {})",
                self.local_voices().join(", ")
            )),
            _ => Err(format!(
                "`voice`: unknown provider `{provider}` (elevenlabs, polly, playht, piper, flite)"
            )),
        }
    }

    fn local_voices(&self) -> Vec<String> {
        let speech = &self.core.context().speech;
        let mut v = Vec::new();
        if speech.tts.contains_key("piper") {
            v.push("piper:joe".to_string());
        }
        if speech.tts.contains_key("flite") {
            v.extend(FLITE_VOICES.iter().map(|n| format!("flite:{n}")));
        }
        v
    }

    /// Calls this bot took today (UTC).
    pub async fn calls_today(&self, bot_id: &str) -> i64 {
        self.store
            .usage(&calls_scope(bot_id), &today())
            .await
            .unwrap_or(0)
    }

    /// Counts a new call of the bot; `false` when it is over `bots.calls_per_day`.
    pub async fn admit(&self, bot_id: &str) -> bool {
        match self.store.usage_add(&calls_scope(bot_id), &today()).await {
            Ok(n) if n <= self.config.bots.calls_per_day as i64 => true,
            Ok(_) => {
                metrics::counter!("voxgate_rate_limited_total", "limit" => "bot_calls_per_day")
                    .increment(1);
                false
            }
            Err(e) => {
                tracing::error!(bot = bot_id, "counting the call: {e}");
                true
            }
        }
    }

    /// Takes a token for one webhook request of `bot_id` (`bots.webhook_rate_per_sec`), or says
    /// how long to wait for one.
    pub fn take_webhook_token(&self, bot_id: &str) -> Result<(), Duration> {
        let rate = self.config.bots.webhook_rate_per_sec.max(1) as f64;
        let mut b = self.buckets.lock().expect("buckets lock");
        let now = Instant::now();
        let bucket = b.entry(bot_id.to_string()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Notes where Twilio's `/voice/next` should send `call_sid`.
    pub fn set_transfer(&self, call_sid: &str, target: &str) {
        self.transfers
            .lock()
            .expect("transfers lock")
            .insert(call_sid.to_string(), target.to_string());
    }

    /// Takes the transfer noted for `call_sid`.
    pub fn take_transfer(&self, call_sid: &str) -> Option<String> {
        self.transfers
            .lock()
            .expect("transfers lock")
            .remove(call_sid)
    }

    /// Looks a bot up by the number a caller dialled (`+15550100`, `15550100` and
    /// `sip:+15550100@...`'s user all match).
    pub async fn bot_for_number(&self, dialled: &str) -> Option<BotRecord> {
        let digits: String = dialled.chars().filter(char::is_ascii_digit).collect();
        let mut candidates = vec![dialled.to_string()];
        if !digits.is_empty() {
            candidates.push(format!("+{digits}"));
            candidates.push(digits);
        }
        for c in candidates {
            match self.store.bot_by_number(&c).await {
                Ok(Some(b)) => return Some(b),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!("looking up bot number {c}: {e}");
                    return None;
                }
            }
        }
        None
    }

    /// Starts a call of `bot` on `leg`, run by the webhook loop. With `refused` (the bot is over
    /// its daily limit) the caller hears `bots.refusal` and the call ends.
    ///
    /// # Errors
    /// As [`CallCore::start`].
    pub async fn start_call(
        self: &Arc<Self>,
        bot: BotRecord,
        leg: Box<dyn PendingLeg>,
        call_id: Option<String>,
        refused: bool,
    ) -> Result<CallHandle, StartError> {
        let (sub, events) = voxgate_call::subscriber::channel(512, 0);
        let kind = leg.info().kind;
        let call = self
            .core
            .start(CallSpec {
                id: call_id,
                owner: Some(bot.user_id.clone()),
                kind,
                leg: Some(leg),
                subscribers: vec![sub],
            })
            .await?;
        if let Err(e) = self
            .store
            .bot_call_added(call.id(), &bot.id, voxgate_call::now_ms())
            .await
        {
            tracing::error!(call = call.id(), "{e}");
        }
        tracing::info!(
            call = call.id(),
            bot = bot.id,
            transport = kind,
            refused,
            "bot call"
        );
        let controller =
            webhook::BotController::new(self.clone(), bot, call.clone(), events, refused);
        self.core.tasks().spawn(controller.run());
        Ok(call)
    }
}

/// Routes SIP calls to bots' numbers: a bot works from any SIP phone or trunk, not only through
/// Twilio.
pub struct BotRouter(pub Arc<BotService>);

#[async_trait::async_trait]
impl InboundRouter for BotRouter {
    async fn owns(&self, callee: &str) -> bool {
        self.0.bot_for_number(callee).await.is_some()
    }

    async fn take(&self, callee: &str, leg: Box<dyn PendingLeg>) {
        let Some(bot) = self.0.bot_for_number(callee).await else {
            leg.refuse("not_found");
            return;
        };
        let refused = !self.0.admit(&bot.id).await;
        if let Err(e) = self.0.start_call(bot, leg, None, refused).await {
            tracing::error!("cannot start the bot call: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_webhook_requests_per_second() {
        let t0 = Instant::now();
        let mut b = Bucket::new(5.0, t0);
        for _ in 0..5 {
            assert_eq!(b.take(5.0, t0), Ok(()));
        }
        let wait = b.take(5.0, t0).unwrap_err();
        assert!(
            (Duration::from_millis(199)..=Duration::from_millis(201)).contains(&wait),
            "{wait:?}"
        );
        assert!(b.take(5.0, t0 + Duration::from_millis(150)).is_err());
        assert_eq!(b.take(5.0, t0 + Duration::from_millis(200)), Ok(()));
        // A second later the burst is back, never more than 5.
        let t1 = t0 + Duration::from_secs(10);
        for _ in 0..5 {
            assert_eq!(b.take(5.0, t1), Ok(()));
        }
        assert!(b.take(5.0, t1).is_err());
    }
}
