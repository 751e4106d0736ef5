//! Seed 001 agents (`001_7f4873ec537b8ae8.txt`): an LLM holds a phone call from a system prompt
//! and a first message. An agent is a controller on the call core ([`run`]): it dials through the
//! trunk, speaks `first_message` when the callee answers, then runs turns until the call ends:
//!
//! 1. the caller's final transcript (`asrFinal`) goes to the LLM ([`crate::llm::Llm`]) with the
//!    prompt and the conversation so far;
//! 2. the reply streams token by token into a streaming `tts` track (`play_id` `agent-N`): the
//!    core synthesises each clause or sentence as soon as it is complete;
//! 3. barge-in (the core's `interruption`) cancels the LLM request at once (the stream is dropped)
//!    and the history keeps what the caller heard: the reply cut at the interruption position,
//!    estimated from this call's speaking rate (characters per ms of the agent's finished tracks);
//! 4. tools: `end_call` (say `message` or `[agent] goodbye`, then hang up) and, with
//!    `[agent] transfer_to`, `transfer` (announce, then SIP REFER).
//!
//! A reply whose first token takes longer than `[agent] hold_ms` gets the holding phrase; a
//! failed LLM request gets the apology. Every turn (text, what was heard, timings from the
//! caller's end of speech, tokens, tool, error) is stored ([`crate::store::AgentStore`]); the
//! live view (`/frontend-stream`) gets each final transcript of both sides through
//! [`AgentCall::feed`].

use crate::config::AgentConfig;
use crate::llm::{ChatDelta, ChatRequest, ChatStream, Llm, LlmError, Message, Tool, ToolCallOut};
use crate::store::sqlite::SqliteStore;
use crate::store::{AgentStore, AgentTurnRecord};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use voxgate_call::subscriber::Subscription;
use voxgate_call::{now_ms, CallCommand, CallHandle, EventKind, TtsRequest};

/// The rules voxgate adds to every agent's prompt: a phone call is heard, not read.
pub const PHONE_RULES: &str = "You are speaking with a person on a phone call. Reply in one or two short spoken sentences, without lists, markdown or emoji.";

/// Characters per ms of speech assumed until the call's own agent tracks tell better (Piper's
/// and flite's voices speak about 14 characters a second).
const DEFAULT_CHARS_PER_MS: f64 = 0.014;

/// A transcript line of the live view: `speaker` is `caller` or `agent`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeedLine {
    pub speaker: &'static str,
    pub text: String,
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// A live agent call, as the REST and WebSocket handlers see it.
#[derive(Debug)]
pub struct AgentCall {
    pub id: String,
    pub owner: String,
    pub handle: CallHandle,
    /// Twilio's status word while the call lives: `queued`, `ringing`, `in-progress`.
    pub status: Mutex<&'static str>,
    /// Transcripts of both sides, for `/frontend-stream`.
    pub feed: broadcast::Sender<FeedLine>,
}

/// What every agent call shares, and the live ones.
pub struct AgentService {
    pub llm: Llm,
    pub store: Arc<SqliteStore>,
    pub cfg: AgentConfig,
    /// The server's speech engines: an agent synthesises its first message while the call
    /// rings (the engines cache it, see [`voxgate_media::speech::CachedSynthesizer`]).
    pub speech: Arc<voxgate_call::Speech>,
    calls: Mutex<HashMap<String, Arc<AgentCall>>>,
}

impl AgentService {
    pub fn new(
        llm: Llm,
        store: Arc<SqliteStore>,
        cfg: AgentConfig,
        speech: Arc<voxgate_call::Speech>,
    ) -> Arc<Self> {
        Arc::new(AgentService {
            llm,
            store,
            cfg,
            speech,
            calls: Mutex::new(HashMap::new()),
        })
    }

    /// A live agent call.
    pub fn call(&self, id: &str) -> Option<Arc<AgentCall>> {
        self.calls.lock().expect("agent calls").get(id).cloned()
    }

