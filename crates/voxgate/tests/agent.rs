//! Seed 001 end to end: `POST /outbound-call` dials a PJSUA2 phone through a trunk and an LLM
//! agent holds the conversation. The phone plays LibriVox speech after the agent's first message
//! and records what it hears; `/frontend-stream` listens; `/call-status` and `/end-call` follow
//! the call; the stored turns are read back.
//!
//! - `offline_agent_answers_and_end_call_hangs_up`: the offline LLM (SmolLM2-135M through the
//!   supervised llama.cpp child, the smallest real model: its words are not judged).
//! - `scripted_llm_streams_is_cancelled_by_barge_in_and_ends_the_call`: a scripted
//!   OpenAI-compatible server replaying the documented streaming format (SSE
//!   `chat.completion.chunk`s, tool calls with streamed arguments): a 503 retried, a slow reply
//!   cut by the caller's barge-in (the request is cancelled, the history keeps what was heard),
//!   then `end_call`.
//! - `a_noise_burst_pauses_the_agent_and_a_question_stops_it`: turn-taking over a live reply
//!   (barge-in waits for words; what the phone heard is measured).
//! - `a_slow_model_gets_the_holding_phrase_and_a_failed_one_the_apology`: `[agent] hold_ms`,
//!   the holding phrase kept out of the model's history, the apology after a failed retry.
//! - `the_transfer_tool_refers_the_callee_to_the_configured_target`: `transfer` → SIP REFER to a
//!   SIPp callee that accepts it (202, NOTIFY sipfrag 200) → BYE.

mod common;

use common::pjsua::*;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use voxgate::store::sqlite::SqliteStore;
use voxgate::store::{AgentStore, AgentTurnRecord, Store};
use voxgate_media::codec::{AudioDecoder, Codec};
use voxgate_media::SampleRate;

const FIRST: &str = "Hello! Thanks for taking my call. How can I help you today?";

/// A trunk to the phone at `sip_port`.
fn trunk(sip_port: u16) -> String {
    format!(
        "[[sip.trunks]]\nname = \"carrier\"\nhost = \"127.0.0.1:{sip_port}\"\nkeepalive_secs = 0\n"
    )
}

/// A 16 kHz mono WAV of the LibriVox clips `ids`, each followed by `gap_ms` of silence.
fn speech_wav(out: &Path, ids: &[&str], gap_ms: u32) -> Vec<String> {
    let mut samples = Vec::new();
    let mut texts = Vec::new();
    for id in ids {
        let (p, text) = clip(id);
        let (s, r) = read_wav(&p);
        assert_eq!(r, SampleRate::HZ_16000);
        samples.extend(s);
        samples.extend(std::iter::repeat_n(0i16, (gap_ms * 16) as usize));
        texts.push(text);
    }
    write_wav16(out, &samples);
    texts
}

