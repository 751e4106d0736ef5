//! Pure translation between seed-002 JSON and the call core: text → [`CallCommand`], and
//! [`CallEvent`] → JSON text. Table-tested below.
//!
//! `invite` means two things in seed 002: on `/call` the WebSocket already carries the audio, so
//! it answers ([`CallCommand::Answer`]); on `/call/sip` it places a call ([`CallCommand::Dial`]).
//! `accept` answers on both.

use super::wire::{Command, COMMANDS};
use serde_json::{json, Value};
use voxgate_call::{
    AnswerOptions, CallCommand, CallEvent, DialOptions, EventKind, MediaOptions, PlayRequest,
    TtsRequest,
};
use voxgate_media::codec::Codec;

/// Which seed-002 endpoint a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/call`: audio in WebSocket binary messages.
    Call,
    /// `/call/sip`: audio over SIP/RTP.
    Sip,
}

/// Why a text message could not become a command (sent back as an `error` event with
/// `sender: "command"`, code 400).
#[derive(Debug, PartialEq)]
pub struct BadCommand(pub String);

/// Parses one text message from `endpoint`.
///
/// # Errors
/// [`BadCommand`] for malformed JSON, a missing or unknown `command`, wrong field types, an
/// unknown codec, or a command this endpoint does not serve (`candidate`; `opus` on `/call`).
pub fn parse_command(text: &str, endpoint: Endpoint) -> Result<CallCommand, BadCommand> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| BadCommand(format!("malformed JSON: {e}")))?;
    let name = match v.get("command") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(BadCommand("`command` must be a string".into())),
        None => return Err(BadCommand("missing `command` field".into())),
    };
    if !COMMANDS.contains(&name.as_str()) {
        return Err(BadCommand(format!(
            "unknown command `{name}` (expected one of: {})",
            COMMANDS.join(", ")
        )));
    }
    let cmd: Command = serde_json::from_value(v)
        .map_err(|e| BadCommand(format!("invalid `{name}` command: {e}")))?;
    Ok(match cmd {
        Command::Invite { option } => {
            let mut option = option.unwrap_or_default();
            let headers = x_headers(option.headers.take())?;
            let o = invite_options(option, endpoint)?;
            match endpoint {
                Endpoint::Call => CallCommand::Answer(o),
                Endpoint::Sip => CallCommand::Dial(DialOptions {
                    callee: o.callee,
                    caller: o.caller,
                    codec: o.codec,
                    media: o.media,
                    headers,
                }),
            }
        }
        Command::Accept { option } => {
            CallCommand::Answer(invite_options(option.unwrap_or_default(), endpoint)?)
        }
        Command::Progress { option } => {
            CallCommand::EarlyMedia(invite_options(option.unwrap_or_default(), endpoint)?)
        }
        Command::Tts {
            text,
            speaker,
            play_id,
            auto_hangup,
            streaming,
            end_of_stream,
            option,
        } => {
            let option = option.unwrap_or_default();
            CallCommand::Tts(TtsRequest {
                text,
                speaker: speaker.or(option.voice).or(option.speaker),
                play_id,
                auto_hangup: auto_hangup.unwrap_or(false),
                streaming: streaming.unwrap_or(false),
                end_of_stream: end_of_stream.unwrap_or(false),
                provider: option.provider,
            })
        }
        Command::Play {
            url,
            auto_hangup,
            play_id,
        } => {
            if url.trim().is_empty() {
                return Err(BadCommand("`play` needs a non-empty `url`".into()));
            }
            CallCommand::Play(PlayRequest {
                url,
                play_id,
                auto_hangup: auto_hangup.unwrap_or(false),
            })
        }
        Command::Hangup {
            reason,
            initiator,
            headers,
        } => CallCommand::Hangup {
            reason,
            initiator,
            headers: x_headers(headers)?,
        },
        Command::Interrupt {} => CallCommand::Interrupt,
        Command::Pause {} => CallCommand::Pause,
        Command::Resume {} => CallCommand::Resume,
        Command::Refer { target } => {
            let target = target.trim().to_string();
            if target.is_empty() || target.len() > 256 {
                return Err(BadCommand(
                    "`refer` needs `target`: a sip: URI or a number".into(),
                ));
            }
            CallCommand::Transfer(target)
        }
        Command::AcceptTransfer {} => CallCommand::TransferReply { accept: true },
        Command::RejectTransfer {} => CallCommand::TransferReply { accept: false },
        Command::Dtmf { digits } => {
            if digits.is_empty()
                || digits.len() > 64
                || !digits.chars().all(|c| "0123456789*#ABCDabcd".contains(c))
            {
                return Err(BadCommand(
                    "`dtmf` needs `digits`: 1-64 of 0-9 * # A-D".into(),
                ));
            }
            CallCommand::SendDtmf {
                keys: digits.to_ascii_uppercase(),
                duration_ms: voxgate_call::DTMF_MS,
            }
        }
        Command::Candidate { .. } => {
            return Err(BadCommand(
                "`candidate` is for /call/webrtc; /call carries audio in WebSocket binary messages"
                    .into(),
            ))
        }
    })
}

