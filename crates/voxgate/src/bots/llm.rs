//! `llm_suggestion` for the bots' webhook: one request to an OpenAI-compatible chat-completions
//! endpoint (`POST {base_url}/chat/completions`, as OpenAI, vLLM, llama.cpp's server and Ollama
//! serve it) with the bot's goal, context and the call's history. Without `[llm] base_url`, or
//! when the endpoint fails or is slow, the suggestion is `None` (`null` in the webhook request).

use crate::config::LlmConfig;
use serde_json::{json, Value};
use std::time::Duration;

/// One turn of a call's history as the webhook sees it (`role`: `user` or `bot`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

/// The chat-completions request for a suggestion.
pub fn request(
    cfg: &LlmConfig,
    goal: &str,
    context: Option<&str>,
    history: &[Turn],
    user_text: &str,
) -> Value {
    let mut system = format!(
        "You advise a phone bot. Its goal: {goal}. Suggest in one short sentence what the bot should say next to the caller."
    );
    if let Some(c) = context.filter(|c| !c.trim().is_empty()) {
        system.push_str(&format!(" Business information: {c}"));
    }
    let mut messages = vec![json!({ "role": "system", "content": system })];
    for t in history {
        let role = if t.role == "bot" { "assistant" } else { "user" };
        messages.push(json!({ "role": role, "content": t.content }));
    }
    messages.push(json!({ "role": "user", "content": user_text }));
    json!({ "model": cfg.model, "messages": messages, "max_tokens": 60, "temperature": 0.2, "stream": false })
}

/// Asks for a suggestion; `None` when none is configured or it failed (logged).
pub async fn suggest(
    http: &reqwest::Client,
    cfg: &LlmConfig,
    goal: &str,
    context: Option<&str>,
    history: &[Turn],
    user_text: &str,
) -> Option<String> {
    let base = cfg.base_url.as_deref()?;
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    let mut req = http
        .post(&url)
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .json(&request(cfg, goal, context, history, user_text));
    if let Some(k) = &cfg.api_key {
        req = req.bearer_auth(k);
    }
    let r = async {
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        v.pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "no choices[0].message.content".to_string())
    }
    .await;
    match r {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("llm suggestion from {url} failed: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_goal_context_and_history() {
        let cfg = LlmConfig {
            model: "m".into(),
            ..Default::default()
        };
        let h = vec![
            Turn {
                role: "user".into(),
                content: "Hi".into(),
            },
            Turn {
                role: "bot".into(),
                content: "Hello!".into(),
            },
        ];
        let r = request(&cfg, "Book tables", Some("Open 5-10"), &h, "Table for 4");
        assert_eq!(r["model"], "m");
        let m = r["messages"].as_array().unwrap();
        assert_eq!(m.len(), 4);
        assert!(m[0]["content"].as_str().unwrap().contains("Book tables"));
        assert!(m[0]["content"].as_str().unwrap().contains("Open 5-10"));
        assert_eq!(m[2]["role"], "assistant");
        assert_eq!(m[3], json!({"role":"user","content":"Table for 4"}));
    }
}