    /// Registers a dialled call and runs its agent until the call ends.
    pub fn start(
        self: &Arc<Self>,
        handle: CallHandle,
        owner: &str,
        prompt: String,
        first_message: String,
        sub: Subscription,
    ) -> Arc<AgentCall> {
        let call = Arc::new(AgentCall {
            id: handle.id().to_string(),
            owner: owner.to_string(),
            handle,
            status: Mutex::new("queued"),
            feed: broadcast::channel(256).0,
        });
        self.calls
            .lock()
            .expect("agent calls")
            .insert(call.id.clone(), call.clone());
        let svc = self.clone();
        let c = call.clone();
        tokio::spawn(async move {
            let id = c.id.clone();
            Agent::new(svc.clone(), c, prompt, first_message)
                .run(sub)
                .await;
            svc.calls.lock().expect("agent calls").remove(&id);
        });
        call
    }
}

/// The tools offered to the model.
pub fn tools(cfg: &AgentConfig) -> Vec<Tool> {
    let mut t = vec![Tool {
        name: "end_call".into(),
        description: "End the phone call: say goodbye (message) and hang up. Call it when the caller says goodbye or the conversation is over.".into(),
        parameters: json!({"type": "object", "properties": {"message": {"type": "string", "description": "The last sentence to say"}}}),
    }];
    if cfg.transfer_to.is_some() {
        t.push(Tool {
            name: "transfer".into(),
            description: "Transfer the caller to a human colleague, when they ask for a person or you cannot help.".into(),
            parameters: json!({"type": "object", "properties": {}}),
        });
    }
    t
}

/// The part of `text` heard in `position_ms` at `chars_per_ms`: cut at a word boundary (a word
/// counts as heard once it has begun).
pub fn heard_prefix(text: &str, position_ms: u64, chars_per_ms: f64) -> String {
    let n = (position_ms as f64 * chars_per_ms).ceil() as usize;
    if n == 0 {
        return String::new();
    }
    if n >= text.chars().count() {
        return text.to_string();
    }
    let cut = text.char_indices().nth(n).map_or(text.len(), |(i, _)| i);
    // Finish the word under way.
    let end = text[cut..]
        .find(char::is_whitespace)
        .map_or(text.len(), |i| cut + i);
    text[..end].trim().to_string()
}

/// One reply being produced or spoken.
struct Reply {
    play_id: String,
    index: i64,
    /// Everything generated (and sent to TTS) so far.
    text: String,
    /// Sent to TTS apart from the model's words (the holding phrase).
    extra: String,
    stream: Option<ChatStream>,
    /// The model's words reached TTS.
    closed: bool,
    /// The caller's end of speech (epoch ms) and the final transcript's arrival.
    speech_end: Option<i64>,
    final_at: Instant,
    endpoint_ms: Option<i64>,
    asr_ms: Option<i64>,
    llm_first_ms: Option<i64>,
    first_audio_ms: Option<i64>,
    held: bool,
    tool: Option<String>,
    transfer: bool,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    error: Option<String>,
}

/// An LLM request started on a speculative transcript, before endpointing: kept when the final
/// transcript of the same utterance has the same text, dropped (cancelled) otherwise.
struct Speculative {
    index: u32,
    text: String,
    stream: ChatStream,
    /// What the model sent before the final came, replayed then.
    buffered: Vec<Option<Result<ChatDelta, LlmError>>>,
    /// When its first text arrived (epoch ms).
    first_token_at: Option<i64>,
    /// The stream finished (its last item is buffered).
    done: bool,
}

struct Agent {
    svc: Arc<AgentService>,
    call: Arc<AgentCall>,
    history: Vec<Message>,
    next_index: i64,
    /// Play ids are never reused, even when a cancelled reply's turn index is.
    next_play: u64,
    reply: Option<Reply>,
    /// The warm-up request (the prompt prefix is evaluated while the first message plays).
    warm: Option<ChatStream>,
    /// A request started on a speculative transcript.
    spec: Option<Speculative>,
    chars_per_ms: f64,
    /// Start of the caller's last silence (epoch ms): the end of speech of the next utterance,
    /// and when its `silence` event arrived.
    silence_at: Option<(i64, i64)>,
}

