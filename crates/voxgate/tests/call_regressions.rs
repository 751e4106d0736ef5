//! Regression tests for defects found by review in the seed-002 `/call` endpoint, against the real
//! binary: audio in one long binary message, a paused player after `interrupt`, reused call ids,
//! the WebSocket message limit.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use voxgate::store::sqlite::SqliteStore;
use voxgate::store::Store;
use voxgate_media::codec::Codec;
use voxgate_media::SampleRate;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn digits(c: &Client) -> String {
    c.events_named("dtmf")
        .iter()
        .map(|e| e["digit"].as_str().unwrap().to_string())
        .collect()
}

/// A binary message holding more than a second of audio is processed whole (it used to keep only
/// its last second): six DTMF keys spread over 1.6 s, sent as one 13 kB PCMU message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_binary_message_is_not_truncated() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let mut c = Client::connect(&server.ws_url("?dump=false")).await;
    c.send(
        json!({ "command": "invite", "option": { "codec": "pcmu", "asr": { "enabled": false } } }),
    )
    .await;
    c.wait_event("answer", SECS(10)).await;
    let frames = encode_frames(&dtmf_audio("123456"), SampleRate::HZ_16000, Codec::Pcmu);
    let one_message: Vec<u8> = frames.concat();
    assert!(one_message.len() > 8000 * 3 / 2, "{}", one_message.len());
    c.send_binary(one_message).await;
    c.stream_realtime(&silence_frames(400, Codec::Pcmu)).await;
    let deadline = Instant::now() + SECS(5);
    while digits(&c).len() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(digits(&c), "123456");
    assert!(
        c.events_named("error").is_empty(),
        "{:?}",
        c.events_named("error")
    );
}

/// `interrupt` on a paused track leaves the player playing: the next track is heard (it used to
/// stay paused and silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_after_pause_lets_the_next_track_play() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let mut c = Client::connect(&server.ws_url("?dump=false")).await;
    c.send(
        json!({ "command": "invite", "option": { "codec": "pcm", "asr": { "enabled": false } } }),
    )
    .await;
    c.wait_event("answer", SECS(10)).await;
    c.send(json!({ "command": "tts", "text": "This is a long sentence that will be paused and then interrupted.", "playId": "one", "option": { "provider": "flite" } }))
        .await;
    c.wait_event("trackStart", SECS(20)).await;
    c.send(json!({ "command": "pause" })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(json!({ "command": "interrupt" })).await;
    c.wait_event("interruption", SECS(5)).await;
    let before = c.audio_bytes().len();
    c.send(json!({ "command": "tts", "text": "Hello again.", "playId": "two", "option": { "provider": "flite" } }))
        .await;
    c.wait_for("the second track's end", SECS(20), |e| {
        e["event"] == "trackEnd" && e["trackId"] == "two"
    })
    .await;
    let after = c.audio_bytes().len();
    // "Hello again." in flite lasts about a second: 16 kHz PCM is 32 kB per second.
    assert!(
        after - before > 16_000,
        "only {} bytes of the second track",
        after - before
    );
}

/// A call id is never reused: a second connection with the id of an ended call gets 409 and the
/// first call's stored record and transcript are left as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_call_id_is_refused_and_its_record_kept() {
    let server = Server::start();
    let mut c = Client::connect(&server.ws_url("?id=reuse-me&dump=false")).await;
    c.send(json!({ "command": "invite", "option": { "codec": "pcmu", "caller": "first" } }))
        .await;
    c.wait_event("answer", SECS(10)).await;
    let (s, rate) = read_wav(&librivox()[2].0);
    c.stream_realtime(&encode_frames(&s, rate, Codec::Pcmu))
        .await;
    c.stream_realtime(&silence_frames(1000, Codec::Pcmu)).await;
    c.wait_event("asrFinal", SECS(30)).await;
    c.send(json!({ "command": "hangup", "reason": "first-done" }))
        .await;
    c.wait_event("hangup", SECS(20)).await;
    c.wait_closed(SECS(5)).await;

    let e = tokio_tungstenite::connect_async(server.ws_url("?id=reuse-me"))
        .await
        .unwrap_err();
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status(), 409);
            let body: serde_json::Value =
                serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["code"], "conflict", "{body}");
            assert!(body["message"].as_str().unwrap().contains("never reused"));
        }
        other => panic!("expected HTTP 409, got {other}"),
    }
    let store = SqliteStore::open(&server.db_url()).await.unwrap();
    let rec = store.call("reuse-me").await.unwrap().unwrap();
    assert_eq!(
        (rec.caller.as_deref(), rec.hangup_reason.as_deref()),
        (Some("first"), Some("first-done"))
    );
    let t = store.transcript("reuse-me").await.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(
        t[0].text,
        c.events_named("asrFinal")[0]["text"].as_str().unwrap()
    );
}

/// With the Silero VAD (its ONNX model now runs on the blocking pool, not on the call's task) a
/// call still hears and transcribes real speech.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silero_vad_segments_real_speech() {
    let server = Server::start_with(&[("VOXGATE_VAD__ENGINE", "silero")]);
    let mut c = Client::connect(&server.ws_url("?dump=false")).await;
    c.send(json!({ "command": "invite", "option": { "codec": "pcmu" } }))
        .await;
    c.wait_event("answer", SECS(10)).await;
    let (wav, reference) = librivox()[0].clone();
    let (s, rate) = read_wav(&wav);
    c.stream_realtime(&encode_frames(&s, rate, Codec::Pcmu))
        .await;
    c.stream_realtime(&silence_frames(1200, Codec::Pcmu)).await;
    let fin = c.wait_event("asrFinal", SECS(30)).await;
    let w = wer(&reference, fin["text"].as_str().unwrap());
    assert!(w <= 0.1, "{fin}");
    assert!(!c.events_named("speaking").is_empty());
}

/// `call.max_binary_bytes` bounds what is read: over it a message gets a 413 `error` event and the
/// call goes on; over four times it (and over 64 KiB, room for text commands) the socket is
/// closed (1009) and the call ends. It used to read up to 16 MiB whatever the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_limit_follows_max_binary_bytes() {
    let server = Server::start_with(&[
        ("VOXGATE_ASR__ENGINE", "none"),
        ("VOXGATE_CALL__MAX_BINARY_BYTES", "2000"),
    ]);
    let mut c = Client::connect(&server.ws_url("?id=limits&dump=false")).await;
    c.send(
        json!({ "command": "invite", "option": { "codec": "pcmu", "asr": { "enabled": false } } }),
    )
    .await;
    c.wait_event("answer", SECS(10)).await;
    c.send_binary(vec![0xff; 3000]).await;
    let e = c.wait_event("error", SECS(5)).await;
    assert_eq!(e["code"], 413, "{e}");
    c.send_binary(vec![0xff; 160]).await;
    c.send(json!({ "command": "dtmf", "digits": "1" })).await;
    c.wait_event("trackEnd", SECS(5)).await;
    c.send_binary(vec![0xff; 70_000]).await;
    let h = c.wait_event("hangup", SECS(10)).await;
    assert_eq!(h["reason"], "disconnected", "{h}");
    c.wait_closed(SECS(5)).await;
}
