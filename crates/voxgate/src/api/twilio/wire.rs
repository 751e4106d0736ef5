//! Twilio Media Streams messages (bidirectional `<Connect><Stream>`), as Twilio documents them
//! (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>). The only place this
//! API's JSON lives. voxgate is the server Twilio connects to.
//!
//! Twilio → voxgate: `connected`, `start`, `media`, `dtmf`, `mark`, `stop`. voxgate → Twilio:
//! `media`, `mark`, `clear`, and `stop` (seed 004's way of saying the bot hung up; Twilio ignores
//! it and ends the stream when the socket closes). `sequenceNumber`, `chunk` and `timestamp` are
//! JSON strings holding numbers; `sampleRate` and `channels` are numbers.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// `start.mediaFormat`: always µ-law, 8000 Hz, mono on Twilio.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    pub encoding: String,
    pub sample_rate: u32,
    pub channels: u32,
}

/// `start`: the stream's identity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    #[serde(default)]
    pub account_sid: Option<String>,
    pub stream_sid: String,
    pub call_sid: String,
    #[serde(default)]
    pub tracks: Vec<String>,
    #[serde(default)]
    pub custom_parameters: HashMap<String, String>,
    pub media_format: Option<MediaFormat>,
}

/// `media`: 20 ms of caller audio.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Media {
    /// `inbound` (the caller) or `outbound`.
    #[serde(default)]
    pub track: Option<String>,
    #[serde(default)]
    pub chunk: Option<String>,
    /// Presentation time, ms since the stream started (a string).
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Base64 µ-law, 8 kHz.
    pub payload: String,
}

/// A message from Twilio.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Connected,
    Start(Start),
    Media {
        stream_sid: Option<String>,
        media: Media,
    },
    Dtmf {
        stream_sid: Option<String>,
        digit: char,
    },
    Mark {
        stream_sid: Option<String>,
        name: String,
    },
    Stop {
        stream_sid: Option<String>,
    },
}

/// A message we cannot use: logged and counted, the call goes on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Violation {
    #[error("not JSON: {0}")]
    Malformed(String),
    #[error("unknown event `{0}`")]
    UnknownEvent(String),
    #[error("invalid `{event}` message: {error}")]
    Invalid { event: String, error: String },
}

impl Violation {
    /// A short name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Malformed(_) => "malformed",
            Violation::UnknownEvent(_) => "unknown_event",
            Violation::Invalid { .. } => "invalid",
        }
    }
}

fn field<T: serde::de::DeserializeOwned>(
    v: &Value,
    event: &str,
    key: &str,
) -> Result<T, Violation> {
    serde_json::from_value(v.get(key).cloned().unwrap_or(Value::Null)).map_err(|e| {
        Violation::Invalid {
            event: event.into(),
            error: format!("`{key}`: {e}"),
        }
    })
}

/// Parses one text message from Twilio.
///
/// # Errors
/// [`Violation`] for malformed JSON, an unknown event or a message missing its fields.
pub fn parse(text: &str) -> Result<Inbound, Violation> {
    let v: Value = serde_json::from_str(text).map_err(|e| Violation::Malformed(e.to_string()))?;
    let event = v
        .get("event")
        .and_then(Value::as_str)
        .ok_or_else(|| Violation::Malformed("no string `event`".into()))?
        .to_string();
    let sid = v
        .get("streamSid")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(match event.as_str() {
        "connected" => Inbound::Connected,
        "start" => Inbound::Start(field(&v, &event, "start")?),
        "media" => Inbound::Media {
            stream_sid: sid,
            media: field(&v, &event, "media")?,
        },
        "dtmf" => {
            #[derive(Deserialize)]
            struct D {
                digit: String,
            }
            let d: D = field(&v, &event, "dtmf")?;
            let digit = d
                .digit
                .chars()
                .next()
                .filter(|c| "0123456789*#ABCDabcd".contains(*c) && d.digit.chars().count() == 1)
                .ok_or_else(|| Violation::Invalid {
                    event: event.clone(),
                    error: format!("`dtmf.digit` `{}` is not a key", d.digit),
                })?;
            Inbound::Dtmf {
                stream_sid: sid,
                digit: digit.to_ascii_uppercase(),
            }
        }
        "mark" => {
            #[derive(Deserialize)]
            struct M {
                name: String,
            }
            let m: M = field(&v, &event, "mark")?;
            Inbound::Mark {
                stream_sid: sid,
                name: m.name,
            }
        }
        "stop" => Inbound::Stop { stream_sid: sid },
        _ => return Err(Violation::UnknownEvent(event)),
    })
}