impl Agent {
    fn new(svc: Arc<AgentService>, call: Arc<AgentCall>, prompt: String, first: String) -> Self {
        let system = format!("{}\n\n{PHONE_RULES}", prompt.trim());
        Agent {
            svc,
            call,
            history: vec![
                Message::System { content: system },
                Message::Assistant {
                    content: first,
                    tool_calls: Vec::new(),
                },
            ],
            next_index: 0,
            next_play: 0,
            reply: None,
            warm: None,
            spec: None,
            chars_per_ms: DEFAULT_CHARS_PER_MS,
            silence_at: None,
        }
    }

    fn set_status(&self, s: &'static str) {
        *self.call.status.lock().expect("status") = s;
    }

    fn feed(&self, speaker: &'static str, text: &str) {
        if !text.trim().is_empty() {
            let _ = self.call.feed.send(FeedLine {
                speaker,
                text: text.trim().to_string(),
                is_final: true,
            });
        }
    }

    async fn tts(&self, text: String, play_id: &str, streaming: bool, end: bool, hangup: bool) {
        let _ = self
            .call
            .handle
            .command(CallCommand::Tts(TtsRequest {
                text,
                speaker: self.svc.cfg.tts_speaker.clone(),
                play_id: Some(play_id.to_string()),
                auto_hangup: hangup,
                streaming,
                end_of_stream: end,
                provider: self.svc.cfg.tts_provider.clone(),
            }))
            .await;
    }

