//! `llm_suggestion` for the bots' webhook: one chat through the server's LLM
//! ([`crate::llm::Llm`]: `[llm] base_url`, an OpenAI-compatible endpoint, or the offline model)
//! with the bot's goal, context and the call's history. Without an LLM, or when it fails or is
//! slow, the suggestion is `None` (`null` in the webhook request).

use crate::llm::{ChatRequest, LlmClient, Message};

/// One turn of a call's history as the webhook sees it (`role`: `user` or `bot`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

/// The conversation asked for a suggestion: the bot's goal and context as the system message,
/// the call's history, and the caller's new words.
pub fn messages(
    goal: &str,
    context: Option<&str>,
    history: &[Turn],
    user_text: &str,
) -> Vec<Message> {
    let mut system = format!(
        "You advise a phone bot. Its goal: {goal}. Suggest in one short sentence what the bot should say next to the caller."
    );
    if let Some(c) = context.filter(|c| !c.trim().is_empty()) {
        system.push_str(&format!(" Business information: {c}"));
    }
    let mut m = vec![Message::System { content: system }];
    for t in history {
        m.push(if t.role == "bot" {
            Message::Assistant {
                content: t.content.clone(),
                tool_calls: Vec::new(),
            }
        } else {
            Message::User {
                content: t.content.clone(),
            }
        });
    }
    m.push(Message::User {
        content: user_text.to_string(),
    });
    m
}

/// The longest a suggestion may take: it is advisory, and the webhook request waits for it.
pub const SUGGESTION_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);

/// Asks for a suggestion (streamed through [`crate::llm::LlmClient`], with its timeouts and
/// retries, within [`SUGGESTION_BUDGET`]); `None` when none is configured or it failed (logged).
pub async fn suggest(
    client: &LlmClient,
    goal: &str,
    context: Option<&str>,
    history: &[Turn],
    user_text: &str,
) -> Option<String> {
    if !client.is_configured() {
        return None;
    }
    let req = ChatRequest {
        messages: messages(goal, context, history, user_text),
        tools: Vec::new(),
        max_tokens: 60,
        temperature: 0.2,
    };
    let answer = tokio::time::timeout(SUGGESTION_BUDGET, client.chat(req).collect())
        .await
        .unwrap_or(Err(crate::llm::LlmError::Timeout(
            SUGGESTION_BUDGET.as_millis() as u64,
        )));
    match answer {
        Ok((text, _, _)) if !text.trim().is_empty() => Some(text.trim().to_string()),
        Ok(_) => {
            tracing::warn!("llm suggestion: an empty answer");
            None
        }
        Err(e) => {
            tracing::warn!("llm suggestion failed: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_goal_context_and_history() {
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
        let m = serde_json::to_value(messages(
            "Book tables",
            Some("Open 5-10"),
            &h,
            "Table for 4",
        ))
        .unwrap();
        let m = m.as_array().unwrap();
        assert_eq!(m.len(), 4);
        assert!(m[0]["content"].as_str().unwrap().contains("Book tables"));
        assert!(m[0]["content"].as_str().unwrap().contains("Open 5-10"));
        assert_eq!(
            m[2],
            serde_json::json!({"role":"assistant","content":"Hello!"})
        );
        assert_eq!(
            m[3],
            serde_json::json!({"role":"user","content":"Table for 4"})
        );
    }
}