/// `media` to Twilio: base64 µ-law 8 kHz.
pub fn media(stream_sid: &str, payload_b64: &str) -> String {
    json!({ "event": "media", "streamSid": stream_sid, "media": { "payload": payload_b64 } })
        .to_string()
}

/// `mark` to Twilio: echoed back when the audio before it has played.
pub fn mark(stream_sid: &str, name: &str) -> String {
    json!({ "event": "mark", "streamSid": stream_sid, "mark": { "name": name } }).to_string()
}

/// `clear` to Twilio: drop the audio it has buffered (the caller barged in).
pub fn clear(stream_sid: &str) -> String {
    json!({ "event": "clear", "streamSid": stream_sid }).to_string()
}

/// `stop` (seed 004): the bot hung up.
pub fn stop(stream_sid: &str) -> String {
    json!({ "event": "stop", "streamSid": stream_sid }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_messages_as_documented() {
        assert_eq!(
            parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#),
            Ok(Inbound::Connected)
        );
        let start = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"bot_id":"b1"}},"streamSid":"MZ1"}"#;
        let Ok(Inbound::Start(s)) = parse(start) else {
            panic!()
        };
        assert_eq!((s.stream_sid.as_str(), s.call_sid.as_str()), ("MZ1", "CA1"));
        assert_eq!(s.custom_parameters["bot_id"], "b1");
        assert_eq!(s.media_format.unwrap().sample_rate, 8000);
        let m = r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//8="},"streamSid":"MZ1"}"#;
        assert!(
            matches!(parse(m), Ok(Inbound::Media { ref media, .. }) if media.payload == "//8=" && media.timestamp.as_deref() == Some("5"))
        );
        assert_eq!(
            parse(
                r##"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"#"}}"##
            ),
            Ok(Inbound::Dtmf {
                stream_sid: Some("MZ1".into()),
                digit: '#'
            })
        );
        assert_eq!(
            parse(
                r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"m1"}}"#
            ),
            Ok(Inbound::Mark {
                stream_sid: Some("MZ1".into()),
                name: "m1".into()
            })
        );
        assert!(matches!(
            parse(
                r#"{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"AC1","callSid":"CA1"},"streamSid":"MZ1"}"#
            ),
            Ok(Inbound::Stop { .. })
        ));
        for (bad, kind) in [
            ("{", "malformed"),
            ("[1]", "malformed"),
            (r#"{"event":"dance"}"#, "unknown_event"),
            (r#"{"event":"media","streamSid":"MZ1"}"#, "invalid"),
            (r#"{"event":"dtmf","dtmf":{"digit":"12"}}"#, "invalid"),
            (
                r#"{"event":"start","start":{"streamSid":"MZ1"}}"#,
                "invalid",
            ),
        ] {
            assert_eq!(parse(bad).unwrap_err().kind(), kind, "{bad}");
        }
        let out: Value = serde_json::from_str(&media("MZ1", "AAA=")).unwrap();
        assert_eq!(
            out,
            json!({"event":"media","streamSid":"MZ1","media":{"payload":"AAA="}})
        );
        let out: Value = serde_json::from_str(&clear("MZ1")).unwrap();
        assert_eq!(out, json!({"event":"clear","streamSid":"MZ1"}));
    }
}
