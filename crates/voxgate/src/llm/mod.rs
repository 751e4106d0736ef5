//! An OpenAI-compatible chat-completions client (`POST {base_url}/chat/completions`, as OpenAI,
//! vLLM, llama.cpp's server and Ollama serve it), streaming with server-sent events:
//! - text arrives as [`ChatDelta::Text`] pieces as the model produces them;
//! - tool calls (the `tools` of the request) arrive whole, as [`ChatDelta::ToolCall`], once their
//!   streamed `arguments` are complete;
//! - [`ChatDelta::Done`] ends a stream with the finish reason (`stop`, `tool_calls`, `length`, or
//!   `budget` when the client-side token budget cut it) and the usage when the server sent it.
//!
//! Failures before the first byte of an answer (connection refused, HTTP 429/5xx, no answer within
//! `timeout_ms`) are retried `retries` times with exponential backoff (200 ms, 400 ms, ...; a
//! `Retry-After` up to 5 s is honoured); after that the stream yields [`LlmError`]. A stream that
//! stalls for `timeout_ms` between chunks fails with [`LlmError::Timeout`]. Dropping a
//! [`ChatStream`] cancels the request at once (the connection is closed: the server stops
//! generating), which is how barge-in cancels a reply. A server that answers a plain
//! `chat.completion` JSON object instead of a stream is understood too (one text piece).

pub mod local;
#[cfg(test)]
mod tests;

use crate::config::{Config, LlmConfig};
use local::{LocalLlm, LocalOptions};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// One message of a conversation, in the OpenAI shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    System {
        content: String,
    },
    User {
        content: String,
    },
    Assistant {
        content: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCallOut>,
    },
    Tool {
        tool_call_id: String,
        content: String,
    },
}

/// A tool call as echoed back in the history (`{id, type: "function", function: {name, arguments}}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionOut,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionOut {
    pub name: String,
    pub arguments: String,
}

/// A tool the model may call: `parameters` is a JSON Schema object.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// What to ask.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    /// The turn's token budget: sent as `max_tokens` and enforced on the client too (text
    /// pieces are counted; a server that ignores the limit is cut off with finish `budget`).
    pub max_tokens: u32,
    pub temperature: f32,
}

/// A piece of the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatDelta {
    Text(String),
    ToolCall {
        id: String,
        name: String,
        /// The JSON arguments as the model wrote them (may be invalid JSON: check).
        arguments: String,
    },
    Done {
        finish_reason: String,
        usage: Option<Usage>,
    },
}

/// Token counts the server reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Why a chat failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("no LLM is configured ([llm] base_url)")]
    NotConfigured,
    #[error("the LLM did not answer within {0} ms")]
    Timeout(u64),
    #[error("the LLM answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("cannot reach the LLM: {0}")]
    Connect(String),
    #[error("the LLM's stream is malformed: {0}")]
    Protocol(String),
    /// The offline model's queue is full ([llm] queue requests already wait).
    #[error("the LLM is busy: {0} requests are waiting")]
    Busy(u32),
}