fn invite_options(
    o: super::wire::InviteOption,
    endpoint: Endpoint,
) -> Result<AnswerOptions, BadCommand> {
    let codec = Codec::from_name(o.codec.as_deref().unwrap_or("pcm"), o.sample_rate)
        .map_err(|e| BadCommand(e.to_string()))?;
    if o.sample_rate.is_some() && !matches!(codec, Codec::Pcm(_)) {
        return Err(BadCommand(format!(
            "`sampleRate` applies to pcm only; {} has a fixed rate",
            codec.name()
        )));
    }
    if endpoint == Endpoint::Call && codec == Codec::Opus {
        return Err(BadCommand("codec `opus` needs packets: use it on /call/sip (or /call/webrtc); /call carries pcm, pcmu, pcma or g722".into()));
    }
    let asr_provider = o.asr.as_ref().and_then(|a| a.provider.clone());
    let asr = match (&o.asr, asr_provider.as_deref()) {
        (Some(a), _) if a.enabled == Some(false) => false,
        (_, Some("none" | "off")) => false,
        (_, None | Some("moonshine" | "offline" | "default" | "")) => true,
        (_, Some(p)) => {
            return Err(BadCommand(format!(
                "asr provider `{p}` is not available (available: moonshine, none)"
            )))
        }
    };
    let tts = o.tts.unwrap_or_default();
    let vad = o.vad.unwrap_or_default();
    if let Some(ms) = vad.min_silence_ms.filter(|ms| !(100..=5_000).contains(ms)) {
        return Err(BadCommand(format!(
            "`vad.minSilenceMs` must be 100 to 5000 (ms), not {ms}"
        )));
    }
    Ok(AnswerOptions {
        caller: o.caller,
        callee: o.callee,
        offer: o.offer,
        codec: Some(codec),
        media: MediaOptions {
            asr,
            tts_provider: tts.provider.filter(|p| !p.is_empty() && p != "default"),
            tts_speaker: tts.speaker.or(tts.voice),
            barge_in_ms: o.barge_in_ms,
            barge_in: o.barge_in.unwrap_or(true),
            vad: true,
            partials: true,
            adaptive_endpointing: vad.adaptive.unwrap_or(true),
            min_silence_ms: vad.min_silence_ms,
            false_interruption_resume: false,
            speculative_transcripts: false,
        },
    })
}

/// Most extension headers an `invite` may carry, and the longest value (bytes).
const MAX_HEADERS: usize = 20;
const MAX_HEADER_VALUE: usize = 1024;