    fn store(&self, t: AgentTurnRecord) {
        let store = self.svc.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.agent_turn_added(&t).await {
                tracing::error!(call = %t.call_id, "storing an agent turn: {e}");
            }
        });
    }

    /// Synthesises the first message's first two pieces ahead, into the engine's cache, so that
    /// the callee hears it as soon as the call is answered (the rest is synthesised while they
    /// play). A failure here is only logged: the call's own `tts` reports it.
    fn synthesise_first_message_ahead(&self) {
        let Message::Assistant { content, .. } = &self.history[1] else {
            return;
        };
        let synth = match self
            .svc
            .speech
            .synthesizer(self.svc.cfg.tts_provider.as_deref())
        {
            Ok(s) => s,
            Err(e) => return tracing::warn!(call = %self.call.id, "{e}"),
        };
        let (text, voice, id) = (
            content.clone(),
            self.svc.cfg.tts_speaker.clone(),
            self.call.id.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            for piece in voxgate_media::speech::tts_pieces(&text).iter().take(2) {
                if let Err(e) = synth.synthesize(piece, voice.as_deref()) {
                    return tracing::debug!(call = %id, "first message not synthesised ahead: {e}");
                }
            }
            let ms = t.elapsed().as_millis() as u64;
            tracing::debug!(call = %id, ms, "first message synthesised ahead");
        });
    }

    async fn run(mut self, mut sub: Subscription) {
        self.synthesise_first_message_ahead();
        // Dialling: until answered.
        loop {
            let Some(ev) = sub.recv().await else { return };
            match ev.kind {
                EventKind::Ringing { .. } => self.set_status("ringing"),
                EventKind::Answer { .. } => break,
                EventKind::Hangup { .. } => return,
                EventKind::Error { sender, error, .. } => {
                    tracing::info!(call = %self.call.id, sender, "{error}")
                }
                _ => {}
            }
        }
        self.set_status("in-progress");
        let first = match &self.history[1] {
            Message::Assistant { content, .. } => content.clone(),
            _ => String::new(),
        };
        let mut r = self.open_reply(None);
        r.text = first.clone();
        r.closed = true;
        r.asr_ms = None;
        let play_id = r.play_id.clone();
        self.reply = Some(r);
        self.tts(first, &play_id, false, true, false).await;
        // Warm the prompt prefix while the first message plays.
        self.warm = Some(self.svc.llm.client().chat(ChatRequest {
            messages: self.history.clone(),
            tools: tools(&self.svc.cfg),
            max_tokens: 1,
            temperature: 0.0,
        }));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                ev = sub.recv() => {
                    let Some(ev) = ev else { break };
                    if !self.event(ev.kind, ev.timestamp).await {
                        break;
                    }
                }
                d = async { self.reply.as_mut()?.stream.as_mut()?.next().await }, if self.streaming() => {
                    self.delta(d).await;
                }
                d = async { self.spec.as_mut()?.stream.next().await }, if self.spec.as_ref().is_some_and(|s| !s.done) => {
                    if let Some(s) = self.spec.as_mut() {
                        if s.first_token_at.is_none() && matches!(d, Some(Ok(ChatDelta::Text(_)))) {
                            s.first_token_at = Some(now_ms());
                        }
                        s.done = !matches!(d, Some(Ok(ChatDelta::Text(_)) | Ok(ChatDelta::ToolCall { .. })));
                        s.buffered.push(d);
                    }
                }
                _ = async { self.warm.as_mut()?.next().await }, if self.warm.is_some() => {
                    self.warm = None;
                }
                _ = tick.tick() => self.check_hold().await,
            }
        }
        // The call ended: what was under way is finished and stored.
        if let Some(r) = self.reply.take() {
            let text = r.text.clone();
            self.finish(r, Some(text), false);
        }
    }

    fn streaming(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| r.stream.is_some())
    }

    fn open_reply(&mut self, speech_end: Option<i64>) -> Reply {
        let index = self.next_index;
        self.next_index += 1;
        self.next_play += 1;
        Reply {
            play_id: format!("agent-{}", self.next_play),
            index,
            text: String::new(),
            extra: String::new(),
            stream: None,
            closed: false,
            speech_end,
            final_at: Instant::now(),
            endpoint_ms: None,
            asr_ms: speech_end.map(|e| (now_ms() - e).max(0)),
            llm_first_ms: None,
            first_audio_ms: None,
            held: false,
            tool: None,
            transfer: false,
            prompt_tokens: None,
            completion_tokens: None,
            error: None,
        }
    }

    /// Handles one call event; `false` when the call has ended.
    async fn event(&mut self, kind: EventKind, at: i64) -> bool {
        match kind {
            EventKind::Hangup { .. } => return false,
            EventKind::Silence { start_time, .. } => self.silence_at = Some((start_time, at)),
            EventKind::Speaking { .. } => {
                self.silence_at = None;
                // The caller speaks on: a request made on the speculation is void.
                self.spec = None;
            }
            EventKind::AsrSpeculative { index, text, .. } => self.speculate(index, text),
            EventKind::AsrFinal {
                index,
                text,
                end_time,
                ..
            } if !text.trim().is_empty() => {
                let (end, endpointed) = match self.silence_at {
                    Some((s, e)) => (s, Some(e)),
                    None => (end_time, None),
                };
                self.caller_said(index, text.trim().to_string(), end, endpointed)
                    .await;
            }
            EventKind::TrackStart { play_id, .. } => {
                if let Some(r) = self.reply.as_mut() {
                    if play_id.as_deref() == Some(r.play_id.as_str()) && r.first_audio_ms.is_none()
                    {
                        r.first_audio_ms = r.speech_end.map(|e| (at - e).max(0));
                    }
                }
            }
            EventKind::Interruption {
                play_id, position, ..
            } => {
                let ours = self
                    .reply
                    .as_ref()
                    .is_some_and(|r| play_id.as_deref() == Some(r.play_id.as_str()));
                if ours {
                    let r = self.reply.take().expect("reply");
                    let spoken = format!("{}{}", r.extra, r.text);
                    let heard = heard_prefix(&spoken, position, self.chars_per_ms);
                    tracing::debug!(call = %self.call.id, position, heard, "agent interrupted");
                    self.finish(r, Some(heard), true);
                }
            }
            EventKind::TrackEnd {
                play_id, duration, ..
            } => {
                let ours = self
                    .reply
                    .as_ref()
                    .is_some_and(|r| play_id.as_deref() == Some(r.play_id.as_str()) && r.closed);
                if ours {
                    let r = self.reply.take().expect("reply");
                    let spoken = r.extra.chars().count() + r.text.chars().count();
                    if duration > 500 && spoken > 10 {
                        // Learn this voice's speaking rate (used to cut interrupted replies).
                        let rate = spoken as f64 / duration as f64;
                        self.chars_per_ms = 0.7 * self.chars_per_ms + 0.3 * rate.clamp(0.005, 0.05);
                    }
                    let transfer = r.transfer;
                    let text = r.text.clone();
                    self.finish(r, Some(text), false);
                    if transfer {
                        if let Some(to) = self.svc.cfg.transfer_to.clone() {
                            let _ = self.call.handle.command(CallCommand::Transfer(to)).await;
                        }
                    }
                }
            }
            _ => {}
        }
        true
    }

    /// A speculative transcript while the agent is silent: ask the model now, while endpointing
    /// decides whether the caller is done (the answer is held until the final confirms it).
    fn speculate(&mut self, index: u32, text: String) {
        let text = text.trim().to_string();
        if self.reply.is_some() || text.is_empty() {
            self.spec = None;
            return;
        }
        let mut messages = self.history.clone();
        messages.push(Message::User {
            content: text.clone(),
        });
        tracing::debug!(call = %self.call.id, index, text, "asking the model on a speculative transcript");
        self.spec = Some(Speculative {
            index,
            text,
            stream: self.svc.llm.client().chat(ChatRequest {
                messages,
                tools: tools(&self.svc.cfg),
                max_tokens: self.svc.cfg.max_tokens,
                temperature: self.svc.cfg.temperature,
            }),
            buffered: Vec::new(),
            first_token_at: None,
            done: false,
        });
    }

    /// The caller finished an utterance: answer it.
    async fn caller_said(
        &mut self,
        asr_index: u32,
        text: String,
        speech_end: i64,
        endpointed: Option<i64>,
    ) {
        let spec = self
            .spec
            .take()
            .filter(|s| s.index == asr_index && s.text == text);
        self.feed("caller", &text);
        if self.reply.is_some() && voxgate_call::turns::is_backchannel(&text) {
            // "Mhm", "okay" while the agent answers: the caller is listening, not taking the turn
            // (the core resumed the reply if it paused for it).
            tracing::debug!(call = %self.call.id, text, "backchannel over the agent's reply");
            return;
        }
        let mut user_text = text;
        if let Some(r) = self.reply.take() {
            if r.first_audio_ms.is_none() && r.index > 0 && r.stream.is_some() {
                // Not a word of the previous reply was heard yet: the caller went on speaking, so
                // answer both utterances together (the previous request is cancelled).
                if let Some(Message::User { content }) = self.history.last() {
                    user_text = format!("{content} {user_text}");
                    self.history.pop();
                }
                let _ = self.call.handle.command(CallCommand::Interrupt).await;
                // The merged utterance replaces the caller's row (index just before the reply).
                self.next_index = r.index - 1;
                drop(r);
            } else {
                // The caller spoke over the agent without barge-in stopping it: what is under
                // way was heard in full.
                let text = r.text.clone();
                self.finish(r, Some(text), false);
            }
        }
        let caller_index = self.next_index;
        self.next_index += 1;
        self.store(AgentTurnRecord {
            call_id: self.call.id.clone(),
            index: caller_index,
            role: "caller".into(),
            text: user_text.clone(),
            created_at: now_ms(),
            ..Default::default()
        });
        self.history.push(Message::User { content: user_text });
        self.trim_history();
        let mut r = self.open_reply(Some(speech_end));
        r.endpoint_ms = endpointed.map(|e| (e - speech_end).max(0));
        let user_is_spec = matches!(self.history.last(), Some(Message::User { content }) if spec.as_ref().is_some_and(|s| &s.text == content));
        match spec.filter(|_| user_is_spec) {
            Some(s) => {
                // The model was asked on the speculation, which this final confirms: its answer
                // so far is spoken now, the rest as it comes.
                r.llm_first_ms = s.first_token_at.map(|t| (t - speech_end).max(0));
                // (A finished stream's end is among the buffered items: replaying it closes the
                // reply the usual way.)
                r.stream = Some(s.stream);
                self.reply = Some(r);
                for d in s.buffered {
                    self.delta(d).await;
                }
            }
            None => {
                r.stream = Some(self.svc.llm.client().chat(ChatRequest {
                    messages: self.history.clone(),
                    tools: tools(&self.svc.cfg),
                    max_tokens: self.svc.cfg.max_tokens,
                    temperature: self.svc.cfg.temperature,
                }));
                self.reply = Some(r);
            }
        }
    }

    /// Keeps the prompt and the last `history_turns` messages.
    fn trim_history(&mut self) {
        let keep = self.svc.cfg.history_turns.max(2);
        if self.history.len() > keep + 1 {
            let cut = self.history.len() - keep;
            self.history.drain(1..cut);
        }
    }

    /// One piece of the LLM's answer.
    async fn delta(&mut self, d: Option<Result<ChatDelta, LlmError>>) {
        let Some(r) = self.reply.as_mut() else { return };
        let play_id = r.play_id.clone();
        match d {
            Some(Ok(ChatDelta::Text(t))) => {
                if r.llm_first_ms.is_none() {
                    r.llm_first_ms = r.speech_end.map(|e| (now_ms() - e).max(0));
                }
                r.text.push_str(&t);
                self.tts(t, &play_id, true, false, false).await;
            }
            Some(Ok(ChatDelta::ToolCall {
                name, arguments, ..
            })) => {
                let args: serde_json::Value = serde_json::from_str(&arguments).unwrap_or_default();
                tracing::info!(call = %self.call.id, tool = name, "agent tool call");
                match name.as_str() {
                    "end_call" => {
                        let msg = args["message"]
                            .as_str()
                            .filter(|m| !m.trim().is_empty())
                            .map_or(self.svc.cfg.goodbye.clone(), str::to_string);
                        r.tool = Some("end_call".into());
                        let sep = if r.text.is_empty() { "" } else { " " };
                        r.text.push_str(&format!("{sep}{msg}"));
                        r.stream = None;
                        r.closed = true;
                        self.tts(format!("{sep}{msg}"), &play_id, true, true, true)
                            .await;
                    }
                    "transfer" if self.svc.cfg.transfer_to.is_some() => {
                        r.tool = Some("transfer".into());
                        r.transfer = true;
                    }
                    other => {
                        tracing::warn!(call = %self.call.id, "the model called an unknown tool `{other}`")
                    }
                }
            }
            Some(Ok(ChatDelta::Done {
                finish_reason,
                usage,
            })) => {
                if let Some(u) = usage {
                    r.prompt_tokens = Some(u.prompt_tokens as i64);
                    r.completion_tokens = Some(u.completion_tokens as i64);
                }
                r.stream = None;
                r.closed = true;
                let mut tail = String::new();
                if r.transfer && r.text.trim().is_empty() {
                    tail = "Transferring your call now.".into();
                    r.text = tail.clone();
                }
                if r.text.trim().is_empty() && r.extra.is_empty() {
                    // Nothing to say (an empty answer): nothing will be played, the turn is done.
                    tracing::warn!(call = %self.call.id, finish_reason, "the LLM answered nothing");
                    let r = self.reply.take().expect("reply");
                    self.finish(r, Some(String::new()), false);
                    return;
                }
                self.tts(tail, &play_id, true, true, false).await;
            }
            Some(Err(_)) | None if r.stream.is_some() => {
                let e = match d {
                    Some(Err(e)) => e.to_string(),
                    _ => "the LLM's stream ended without a finish".into(),
                };
                tracing::warn!(call = %self.call.id, "agent reply failed: {e}");
                r.error = Some(e);
                r.stream = None;
                r.closed = true;
                let apology = self.svc.cfg.apology.clone();
                let sep = if r.text.is_empty() && r.extra.is_empty() {
                    ""
                } else {
                    " "
                };
                r.text.push_str(&format!("{sep}{apology}"));
                self.tts(format!("{sep}{apology}"), &play_id, true, true, false)
                    .await;
            }
            _ => {}
        }
    }

    /// Says the holding phrase when the model is slow to start.
    async fn check_hold(&mut self) {
        let hold = self.svc.cfg.hold_ms;
        let Some(r) = self.reply.as_mut() else { return };
        if hold == 0
            || r.held
            || r.stream.is_none()
            || !r.text.is_empty()
            || r.final_at.elapsed() < Duration::from_millis(hold)
        {
            return;
        }
        r.held = true;
        r.extra = format!("{} ", self.svc.cfg.hold_phrase);
        let (text, play_id) = (r.extra.clone(), r.play_id.clone());
        self.tts(text, &play_id, true, false, false).await;
    }

    /// Ends a reply: the history gets what was heard, the store the turn, the live view its
    /// transcript. Dropping the reply cancels its LLM request.
    fn finish(&mut self, r: Reply, heard: Option<String>, interrupted: bool) {
        let heard = heard.unwrap_or_default();
        // The holding phrase is not part of the model's answer.
        let heard_words = heard
            .strip_prefix(r.extra.trim_end())
            .map_or(heard.as_str(), str::trim_start)
            .to_string();
        if r.index > 0 {
            let tool_calls = r
                .tool
                .as_ref()
                .map(|t| {
                    vec![ToolCallOut {
                        id: format!("call_{}", r.index),
                        kind: "function",
                        function: crate::llm::FunctionOut {
                            name: t.clone(),
                            arguments: "{}".into(),
                        },
                    }]
                })
                .unwrap_or_default();
            let has_tool = !tool_calls.is_empty();
            self.history.push(Message::Assistant {
                content: heard_words.clone(),
                tool_calls,
            });
            if has_tool {
                self.history.push(Message::Tool {
                    tool_call_id: format!("call_{}", r.index),
                    content: "done".into(),
                });
            }
        } else if interrupted {
            self.history[1] = Message::Assistant {
                content: heard_words.clone(),
                tool_calls: Vec::new(),
            };
        }
        self.feed("agent", &heard);
        self.store(AgentTurnRecord {
            call_id: self.call.id.clone(),
            index: r.index,
            role: "agent".into(),
            text: r.text.clone(),
            heard: Some(heard_words),
            interrupted,
            tool: r.tool.clone(),
            endpoint_ms: r.endpoint_ms,
            asr_ms: r.asr_ms,
            llm_first_ms: r.llm_first_ms,
            first_audio_ms: r.first_audio_ms,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            error: r.error.clone(),
            created_at: now_ms(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heard_text_is_cut_at_a_word_boundary() {
        let t = "Our opening hours are nine to five on weekdays.";
        assert_eq!(heard_prefix(t, 0, 0.014), "");
        // 500 ms at 14 chars/s: 7 characters, inside "opening": the word counts as heard.
        assert_eq!(heard_prefix(t, 500, 0.014), "Our opening");
        assert_eq!(heard_prefix(t, 60_000, 0.014), t);
    }

    #[test]
    fn transfer_is_offered_only_with_a_target() {
        let mut c = AgentConfig::default();
        assert_eq!(tools(&c).len(), 1);
        c.transfer_to = Some("sip:desk@127.0.0.1".into());
        let names: Vec<_> = tools(&c).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["end_call", "transfer"]);
    }
}