/// Serves `handler` as `/v1/chat/completions` on loopback; returns the base URL (`.../v1`).
async fn llm_server(handler: axum::routing::MethodRouter) -> String {
    let app = axum::Router::new().route("/v1/chat/completions", handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let llm = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    llm
}

/// Writes 16 kHz mono 16-bit samples as a WAV file.
fn write_wav16(out: &Path, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(out, spec).unwrap();
    for s in samples {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.http(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn status(server: &Server, sid: &str, user: &str) -> (u16, Value) {
    let r = reqwest::get(server.http(&format!("/call-status?callSid={sid}&user_id={user}")))
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls `/call-status` until `want` (or panics after `timeout`); returns every status seen.
async fn wait_status(
    server: &Server,
    sid: &str,
    want: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, v) = status(server, sid, "alice").await;
        assert_eq!(code, 200, "{v}");
        let s = v["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status stayed {s}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn turns(server: &Server, sid: &str) -> Vec<AgentTurnRecord> {
    let store = SqliteStore::open(&server.db_url()).await.unwrap();
    store.agent_turns(sid).await.unwrap()
}

/// Waits for the phone to exit and returns its lines.
async fn phone_done(
    mut child: tokio::process::Child,
    lines: tokio::task::JoinHandle<Vec<String>>,
) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the phone did not exit")
        .unwrap();
    lines.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_agent_answers_and_end_call_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let caller = dir.path().join("caller.wav");
    let said = speech_wav(&caller, &["0880"], 1000);
    let rec = dir.path().join("heard.wav");
    let (sip_port, child, lines) = phone_with(
        "uas",
        &caller,
        &rec,
        "-",
        None,
        &[("PJ_RING_SECS", "1.5"), ("PJ_PLAY_AFTER", "6")],
    )
    .await;
    let model = repo_root().join("models/llm/SmolLM2-135M-Instruct.Q4_1.gguf");
    let server = Server::start_with_config(
        &[
            ("VOXGATE_LLM__OFFLINE", "true"),
            ("VOXGATE_LLM__MODEL_PATH", model.to_str().unwrap()),
            ("VOXGATE_AGENT__MAX_TOKENS", "24"),
            ("VOXGATE_AGENT__TEMPERATURE", "0"),
        ],
        &trunk(sip_port),
    );
    // Seed 001's errors.
    let (code, v) = post(&server, "/outbound-call", json!({"number": "+15550100"})).await;
    assert_eq!(
        (code, v),
        (
            400,
            json!({"error": "User ID and phone number are required"})
        )
    );
    let (code, v) = post(
        &server,
        "/outbound-call",
        json!({"user_id": "alice", "number": "12ab", "prompt": "x"}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("phone number"), "{v}");
    let (code, v) = post(
        &server,
        "/outbound-call",
        json!({"user_id": "alice", "number": "+15550100"}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("prompt"), "{v}");
    let (code, v) = post(
        &server,
        "/outbound-call",
        json!({"user_id": "alice", "number": "+15550100", "prompt": "x", "first_message": {}}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("first_message"),
        "{v}"
    );

    let (code, v) = post(
        &server,
        "/outbound-call",
        json!({"user_id": "alice", "number": "+1 (555) 010-0100",
               "prompt": "You are a friendly receptionist of a dental clinic.", "first_message": FIRST}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["message"], "Call initiated");
    let sid = v["callSid"].as_str().unwrap().to_string();
    assert!(
        sid.len() == 34 && sid.starts_with("CA") && sid[2..].chars().all(|c| c.is_ascii_hexdigit()),
        "{sid}"
    );
    // Another user's callSid does not exist for them.
    assert_eq!(status(&server, &sid, "bob").await.0, 404);
    assert_eq!(
        post(
            &server,
            "/end-call",
            json!({"callSid": sid, "user_id": "bob"})
        )
        .await
        .0,
        404
    );

    let mut seen = Vec::new();
    wait_status(
        &server,
        &sid,
        "in-progress",
        Duration::from_secs(20),
        &mut seen,
    )
    .await;
    assert!(
        seen.contains(&"ringing".to_string()),
        "statuses seen: {seen:?}"
    );
    // The live view: three connections are allowed, the fourth is refused.
    let url = format!(
        "ws://{}/frontend-stream?callSid={sid}&user_id=alice",
        server.addr
    );
    let mut view = Client::connect(&url).await;
    view.send(json!({"event": "connect-twilio", "callSid": sid, "user_id": "alice"}))
        .await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(&url).await;
        c.send(json!({"event": "connect-twilio", "callSid": sid, "user_id": "alice"}))
            .await;
        others.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut fourth, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let close = tokio::time::timeout(Duration::from_secs(5), fourth.next())
        .await
        .expect("the 4th connection is closed");
    match close {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 1008);
            assert!(f.reason.contains("concurrent"), "{}", f.reason);
        }
        other => panic!("the 4th connection was not refused: {other:?}"),
    }
    let _ = fourth.close(None).await;
    for c in others {
        c.close().await;
    }

    // The agent's reply to the caller's words.
    let reply = view
        .wait_for("the agent's reply", Duration::from_secs(90), |e| {
            e["event"] == "transcription"
                && e["speaker"] == "agent"
                && e["text"].as_str().is_some_and(|t| t != FIRST)
        })
        .await;
    // The caller's words (one utterance, or two if a loaded machine's VAD split it).
    let caller_text = view
        .events_named("transcription")
        .into_iter()
        .filter(|e| e["speaker"] == "caller")
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        wer(&said[0], &caller_text) <= 0.3,
        "caller: `{caller_text}`"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, v) = post(
        &server,
        "/end-call",
        json!({"callSid": sid, "user_id": "alice"}),
    )
    .await;
    assert_eq!(
        (code, v),
        (
            200,
            json!({"success": true, "message": "Call ended successfully"})
        )
    );
    let out = phone_done(child, lines).await;
    assert!(
        out.iter().any(|l| l == "EXIT 0"),
        "the phone got no BYE: {out:?}"
    );
    wait_status(
        &server,
        &sid,
        "completed",
        Duration::from_secs(10),
        &mut seen,
    )
    .await;
    let (_, v) = status(&server, &sid, "alice").await;
    assert!(
        v["endTime"].is_string() && v["duration"].as_u64().unwrap() >= 5,
        "{v}"
    );
    assert_eq!(
        &seen[seen.len() - 3..],
        ["ringing", "in-progress", "completed"]
    );

    // Every turn is stored: the first message, the caller, the reply.
    let t = turns(&server, &sid).await;
    for x in &t {
        eprintln!(
            "turn {} {}: `{}` asr {:?} ms, LLM first token {:?} ms, first audio {:?} ms, tokens {:?}",
            x.index, x.role, x.text, x.asr_ms, x.llm_first_ms, x.first_audio_ms, x.completion_tokens
        );
    }
    assert!(t.len() >= 3, "{t:#?}");
    assert_eq!((t[0].role.as_str(), t[0].text.as_str()), ("agent", FIRST));
    assert_eq!(t[1].role, "caller");
    assert_eq!(t[2].role, "agent");
    assert_eq!(t[2].heard.as_deref(), reply["text"].as_str());
    assert!(
        t[2].llm_first_ms.is_some() && t[2].first_audio_ms.is_some(),
        "{:?}",
        t[2]
    );
    assert!(t[2].completion_tokens.unwrap_or(0) > 0, "{:?}", t[2]);

    // The live view's audio is both parties: the caller's words and the agent's.
    let mut dec = AudioDecoder::new(Codec::Pcmu);
    let mut mixed = Vec::new();
    let frames = view.events_named("audio");
    assert!(frames.len() > 200, "{} audio frames", frames.len());
    for f in &frames {
        let b = base64_decode(f["payload"].as_str().unwrap());
        assert_eq!(b.len(), 160, "20 ms of 8 kHz µ-law");
        mixed.extend(dec.decode(&b).samples);
    }

    // The phone heard the first message (and then the reply). Delivery is judged against the
    // audio voxgate sent (the mix's first 5 s, before the caller speaks), window by window, so
    // that the phone's adaptive jitter buffer dropping or inserting a 10–20 ms frame (seen under
    // load) is not taken for lost audio; the words are judged by ASR on what the phone recorded,
    // which on a loaded machine misses a word now and then (piper's output differs per run).
    let (pcm, rate) = read_recording(&rec);
    let heard8: Vec<i16> = match rate {
        SampleRate::HZ_16000 => pcm.iter().step_by(2).copied().collect(),
        SampleRate::HZ_8000 => pcm.clone(),
        other => panic!("the phone recorded at {other:?}"),
    };
    let sent = &mixed[..mixed.len().min(5 * 8000)];
    let (voiced, found) = delivered(sent, &heard8, 8000);
    assert!(
        voiced >= 10 && found * 10 >= voiced * 8,
        "the phone's recording matches {found} of {voiced} voiced 200 ms windows voxgate sent"
    );
    let heard = transcribe_samples(&server, &pcm, rate, None).await;
    let w = head_wer(FIRST, &heard);
    assert!(w <= 0.25, "first message WER {w:.2}: heard `{heard}`");
    assert!(
        words(&heard).len() > words(FIRST).len(),
        "no reply was heard: `{heard}`"
    );

    let both = transcribe_samples(&server, &mixed, SampleRate::HZ_8000, None).await;
    let found = |reference: &str| {
        let w = words(&both);
        let r = words(reference);
        r.iter().filter(|x| w.contains(x)).count() as f64 / r.len() as f64
    };
    assert!(
        found(FIRST) >= 0.7,
        "agent words missing from the mix: `{both}`"
    );
    assert!(
        found(&said[0]) >= 0.6,
        "caller words missing from the mix: `{both}`"
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// What the scripted LLM saw.
#[derive(Default)]
struct Script {
    requests: Mutex<Vec<Value>>,
    /// The slow reply's connection was closed by voxgate before its end.
    cancelled: AtomicBool,
    failed_once: AtomicBool,
    turns: AtomicUsize,
    /// Stream the long reply a word every 40 ms (as a hosted LLM does), not every 250 ms.
    fast: AtomicBool,
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let v = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {v}\n\n")
}

const SLOW_REPLY: &str = "Our clinic is open on weekdays, from nine in the morning until five in the afternoon, and on Saturdays we open from ten until two, but on Sundays and public holidays we are closed, so please call again then.";

async fn scripted(
    script: Arc<Script>,
    axum::Json(req): axum::Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    script.requests.lock().unwrap().push(req.clone());
    if req["max_tokens"] == 1 {
        // The warm-up request.
        let body = format!(
            "{}{}data: [DONE]\n\n",
            chunk(json!({"role": "assistant", "content": "Hi"}), None),
            chunk(json!({}), Some("length"))
        );
        return ([("content-type", "text/event-stream")], body).into_response();
    }
    if !script.failed_once.swap(true, Ordering::SeqCst) {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
    }
    let turn = script.turns.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let s = script.clone();
    tokio::spawn(async move {
        if turn == 0 {
            // A slow reply, word by word: the caller interrupts it.
            let _ = tx
                .send(Ok(chunk(json!({"role": "assistant", "content": ""}), None)))
                .await;
            let word_ms = if s.fast.load(Ordering::SeqCst) {
                40
            } else {
                250
            };
            for w in SLOW_REPLY.split_inclusive(' ') {
                tokio::time::sleep(Duration::from_millis(word_ms)).await;
                if tx
                    .send(Ok(chunk(json!({"content": w}), None)))
                    .await
                    .is_err()
                {
                    s.cancelled.store(true, Ordering::SeqCst);
                    return;
                }
            }
            let _ = tx.send(Ok(chunk(json!({}), Some("stop")))).await;
        } else {
            // end_call, its arguments streamed in two pieces.
            let call = |args: &str, first: bool| {
                let mut c = json!({"index": 0, "function": {"arguments": args}});
                if first {
                    c["id"] = json!("call_1");
                    c["type"] = json!("function");
                    c["function"]["name"] = json!("end_call");
                }
                chunk(json!({"tool_calls": [c]}), None)
            };
            let _ = tx.send(Ok(call("{\"message\": \"Thank you, ", true))).await;
            let _ = tx.send(Ok(call("goodbye.\"}", false))).await;
            let _ = tx.send(Ok(chunk(json!({}), Some("tool_calls")))).await;
        }
        let _ = tx.send(Ok("data: [DONE]\n\n".to_string())).await;
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_llm_streams_is_cancelled_by_barge_in_and_ends_the_call() {
    let script = Arc::new(Script::default());
    let s = script.clone();
    let llm = llm_server(axum::routing::post(move |body| scripted(s.clone(), body))).await;

    let dir = tempfile::tempdir().unwrap();
    let caller = dir.path().join("caller.wav");
    // The question, then (while the slow reply plays) the interruption.
    speech_wav(&caller, &["0880", "0890"], 5000);
    let (sip_port, child, lines) = phone_with(
        "uas",
        &caller,
        Path::new("-"),
        "-",
        None,
        &[("PJ_PLAY_AFTER", "2.5")],
    )
    .await;
    let server = Server::start_with_config(
        &[],
        &format!(
            "{}[llm]\nbase_url = \"{llm}\"\nmodel = \"scripted\"\ntimeout_ms = 3000\nretries = 1\n",
            trunk(sip_port)
        ),
    );
    let (code, v) = post(
        &server,
        "/outbound-call",
        json!({"user_id": "alice", "number": "+15550100",
               "prompt": "You are the receptionist of a dental clinic.", "first_message": "Hi there."}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let sid = v["callSid"].as_str().unwrap().to_string();
    // end_call says goodbye and hangs up: the phone gets a BYE.
    let out = phone_done(child, lines).await;
    assert!(out.iter().any(|l| l == "EXIT 0"), "no BYE: {out:?}");
    let mut seen = Vec::new();
    wait_status(
        &server,
        &sid,
        "completed",
        Duration::from_secs(10),
        &mut seen,
    )
    .await;

    assert!(
        script.cancelled.load(Ordering::SeqCst),
        "the interrupted reply's request was not cancelled"
    );
    let reqs = script.requests.lock().unwrap().clone();
    let real: Vec<&Value> = reqs.iter().filter(|r| r["max_tokens"] != 1).collect();
    // The 503 was retried: the first turn was asked twice.
    assert!(real.len() >= 3, "{reqs:#?}");
    assert_eq!(real[0]["messages"], real[1]["messages"]);
    assert_eq!(real[0]["stream"], true);
    let tools: Vec<&str> = real[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["end_call"]);
    let sys = real[0]["messages"][0]["content"].as_str().unwrap();
    assert!(sys.starts_with("You are the receptionist of a dental clinic."));

    // The second request's history has what the caller heard of the slow reply: a proper prefix.
    let m = real[2]["messages"].as_array().unwrap();
    let heard = m.iter().rev().find(|x| x["role"] == "assistant").unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    // The caller spoke about 2 s into the reply (position-based cut, word boundary).
    assert!(
        heard.split_whitespace().count() >= 3
            && SLOW_REPLY.starts_with(&heard)
            && heard.len() < SLOW_REPLY.len() - 20,
        "heard `{heard}`"
    );
    assert_eq!(m.last().unwrap()["role"], "user");

    let t = turns(&server, &sid).await;
    for x in &t {
        eprintln!(
            "turn {} {}: `{}` heard `{:?}` first audio {:?} ms",
            x.index, x.role, x.text, x.heard, x.first_audio_ms
        );
    }
    let roles: Vec<&str> = t.iter().map(|x| x.role.as_str()).collect();
    // (A loaded machine's VAD may split an utterance: more caller turns, same shape.)
    assert_eq!(roles[..3], ["agent", "caller", "agent"], "{t:#?}");
    assert_eq!(roles.last(), Some(&"agent"), "{t:#?}");
    assert!(t[2].interrupted, "{:?}", t[2]);
    assert_eq!(t[2].heard.as_deref(), Some(heard.as_str()));
    assert!(t[2].llm_first_ms.is_some() && t[2].first_audio_ms.is_some());
    let last = t.last().unwrap();
    assert_eq!(last.tool.as_deref(), Some("end_call"));
    assert_eq!(last.text, "Thank you, goodbye.");
    assert!(!last.interrupted);
}

/// 20 ms frames of `s` (at `rate`) at or above -40 dBFS: the agent's audio as the phone heard it.
fn active_frames(s: &[i16], rate: SampleRate) -> Vec<bool> {
    let n = (rate.hz() / 50) as usize;
    s.chunks(n)
        .map(|c| {
            let e = c.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / c.len() as f64;
            10.0 * (e / 32768f64.powi(2)).max(1e-12).log10() >= -40.0
        })
        .collect()
}

/// A backchannel recorded by a human voice: Allison Smith's "oh" from Asterisk's English prompts
/// (Debian `asterisk-core-sounds-en-wav`, CC-BY-SA 3.0), 8 kHz, 0.58 s. Moonshine hears "Oh.".
const RECORDED_OH: &str = "/usr/share/asterisk/sounds/en_US_f_Allison/digits/oh.wav";

/// Turn-taking over a live reply (issue 9): a short noise burst (250 ms of white noise, no words)
/// and then a recorded backchannel ("oh") over the agent pause it and the agent resumes each
/// time, without a turn for either; a real question stops it, measured on what the phone heard
/// from the question's onset to the agent's silence; the interrupted reply keeps what was heard,
/// before and after the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noise_burst_and_a_backchannel_pause_the_agent_and_a_question_stops_it() {
    let script = Arc::new(Script::default());
    script.failed_once.store(true, Ordering::SeqCst);
    script.fast.store(true, Ordering::SeqCst);
    let s = script.clone();
    let llm = llm_server(axum::routing::post(move |body| scripted(s.clone(), body))).await;

    // The caller: a question (3.0 s), 4 s into the reply a noise burst, 2.5 s later "oh", 3 s
    // later a question.
    let dir = tempfile::tempdir().unwrap();
    let (q1, _) = read_wav(&clip("0880").0);
    let (q2, _) = read_wav(&clip("0930").0);
    let ms = |m: usize| m * 16;
    let mut wav = q1.clone();
    wav.extend(std::iter::repeat_n(0i16, ms(4000)));
    let burst_at = wav.len();
    let mut seed = 0x2545_f491_u32;
    wav.extend((0..ms(250)).map(|_| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        ((seed % 6000) as i32 - 3000) as i16
    }));
    wav.extend(std::iter::repeat_n(0i16, ms(2500)));
    let oh_at = wav.len();
    let (oh, oh_rate) = read_wav(std::path::Path::new(RECORDED_OH));
    wav.extend(voxgate_media::resample::resample_clip(&oh, oh_rate, SampleRate::HZ_16000).unwrap());
    let oh_end = wav.len();
    wav.extend(std::iter::repeat_n(0i16, ms(3000)));
    // The question's onset: its first loud 20 ms frame.
    let lead = active_frames(&q2, SampleRate::HZ_16000)
        .iter()
        .position(|&a| a)
        .unwrap()
        * ms(20);
    let question_at = wav.len() + lead;
    wav.extend(&q2);
    wav.extend(std::iter::repeat_n(0i16, ms(8000)));
    let caller = dir.path().join("caller.wav");
    write_wav16(&caller, &wav);

    let heard_wav = dir.path().join("heard.wav");
    let play_after = 2.5;
    let (sip_port, child, lines) = phone_with(
        "uas",
        &caller,
        &heard_wav,
        "-",
        None,
        &[("PJ_PLAY_AFTER", "2.5")],
    )
    .await;
    let server = Server::start_with_config(
        &[],
        &format!(
            "{}[llm]\nbase_url = \"{llm}\"\nmodel = \"scripted\"\ntimeout_ms = 3000\nretries = 1\n",
            trunk(sip_port)
        ),
    );
    let (code, v) = post(
        &server,
        "/outbound-call",
        json!({"user_id": "alice", "number": "+15550100",
               "prompt": "You are the receptionist of a dental clinic.", "first_message": "Hi there."}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let sid = v["callSid"].as_str().unwrap().to_string();
    let out = phone_done(child, lines).await;
    assert!(out.iter().any(|l| l == "EXIT 0"), "no BYE: {out:?}");

    let (heard, rate) = read_recording(&heard_wav);
    let act = active_frames(&heard, rate);
    eprintln!(
        "heard {} s at {} Hz: {}",
        heard.len() as f64 / rate.hz() as f64,
        rate.hz(),
        act.chunks(25)
            .map(|c| if c.iter().any(|&x| x) { '#' } else { '.' })
            .collect::<String>()
    );
    // Caller-file positions on the recording's clock (the recorder starts with the media, the
    // player `play_after` later).
    let frame_of = |sample: usize| ((play_after + sample as f64 / 16000.0) * 50.0) as usize;
    let share = |a: usize, b: usize| {
        let w = &act[a.min(act.len())..b.min(act.len())];
        w.iter().filter(|&&x| x).count() as f64 / w.len().max(1) as f64
    };
    let burst = frame_of(burst_at);
    let before = share(burst - 50, burst);
    let resumed = share(burst + 75, frame_of(oh_at) - 10);
    let before_oh = share(frame_of(oh_at) - 50, frame_of(oh_at));
    let after_oh = share(frame_of(oh_end) + 75, frame_of(question_at) - 10);
    eprintln!("agent audio: {before:.2} of the second before the burst, {resumed:.2} between 1.5 s after it and the \"oh\", {before_oh:.2} of the second before the \"oh\", {after_oh:.2} between 1.5 s after it and the question");
    assert!(
        before > 0.4,
        "the agent was speaking when the burst came ({before:.2})"
    );
    assert!(
        resumed > 0.4,
        "the agent did not resume after the noise ({resumed:.2})"
    );
    assert!(
        before_oh > 0.4,
        "the agent was speaking when the \"oh\" came ({before_oh:.2})"
    );
    assert!(
        after_oh > 0.4,
        "the agent did not resume after the \"oh\" ({after_oh:.2})"
    );
    // The agent's silence after the question's onset: the first of 20 quiet frames (400 ms).
    let onset = frame_of(question_at);
    let stop = (onset..act.len().saturating_sub(20))
        .find(|&i| act[i..i + 20].iter().all(|&x| !x))
        .expect("the agent never stopped");
    let stop_ms = (stop as i64 - onset as i64) * 20;
    eprintln!("question onset -> agent silent at the phone: {stop_ms} ms");
    // 120 ms of voiced speech (the agent's barge-in) plus both directions' RTP framing and the
    // phone's jitter buffer: 280-360 ms at the phone across runs here; the 300 ms is
    // voxgate's share (the pause at 120 ms of voice), the rest is the phone's.
    assert!(
        stop_ms <= 400,
        "the agent went on {stop_ms} ms into the question"
    );

    let mut seen = Vec::new();
    wait_status(
        &server,
        &sid,
        "completed",
        Duration::from_secs(10),
        &mut seen,
    )
    .await;
    let t = turns(&server, &sid).await;
    for x in &t {
        eprintln!(
            "turn {} {}: `{}` heard {:?} interrupted {}",
            x.index, x.role, x.text, x.heard, x.interrupted
        );
    }
    let reply = t
        .iter()
        .find(|x| x.role == "agent" && x.interrupted)
        .expect("an interrupted reply");
    let heard_words = reply
        .heard
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .count();
    // 4 s of reply before the burst, 3 s after it: far more than 4 s' worth was heard.
    assert!(heard_words >= 14, "heard only `{:?}`", reply.heard);
    assert!(
        !t.iter()
            .any(|x| x.role == "caller" && x.text.trim().is_empty()),
        "{t:#?}"
    );
    // The "oh" was heard (its transcript is stored with the call's) but was no turn: not stored
    // as the caller's, and the model was not asked about it.
    let store = SqliteStore::open(&server.db_url()).await.unwrap();
    let heard_text: Vec<String> = store
        .transcript(&sid)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.text)
        .collect();
    eprintln!("the call's transcript: {heard_text:?}");
    let is_oh = |text: &str| {
        text.trim()
            .trim_matches(|c: char| !c.is_alphanumeric())
            .eq_ignore_ascii_case("oh")
    };
    assert!(heard_text.iter().any(|x| is_oh(x)), "{heard_text:?}");
    assert!(
        !t.iter().any(|x| x.role == "caller" && is_oh(&x.text)),
        "{t:#?}"
    );
    let reqs = script.requests.lock().unwrap().clone();
    assert!(
        !reqs.iter().any(|r| r["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .is_some_and(is_oh)),
        "{reqs:#?}"
    );
}

/// A scripted server whose first answer starts after 2.5 s and whose later requests fail (500).
#[derive(Default)]
struct Stalling {
    requests: Mutex<Vec<Value>>,
    turns: AtomicUsize,
}

async fn stalling(
    script: Arc<Stalling>,
    axum::Json(req): axum::Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    script.requests.lock().unwrap().push(req.clone());
    let sse = |pieces: &[&str], finish: &str| {
        let mut body = chunk(json!({"role": "assistant", "content": ""}), None);
        for p in pieces {
            body.push_str(&chunk(json!({"content": p}), None));
        }
        body.push_str(&chunk(json!({}), Some(finish)));
        body.push_str("data: [DONE]\n\n");
        ([("content-type", "text/event-stream")], body).into_response()
    };
    if req["max_tokens"] == 1 {
        return sse(&["Hi"], "length");
    }
    if script.turns.fetch_add(1, Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        return sse(&["We open ", "at nine."], "stop");
    }
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal error",
    )
        .into_response()
}

/// A slow first token gets the holding phrase (`[agent] hold_ms`) before the answer, and the
/// model's history keeps only the answer; a request that fails after its retry gets the apology,
/// stored with its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_model_gets_the_holding_phrase_and_a_failed_one_the_apology() {
    let script = Arc::new(Stalling::default());
    let s = script.clone();
    let llm = llm_server(axum::routing::post(move |body| stalling(s.clone(), body))).await;

    let dir = tempfile::tempdir().unwrap();
    let caller = dir.path().join("caller.wav");
    speech_wav(&caller, &["0880", "0930"], 8000);
    let (sip_port, child, lines) = phone_with(
        "uas",
        &caller,
        Path::new("-"),
        "-",
        None,
        &[("PJ_PLAY_AFTER", "2.5")],
    )
    .await;
    let server = Server::start_with_config(
        &[("VOXGATE_AGENT__HOLD_MS", "800")],
        &format!(
            "{}[llm]\nbase_url = \"{llm}\"\nmodel = \"scripted\"\ntimeout_ms = 5000\nretries = 1\n",
            trunk(sip_port)
        ),
    );
    let (code, v) = post(
        &server,
        "/outbound-call",
        json!({"user_id": "alice", "number": "+15550100",
               "prompt": "You are the receptionist of a dental clinic.", "first_message": "Hi there."}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let sid = v["callSid"].as_str().unwrap().to_string();
    // Wait for the apology's turn, then hang up.
    let deadline = Instant::now() + Duration::from_secs(40);
    let t = loop {
        let t = turns(&server, &sid).await;
        if t.iter().any(|x| x.error.is_some()) {
            break t;
        }
        assert!(Instant::now() < deadline, "no failed turn: {t:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (code, v) = post(
        &server,
        "/end-call",
        json!({"callSid": sid, "user_id": "alice"}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let out = phone_done(child, lines).await;
    assert!(out.iter().any(|l| l == "EXIT 0"), "no BYE: {out:?}");
    for x in &t {
        eprintln!(
            "turn {} {}: `{}` llm first {:?} first audio {:?} error {:?}",
            x.index, x.role, x.text, x.llm_first_ms, x.first_audio_ms, x.error
        );
    }
    let agent: Vec<&AgentTurnRecord> = t.iter().filter(|x| x.role == "agent").collect();
    assert!(agent.len() >= 3, "{t:#?}");
    let (held, failed) = (agent[1], agent.last().unwrap());
    assert_eq!(held.text, "We open at nine.");
    let (first_token, first_audio) = (held.llm_first_ms.unwrap(), held.first_audio_ms.unwrap());
    assert!(
        first_audio + 1000 < first_token,
        "the holding phrase played at {first_audio} ms, the first token came at {first_token} ms"
    );
    assert!(failed.error.is_some());
    assert!(
        failed
            .text
            .ends_with("Sorry, I did not catch that. Could you say it again?"),
        "{failed:?}"
    );
    let reqs = script.requests.lock().unwrap().clone();
    let real: Vec<&Value> = reqs.iter().filter(|r| r["max_tokens"] != 1).collect();
    // The answer, then the failing turn asked twice (500, retried).
    assert_eq!(real.len(), 3, "{real:#?}");
    let m = real[1]["messages"].as_array().unwrap();
    let said: Vec<&str> = m
        .iter()
        .filter(|x| x["role"] == "assistant")
        .map(|x| x["content"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        said.last(),
        Some(&"We open at nine."),
        "the holding phrase is not the model's: {m:#?}"
    );
}

/// A model that answers the caller's first question with the `transfer` tool.
async fn transferring(axum::Json(req): axum::Json<Value>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = if req["max_tokens"] == 1 {
        format!(
            "{}{}",
            chunk(json!({"role": "assistant", "content": "Hi"}), None),
            chunk(json!({}), Some("length"))
        )
    } else {
        let call = json!({"index": 0, "id": "call_t", "type": "function",
                          "function": {"name": "transfer", "arguments": "{}"}});
        format!(
            "{}{}",
            chunk(json!({"role": "assistant", "tool_calls": [call]}), None),
            chunk(json!({}), Some("tool_calls"))
        )
    };
    (
        [("content-type", "text/event-stream")],
        format!("{body}data: [DONE]\n\n"),
    )
        .into_response()
}

/// The `transfer` tool (offered with `[agent] transfer_to`): the agent announces it, then sends a
/// SIP REFER to the target; the callee (SIPp) accepts, reports success in a NOTIFY, and voxgate
/// hangs up; the call is `completed` and the turn stored with its tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transfer_tool_refers_the_callee_to_the_configured_target() {
    common::sipp::sipp_available();
    let llm = llm_server(axum::routing::post(transferring)).await;

    let dir = tempfile::tempdir().unwrap();
    // The caller's question as headerless 8 kHz mu-law for SIPp's rtp_stream.
    let (pcm, rate) = read_wav(&clip("0880").0);
    let pcm8 = voxgate_media::resample::resample_clip(&pcm, rate, SampleRate::HZ_8000).unwrap();
    let mut enc = voxgate_media::codec::AudioEncoder::new(Codec::Pcmu);
    let audio = dir.path().join("question.ulaw");
    std::fs::write(
        &audio,
        enc.encode(&voxgate_media::AudioFrame::mono(SampleRate::HZ_8000, pcm8)),
    )
    .unwrap();
    let target = "sip:desk@127.0.0.1:5999";
    let scen = common::sipp::scenario(
        dir.path(),
        "uas_refer.xml",
        &[
            ("@AUDIO@", &audio.display().to_string()),
            ("@WAIT_MS@", "2500"),
            ("@TARGET@", target),
        ],
    );
    let (port, sipp) = common::sipp::spawn_sipp_uas(
        vec!["-sf".into(), scen.display().to_string()],
        dir.path().to_path_buf(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = Server::start_with_config(
        &[("VOXGATE_AGENT__TRANSFER_TO", target)],
        &format!(
            "{}[llm]\nbase_url = \"{llm}\"\nmodel = \"scripted\"\n",
            trunk(port)
        ),
    );
    let (code, v) = post(
        &server,
        "/outbound-call",
        json!({"user_id": "alice", "number": "+15550100",
               "prompt": "Transfer every caller to the front desk.", "first_message": "Hi there."}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let sid = v["callSid"].as_str().unwrap().to_string();
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "SIPp: {log}");
    let mut seen = Vec::new();
    wait_status(
        &server,
        &sid,
        "completed",
        Duration::from_secs(10),
        &mut seen,
    )
    .await;
    let t = turns(&server, &sid).await;
    let last = t.last().unwrap();
    assert_eq!(
        (last.role.as_str(), last.tool.as_deref(), last.text.as_str()),
        ("agent", Some("transfer"), "Transferring your call now."),
        "{t:#?}"
    );
    assert!(!last.interrupted);
}