/// `option.headers` of an `invite` on `/call/sip` (an extension, as in active-call): `X-` headers
/// for the INVITE, in the order given. Names must be `X-` plus RFC 3261 token characters; values
/// printable, at most 1,024 bytes; at most 20.
fn x_headers(
    h: Option<std::collections::BTreeMap<String, String>>,
) -> Result<Vec<(String, String)>, BadCommand> {
    let h = h.unwrap_or_default();
    if h.len() > MAX_HEADERS {
        return Err(BadCommand(format!(
            "`headers`: at most {MAX_HEADERS} headers, not {}",
            h.len()
        )));
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c);
    for (k, v) in &h {
        let x = k.len() > 2 && k[..2].eq_ignore_ascii_case("x-") && k.chars().all(token);
        if !x {
            return Err(BadCommand(format!(
                "`headers`: `{k}` is not an X- header name (X- and letters, digits, -.!%*_+`'~)"
            )));
        }
        if v.len() > MAX_HEADER_VALUE || v.chars().any(|c| c.is_control() && c != '\t') {
            return Err(BadCommand(format!(
                "`headers.{k}`: the value must be printable and at most {MAX_HEADER_VALUE} bytes"
            )));
        }
    }
    Ok(h.into_iter().collect())
}

/// The `option` shown by `/call/lists` for a call after `invite` or `accept`.
pub fn list_option(c: &CallCommand) -> Option<Value> {
    let (caller, callee, offer, codec) = match c {
        CallCommand::Answer(o) => (&o.caller, &o.callee, &o.offer, o.codec),
        CallCommand::Dial(o) => (&o.caller, &o.callee, &None, o.codec),
        _ => return None,
    };
    let codec = codec.map_or("pcm", Codec::name);
    Some(json!({ "caller": caller, "callee": callee, "offer": offer, "codec": codec }))
}