impl LlmError {
    fn retryable(&self) -> bool {
        match self {
            LlmError::Timeout(_) | LlmError::Connect(_) => true,
            LlmError::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Where requests go.
#[derive(Clone, Debug)]
enum Endpoint {
    None,
    /// `{base_url}/chat/completions`.
    Url(String),
    Local(Arc<LocalLlm>),
}

/// The offline model's request queue: `parallel` requests decode at once, `queue` more may wait.
#[derive(Debug)]
struct Queue {
    slots: Semaphore,
    waiting: AtomicU32,
    max_waiting: u32,
}

/// The server's LLM: the configured endpoint, or the offline model (started here, once, and
/// shared by every call). Cheap to clone.
#[derive(Clone)]
pub struct Llm {
    client: LlmClient,
}

impl Llm {
    /// The LLM of `cfg`: `[llm] base_url` when set; otherwise, with `[llm] offline`, starts the
    /// offline model in the background (requests wait for it to load); otherwise none.
    pub fn from_config(http: reqwest::Client, cfg: &Config) -> Llm {
        let mut client = LlmClient::new(http, &cfg.llm);
        if cfg.llm.base_url.is_none() && cfg.llm.offline {
            let local = LocalLlm::start(LocalOptions {
                python: cfg.llm_python(),
                model: cfg.llm_model_path(),
                threads: cfg.llm.threads,
                context: cfg.llm.context,
                parallel: cfg.llm.parallel,
                start_timeout: Duration::from_millis(cfg.llm.start_timeout_ms),
            });
            client.endpoint = Endpoint::Local(local);
            // A 1.5 s first-token timeout suits a hosted model, not a CPU prefill.
            client.timeout = client.timeout.max(Duration::from_secs(30));
            client.start_wait = Duration::from_millis(cfg.llm.start_timeout_ms);
            client.queue = Some(Arc::new(Queue {
                slots: Semaphore::new(cfg.llm.parallel as usize),
                waiting: AtomicU32::new(0),
                max_waiting: cfg.llm.queue,
            }));
        }
        Llm { client }
    }

    /// No LLM (requests fail with [`LlmError::NotConfigured`]).
    pub fn none(http: reqwest::Client) -> Llm {
        let mut client = LlmClient::new(http, &LlmConfig::default());
        client.endpoint = Endpoint::None;
        Llm { client }
    }

    /// A client of this LLM.
    pub fn client(&self) -> LlmClient {
        self.client.clone()
    }

    /// What serves requests, for logs and `/health`-like answers: `offline <model> (<state>)`,
    /// the base URL, or `none`.
    pub fn describe(&self) -> String {
        match &self.client.endpoint {
            Endpoint::None => "none".into(),
            Endpoint::Url(u) => u.trim_end_matches("/chat/completions").to_string(),
            Endpoint::Local(l) => format!("offline {} ({:?})", l.model().display(), l.state()),
        }
    }
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    endpoint: Endpoint,
    queue: Option<Arc<Queue>>,
    /// How long a request waits for the offline model to load.
    start_wait: Duration,
    api_key: Option<String>,
    model: String,
    timeout: Duration,
    retries: u32,
}

/// A streaming answer; dropping it cancels the request.
pub struct ChatStream {
    rx: mpsc::Receiver<Result<ChatDelta, LlmError>>,
    task: tokio::task::JoinHandle<()>,
}

impl ChatStream {
    /// The next piece; `None` after `Done` or an error.
    pub async fn next(&mut self) -> Option<Result<ChatDelta, LlmError>> {
        self.rx.recv().await
    }

    /// Reads the whole answer: its text and tool calls, and the finish reason.
    ///
    /// # Errors
    /// The stream's error.
    pub async fn collect(mut self) -> Result<(String, Vec<ChatDelta>, String), LlmError> {
        let (mut text, mut calls) = (String::new(), Vec::new());
        while let Some(d) = self.next().await {
            match d? {
                ChatDelta::Text(t) => text.push_str(&t),
                c @ ChatDelta::ToolCall { .. } => calls.push(c),
                ChatDelta::Done { finish_reason, .. } => return Ok((text, calls, finish_reason)),
            }
        }
        Err(LlmError::Protocol(
            "the stream ended without a finish".into(),
        ))
    }
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LlmClient {
    pub fn new(http: reqwest::Client, cfg: &LlmConfig) -> Self {
        LlmClient {
            http,
            endpoint: match &cfg.base_url {
                Some(b) => Endpoint::Url(format!("{}/chat/completions", b.trim_end_matches('/'))),
                None => Endpoint::None,
            },
            queue: None,
            start_wait: Duration::ZERO,
            api_key: cfg.api_key.clone(),
            model: cfg.model.clone(),
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            retries: cfg.retries,
        }
    }

    /// Whether a base URL or the offline model is configured.
    pub fn is_configured(&self) -> bool {
        !matches!(self.endpoint, Endpoint::None)
    }

    /// The request body for `req` (streaming, with usage).
    pub fn body(&self, req: &ChatRequest) -> Value {
        let mut b = json!({
            "model": self.model,
            "messages": req.messages,
            "stream": true,
            "stream_options": { "include_usage": true },
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
        });
        if !req.tools.is_empty() {
            b["tools"] = req
                .tools
                .iter()
                .map(|t| {
                    json!({ "type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters } })
                })
                .collect();
        }
        b
    }

    /// Starts a streaming chat. Never fails itself: errors arrive in the stream.
    pub fn chat(&self, req: ChatRequest) -> ChatStream {
        let (tx, rx) = mpsc::channel(256);
        let me = self.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = me.run(req, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        ChatStream { rx, task }
    }

    async fn connect(&self, body: &Value) -> Result<reqwest::Response, LlmError> {
        let url = match &self.endpoint {
            Endpoint::None => return Err(LlmError::NotConfigured),
            Endpoint::Url(u) => u.clone(),
            Endpoint::Local(l) => format!(
                "{}/chat/completions",
                l.url(self.start_wait).await.map_err(LlmError::Connect)?
            ),
        };
        let url = url.as_str();
        let mut attempt = 0;
        loop {
            let mut r = self.http.post(url).json(body);
            if let Some(k) = &self.api_key {
                r = r.bearer_auth(k);
            }
            let ms = self.timeout.as_millis() as u64;
            let e: LlmError = match tokio::time::timeout(self.timeout, r.send()).await {
                Err(_) => LlmError::Timeout(ms),
                Ok(Err(e)) => LlmError::Connect(e.to_string()),
                Ok(Ok(resp)) if resp.status().is_success() => return Ok(resp),
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let body = resp.text().await.unwrap_or_default();
                    let body: String = body.chars().take(300).collect();
                    let e = LlmError::Http { status, body };
                    if let Some(s) = retry_after.filter(|_| e.retryable() && attempt < self.retries)
                    {
                        // The server said when: wait that long (at most 5 s) instead of backing off.
                        tracing::info!("LLM request failed ({e}); retrying in {s} s (Retry-After)");
                        tokio::time::sleep(Duration::from_secs(s.min(5))).await;
                        attempt += 1;
                        continue;
                    }
                    e
                }
            };
            if !e.retryable() || attempt >= self.retries {
                return Err(e);
            }
            let backoff = Duration::from_millis(200 << attempt.min(5));
            tracing::info!("LLM request failed ({e}); retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    async fn run(
        &self,
        req: ChatRequest,
        tx: &mpsc::Sender<Result<ChatDelta, LlmError>>,
    ) -> Result<(), LlmError> {
        let body = self.body(&req);
        // The offline model decodes `parallel` requests at once; others wait in a bounded queue.
        let _slot = match &self.queue {
            None => None,
            Some(q) => {
                if q.waiting.fetch_add(1, Ordering::SeqCst) >= q.max_waiting
                    && q.slots.available_permits() == 0
                {
                    q.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(LlmError::Busy(q.max_waiting));
                }
                let p = q.slots.acquire().await;
                q.waiting.fetch_sub(1, Ordering::SeqCst);
                p.ok()
            }
        };
        let mut resp = self.connect(&body).await?;
        let json_answer = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if json_answer {
            // A server that does not stream answers one `chat.completion` object.
            let v: Value = tokio::time::timeout(self.timeout, resp.json())
                .await
                .map_err(|_| LlmError::Timeout(self.timeout.as_millis() as u64))?
                .map_err(|e| LlmError::Protocol(e.to_string()))?;
            let msg = v
                .pointer("/choices/0/message")
                .ok_or_else(|| LlmError::Protocol(format!("no choices[0].message: {v}")))?;
            if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
                let _ = tx.send(Ok(ChatDelta::Text(t.to_string()))).await;
            }
            let calls = msg["tool_calls"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| {
                            (
                                c["id"].as_str().unwrap_or_default().to_string(),
                                c.pointer("/function/name")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string(),
                                c.pointer("/function/arguments")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let finish = v
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            let usage = v.get("usage").filter(|u| u.is_object()).map(|u| Usage {
                prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
            });
            return finish_stream(tx, calls, finish, usage).await;
        }
        let mut sse = SseParser::default();
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut finish: Option<String> = None;
        let mut usage = None;
        let mut pieces = 0u32;
        loop {
            let chunk = match tokio::time::timeout(self.timeout, resp.chunk()).await {
                Err(_) => return Err(LlmError::Timeout(self.timeout.as_millis() as u64)),
                Ok(Err(e)) => return Err(LlmError::Connect(e.to_string())),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            for data in sse.push(&chunk) {
                if data == "[DONE]" {
                    return finish_stream(tx, calls, finish, usage).await;
                }
                let v: Value = serde_json::from_str(&data)
                    .map_err(|e| LlmError::Protocol(format!("{e}: {data}")))?;
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    usage = Some(Usage {
                        prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                        completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
                    });
                }
                let Some(choice) = v.pointer("/choices/0") else {
                    continue;
                };
                let delta = &choice["delta"];
                if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                    if pieces >= req.max_tokens.max(1) {
                        // The budget is spent: stop here (dropping the response cancels it).
                        finish = Some("budget".into());
                        return finish_stream(tx, calls, finish, usage).await;
                    }
                    pieces += 1;
                    if tx.send(Ok(ChatDelta::Text(t.to_string()))).await.is_err() {
                        return Ok(());
                    }
                }
                if let Some(tcs) = delta["tool_calls"].as_array() {
                    for tc in tcs {
                        let i = tc["index"].as_u64().unwrap_or(0) as usize;
                        if i >= 16 {
                            return Err(LlmError::Protocol("more than 16 tool calls".into()));
                        }
                        while calls.len() <= i {
                            calls.push(Default::default());
                        }
                        let c = &mut calls[i];
                        if let Some(id) = tc["id"].as_str() {
                            c.0 = id.to_string();
                        }
                        if let Some(n) = tc.pointer("/function/name").and_then(Value::as_str) {
                            c.1.push_str(n);
                        }
                        if let Some(a) = tc.pointer("/function/arguments").and_then(Value::as_str) {
                            c.2.push_str(a);
                        }
                    }
                }
                if let Some(f) = choice["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
            }
        }
        // The server closed without [DONE]: finish with what was said, when it said how.
        if finish.is_some() {
            return finish_stream(tx, calls, finish, usage).await;
        }
        Err(LlmError::Protocol(
            "the stream ended without finish_reason or [DONE]".into(),
        ))
    }
}

async fn finish_stream(
    tx: &mpsc::Sender<Result<ChatDelta, LlmError>>,
    calls: Vec<(String, String, String)>,
    finish: Option<String>,
    usage: Option<Usage>,
) -> Result<(), LlmError> {
    for (i, (id, name, arguments)) in calls.into_iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        let id = if id.is_empty() {
            format!("call_{i}")
        } else {
            id
        };
        let _ = tx
            .send(Ok(ChatDelta::ToolCall {
                id,
                name,
                arguments,
            }))
            .await;
    }
    let _ = tx
        .send(Ok(ChatDelta::Done {
            finish_reason: finish.unwrap_or_else(|| "stop".into()),
            usage,
        }))
        .await;
    Ok(())
}

/// Server-sent events (the WHATWG format as chat-completions streams use it): `data:` lines,
/// events separated by a blank line, comments (`:`) ignored, CRLF or LF line ends.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: String,
}

impl SseParser {
    /// Adds bytes; returns the `data` of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(std::mem::take(&mut self.data));
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        out
    }
}