/// An event as seed-002 JSON.
pub fn event_json(e: &CallEvent) -> Value {
    let ts = e.timestamp;
    match &e.kind {
        EventKind::Incoming {
            track_id,
            caller,
            callee,
            sdp,
            headers,
        } => {
            let headers: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({ "event": "incoming", "trackId": track_id, "timestamp": ts, "caller": caller, "callee": callee, "sdp": sdp, "headers": headers })
        }
        EventKind::Ringing {
            track_id,
            early_media,
        } => {
            json!({ "event": "ringing", "trackId": track_id, "timestamp": ts, "earlyMedia": early_media })
        }
        EventKind::Transfer {
            track_id,
            target,
            state,
            referred_by,
            code,
        } => {
            json!({ "event": "transfer", "trackId": track_id, "timestamp": ts, "target": target, "state": state, "referredBy": referred_by, "code": code })
        }
        EventKind::Answer { track_id, sdp } => {
            json!({ "event": "answer", "trackId": track_id, "timestamp": ts, "sdp": sdp.clone().unwrap_or_default() })
        }
        EventKind::Hangup { reason, initiator } => {
            json!({ "event": "hangup", "timestamp": ts, "reason": reason, "initiator": initiator })
        }
        EventKind::Speaking {
            track_id,
            start_time,
        } => {
            json!({ "event": "speaking", "trackId": track_id, "timestamp": ts, "startTime": start_time })
        }
        EventKind::Silence {
            track_id,
            start_time,
            duration,
        } => {
            json!({ "event": "silence", "trackId": track_id, "timestamp": ts, "startTime": start_time, "duration": duration })
        }
        // A speculative transcript is the utterance so far: seed 002's partial (only controllers
        // that ask for them get them; `/call` does not).
        EventKind::AsrDelta {
            track_id,
            index,
            start_time,
            end_time,
            text,
        }
        | EventKind::AsrSpeculative {
            track_id,
            index,
            start_time,
            end_time,
            text,
        } => json!({
            "event": "asrDelta", "trackId": track_id, "index": index, "timestamp": ts, "startTime": start_time, "endTime": end_time, "text": text
        }),
        EventKind::AsrFinal {
            track_id,
            index,
            start_time,
            end_time,
            text,
        } => json!({
            "event": "asrFinal", "trackId": track_id, "index": index, "timestamp": ts, "startTime": start_time, "endTime": end_time, "text": text
        }),
        EventKind::Dtmf { track_id, digit } => {
            json!({ "event": "dtmf", "trackId": track_id, "timestamp": ts, "digit": digit.to_string() })
        }
        EventKind::TrackStart { track_id, play_id } => {
            json!({ "event": "trackStart", "trackId": track_id, "timestamp": ts, "playId": play_id })
        }
        EventKind::TrackEnd {
            track_id,
            play_id,
            duration,
        } => {
            json!({ "event": "trackEnd", "trackId": track_id, "timestamp": ts, "duration": duration, "playId": play_id })
        }
        EventKind::Interruption {
            track_id,
            play_id,
            position,
        } => {
            json!({ "event": "interruption", "trackId": track_id, "timestamp": ts, "position": position, "playId": play_id })
        }
        EventKind::Error {
            track_id,
            sender,
            error,
            code,
        } => {
            json!({ "event": "error", "trackId": track_id, "timestamp": ts, "sender": sender, "error": error, "code": code })
        }
        EventKind::Metrics {
            key,
            duration,
            data,
        } => {
            json!({ "event": "metrics", "timestamp": ts, "key": key, "duration": duration, "data": data })
        }
        EventKind::Mark { name } => {
            json!({ "event": "mark", "timestamp": ts, "name": name })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxgate_media::SampleRate;

    #[test]
    fn commands_table() {
        let cases: Vec<(&str, Result<CallCommand, &str>)> = vec![
            (r#"{"command":"interrupt"}"#, Ok(CallCommand::Interrupt)),
            (r#"{"command":"pause"}"#, Ok(CallCommand::Pause)),
            (r#"{"command":"resume"}"#, Ok(CallCommand::Resume)),
            (
                r#"{"command":"hangup","reason":"bye","initiator":"user"}"#,
                Ok(CallCommand::Hangup {
                    reason: Some("bye".into()),
                    initiator: Some("user".into()),
                    headers: Vec::new(),
                }),
            ),
            (
                r#"{"command":"tts","text":"Hi.","playId":"p1","autoHangup":true,"streaming":true,"endOfStream":false,"option":{"provider":"flite"}}"#,
                Ok(CallCommand::Tts(TtsRequest {
                    text: "Hi.".into(),
                    play_id: Some("p1".into()),
                    auto_hangup: true,
                    streaming: true,
                    provider: Some("flite".into()),
                    ..Default::default()
                })),
            ),
            (
                r#"{"command":"play","url":"http://x/a.mp3"}"#,
                Ok(CallCommand::Play(PlayRequest {
                    url: "http://x/a.mp3".into(),
                    ..Default::default()
                })),
            ),
            (
                r#"{"command":"tts"}"#,
                Err("invalid `tts` command: missing field `text`"),
            ),
            (r#"{"command":"dance"}"#, Err("unknown command `dance`")),
            (
                r#"{"command":"dtmf","digits":"12#a"}"#,
                Ok(CallCommand::SendDtmf {
                    keys: "12#A".into(),
                    duration_ms: 100,
                }),
            ),
            (
                r#"{"command":"dtmf","digit":"5"}"#,
                Ok(CallCommand::SendDtmf {
                    keys: "5".into(),
                    duration_ms: 100,
                }),
            ),
            (
                r#"{"command":"dtmf","digits":"x"}"#,
                Err("`dtmf` needs `digits`"),
            ),
            (r#"{"command":5}"#, Err("`command` must be a string")),
            (r#"{"text":"x"}"#, Err("missing `command` field")),
            (r#"{"command":"tts", "text": "#, Err("malformed JSON")),
            (
                r#"{"command":"candidate","candidates":[]}"#,
                Err("`candidate` is for /call/webrtc"),
            ),
            (
                r#"{"command":"invite","option":{"codec":"opus9"}}"#,
                Err("unknown codec `opus9`"),
            ),
            (
                r#"{"command":"invite","option":{"codec":"pcmu","sampleRate":16000}}"#,
                Err("`sampleRate` applies to pcm only"),
            ),
            (
                r#"{"command":"invite","option":{"asr":{"provider":"tencent"}}}"#,
                Err("asr provider `tencent` is not available"),
            ),
        ];
        for (text, want) in cases {
            let got = parse_command(text, Endpoint::Call);
            match want {
                Ok(c) => assert_eq!(got, Ok(c), "{text}"),
                Err(prefix) => {
                    let e = got.expect_err(text).0;
                    assert!(e.starts_with(prefix), "{text}: {e}");
                }
            }
        }
    }

    #[test]
    fn invite_answers_on_call_and_dials_on_sip() {
        let CallCommand::Answer(o) =
            parse_command(r#"{"command":"invite"}"#, Endpoint::Call).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (o.codec, o.media.asr, o.media.barge_in),
            (Some(Codec::Pcm(SampleRate::HZ_16000)), true, true)
        );
        let CallCommand::Answer(o) =
            parse_command(r#"{"command":"accept","option":{"codec":"pcm","sampleRate":8000,"asr":{"enabled":false},"caller":"a"}}"#, Endpoint::Sip).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (o.codec, o.media.asr, o.caller.as_deref()),
            (Some(Codec::Pcm(SampleRate::HZ_8000)), false, Some("a"))
        );
        let CallCommand::Dial(o) = parse_command(
            r#"{"command":"invite","option":{"callee":"sip:bob@127.0.0.1","codec":"opus","bargeIn":false}}"#,
            Endpoint::Sip,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (o.callee.as_deref(), o.codec, o.media.barge_in),
            (Some("sip:bob@127.0.0.1"), Some(Codec::Opus), false)
        );
        assert!(parse_command(
            r#"{"command":"invite","option":{"codec":"opus"}}"#,
            Endpoint::Call
        )
        .unwrap_err()
        .0
        .contains("needs packets"));
        assert_eq!(
            list_option(
                &parse_command(
                    r#"{"command":"invite","option":{"codec":"pcmu","caller":"x"}}"#,
                    Endpoint::Call
                )
                .unwrap()
            ),
            Some(json!({"caller":"x","callee":null,"offer":null,"codec":"pcmu"}))
        );
    }

    #[test]
    fn events_table() {
        let t = "c1".to_string();
        let cases = vec![
            (
                EventKind::Speaking {
                    track_id: t.clone(),
                    start_time: 5,
                },
                json!({"event":"speaking","trackId":"c1","timestamp":1,"startTime":5}),
            ),
            (
                EventKind::Silence {
                    track_id: t.clone(),
                    start_time: 5,
                    duration: 600,
                },
                json!({"event":"silence","trackId":"c1","timestamp":1,"startTime":5,"duration":600}),
            ),
            (
                EventKind::AsrFinal {
                    track_id: t.clone(),
                    index: 2,
                    start_time: 3,
                    end_time: 4,
                    text: "hi".into(),
                },
                json!({"event":"asrFinal","trackId":"c1","index":2,"timestamp":1,"startTime":3,"endTime":4,"text":"hi"}),
            ),
            (
                EventKind::Dtmf {
                    track_id: t.clone(),
                    digit: '#',
                },
                json!({"event":"dtmf","trackId":"c1","timestamp":1,"digit":"#"}),
            ),
            (
                EventKind::Interruption {
                    track_id: "p".into(),
                    play_id: Some("p".into()),
                    position: 1200,
                },
                json!({"event":"interruption","trackId":"p","timestamp":1,"position":1200,"playId":"p"}),
            ),
            (
                EventKind::Hangup {
                    reason: "killed".into(),
                    initiator: "system".into(),
                },
                json!({"event":"hangup","timestamp":1,"reason":"killed","initiator":"system"}),
            ),
            (
                EventKind::Error {
                    track_id: t.clone(),
                    sender: "command".into(),
                    error: "x".into(),
                    code: Some(400),
                },
                json!({"event":"error","trackId":"c1","timestamp":1,"sender":"command","error":"x","code":400}),
            ),
            (
                EventKind::Metrics {
                    key: "ttfb.tts.piper".into(),
                    duration: 80,
                    data: json!({"trackId":"p"}),
                },
                json!({"event":"metrics","timestamp":1,"key":"ttfb.tts.piper","duration":80,"data":{"trackId":"p"}}),
            ),
        ];
        for (kind, want) in cases {
            assert_eq!(event_json(&CallEvent { timestamp: 1, kind }), want);
        }
    }
}
