//! Seed 003 end to end: `/pbx/call` dials a PJSUA2 phone through a trunk; the official Socket.IO
//! clients (python-socketio and the npm socket.io-client), each over websocket and polling, drive
//! the call: `newSession`, `joinRoom`, `dialStatus`, the far end's speech as 320-byte 8 kHz
//! Buffers, MP3 and µ-law audio that the far end records, `checkPoint` after playout,
//! `interruption`, DTMF both ways, bad payloads, and hang-up (Socket.IO `hangup` or
//! `/pbx/hangup`). The phone plays LibriVox speech; what each side heard is transcribed by
//! voxgate's ASR and compared with the reference.

mod common;

use common::pjsua::*;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use voxgate_media::codec::Codec;
use voxgate_media::SampleRate;

const NUMBER_IN: &str = "+12025550150";

/// Headerless µ-law at 8 kHz of a WAV.
fn ulaw_file(wav: &Path, out: &Path) {
    let (s, r) = read_wav(wav);
    let bytes: Vec<u8> = encode_frames(&s, r, Codec::Pcmu).concat();
    std::fs::write(out, bytes).unwrap();
}

/// MP3 (LAME through lameenc, 32 kbit/s mono at the WAV's rate) of a WAV.
fn mp3_file(wav: &Path, out: &Path) {
    let script = "import sys, wave, lameenc\n\
w = wave.open(sys.argv[1]); e = lameenc.Encoder()\n\
e.set_bit_rate(32); e.set_in_sample_rate(w.getframerate()); e.set_channels(1); e.set_quality(2)\n\
data = e.encode(w.readframes(w.getnframes())) + e.flush()\n\
open(sys.argv[2], 'wb').write(data)\n";
    let st = std::process::Command::new(venv_python())
        .args(["-c", script])
        .arg(wav)
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "lameenc failed");
}

struct Setup {
    server: Server,
    key: String,
    dir: tempfile::TempDir,
    child: tokio::process::Child,
    lines: tokio::task::JoinHandle<Vec<String>>,
}

async fn setup(record: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (far, _) = clip("0870");
    let rec = if record == "-" {
        PathBuf::from("-")
    } else {
        dir.path().join(record)
    };
    let (sip_port, child, lines) = phone("uas", &far, &rec, "7", None).await;
    let toml = format!(
        "[[sip.trunks]]\nname = \"carrier\"\nhost = \"127.0.0.1:{sip_port}\"\nkeepalive_secs = 0\n\
         [pbx.numbers]\n\"{NUMBER_IN}\" = \"alice\"\n"
    );
    let server = Server::start_with_config(&[("VOXGATE_ASR__INSTANCES", "1")], &toml);
    let key = server.cli(&["keys", "create", "--user", "alice"]);
    Setup {
        server,
        key,
        dir,
        child,
        lines,
    }
}

fn wer_of(reference: &str, heard: &str) -> f64 {
    wer(reference, heard)
}

/// One outbound seed-003 call with `client` (`python` or `node`) over `transport`.
async fn outbound(client: &str, transport: &str, hangup: &str) {
    let mut s = setup("far.wav").await;
    let d = s.dir.path();
    let (mp3_src, mp3_text) = clip("0890");
    let (ulaw_src, ulaw_text) = clip("0920");
    let (int_src, _) = clip("0880");
    mp3_file(&mp3_src, &d.join("in.mp3"));
    ulaw_file(&ulaw_src, &d.join("in.ulaw"));
    ulaw_file(&int_src, &d.join("int.ulaw"));
    let cfg = json!({
        "url": format!("http://{}", s.server.addr), "token": s.key, "transport": transport,
        "number": "+15550100", "mp3": d.join("in.mp3"), "ulaw": d.join("in.ulaw"),
        "ulaw_interrupt": d.join("int.ulaw"), "out_raw": d.join("heard.raw"),
        "hangup": hangup, "timeout": 90,
    });
    let mut cmd = match client {
        "python" => {
            let mut c = tokio::process::Command::new(venv_python());
            c.arg(peers().join("sio_client.py"));
            c
        }
        _ => {
            let mut c = tokio::process::Command::new("node");
            c.arg(peers().join("node/sio_client.js"));
            c
        }
    };
    cmd.arg(cfg.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("client finished")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{client} client failed:\n{stderr}");
    let sum: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    let ctx = serde_json::to_string_pretty(&sum).unwrap();
    let far = tokio::time::timeout(Duration::from_secs(30), s.child.wait())
        .await
        .expect("the phone saw the hang-up")
        .unwrap();
    let far_lines = s.lines.await.unwrap();
    assert!(far.success(), "phone: {far_lines:?}");

    // REST envelope and the room.
    assert_eq!(sum["call"]["status"], 200, "{ctx}");
    let body = if sum["call"]["body"].is_object() {
        &sum["call"]["body"]
    } else {
        &sum["call"][1]
    };
    assert_eq!(body["status"], 200, "{ctx}");
    assert_eq!(body["errors"], "", "{ctx}");
    let sid = body["data"]["sessionId"].as_str().unwrap();
    assert_eq!(body["data"]["phoneNumber"], "+15550100");
    let ev = |name: &str| -> Vec<Value> {
        sum["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e[0] == name)
            .map(|e| e[2].clone())
            .collect()
    };
    assert_eq!(
        ev("newSession")[0],
        json!({"sessionId": sid, "type": "outbound"}),
        "{ctx}"
    );
    assert_eq!(
        ev("roomJoined")[0],
        json!({"sessionId": sid, "status": "success"}),
        "{ctx}"
    );
    let dial: Vec<&str> = sum["dial"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        ["Dialing", "Ringing", "Connected"].contains(&dial[0]),
        "{dial:?}"
    );
    assert!(dial.contains(&"Connected"), "{dial:?}");
    assert_eq!(sum["transport"], transport, "{ctx}");

    // The far end's audio: 320-byte Buffers, 50 per second.
    let sizes = sum["audio_sizes"].as_object().unwrap();
    assert_eq!(sizes.keys().collect::<Vec<_>>(), vec!["320"], "{sizes:?}");
    let n = sum["audio_count"].as_f64().unwrap();
    let span = sum["audio_last"].as_f64().unwrap() - sum["audio_first"].as_f64().unwrap();
    let rate = n / span;
    assert!(
        (45.0..=55.0).contains(&rate),
        "{n} Buffers in {span:.1} s = {rate:.1}/s"
    );
    if std::env::var("PBX_TEST_KEEP").is_ok() {
        let kept = s.dir.keep();
        eprintln!("kept {}\n{ctx}\n{far_lines:?}", kept.display());
        s.dir = tempfile::tempdir().unwrap();
        let _ = std::fs::copy(kept.join("heard.raw"), s.dir.path().join("heard.raw"));
        let _ = std::fs::copy(kept.join("far.wav"), s.dir.path().join("far.wav"));
    }
    let d = s.dir.path();
    let raw = std::fs::read(d.join("heard.raw")).unwrap();
    let pcm: Vec<i16> = raw
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let heard = transcribe_samples(&s.server, &pcm, SampleRate::HZ_8000, Some(&s.key)).await;
    let (_, far_text) = clip("0870");
    let w = wer_of(&far_text, &heard);
    eprintln!(
        "{client}/{transport}: client heard (WER {:.1} %): {heard}",
        w * 100.0
    );
    assert!(w <= 0.15, "WER {w:.2}: `{heard}` vs `{far_text}`");

    // Acks.
    let acks = &sum["acks"];
    for bad in [
        "before_join",
        "bad_format",
        "bad_session",
        "no_data",
        "garbage_mp3",
    ] {
        assert_eq!(acks[bad]["success"], false, "{bad}: {ctx}");
        assert!(
            acks[bad]["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{bad}"
        );
    }
    for good in ["mp3", "ulaw"] {
        for a in acks[good].as_array().unwrap() {
            assert_eq!(a, &json!({"success": true, "error": null}), "{good}: {ctx}");
        }
    }
    // checkPoints come back after playout, not when queued: the MP3 is 5.3 s, the µ-law 6 s.
    let cp = &sum["checkpoints"];
    let mp3_played = cp["mp3"].as_f64().unwrap() - sum["mp3_sent_at"].as_f64().unwrap();
    assert!(
        (5.0..9.0).contains(&mp3_played),
        "mp3 checkPoint after {mp3_played:.2} s"
    );
    let ulaw_played = cp["ulaw"].as_f64().unwrap() - sum["ulaw_sent_at"].as_f64().unwrap();
    assert!(
        (5.8..9.5).contains(&ulaw_played),
        "ulaw checkPoint after {ulaw_played:.2} s"
    );
    let cut = cp["after-interrupt"].as_f64().unwrap() - sum["interrupt_at"].as_f64().unwrap();
    assert!(cut < 0.3, "checkPoint after interruption took {cut:.2} s");
    // DTMF both ways.
    assert_eq!(sum["dtmf"], json!(["7"]), "{ctx}");
    // The phone heard "5" for about the 200 ms the client asked for.
    let five: Vec<u32> = far_lines
        .iter()
        .filter_map(|l| l.strip_prefix("DTMF 5 ")?.parse().ok())
        .collect();
    assert_eq!(five.len(), 1, "{far_lines:?}");
    assert!(
        (150..=300).contains(&five[0]),
        "DTMF 5 lasted {} ms",
        five[0]
    );
    // Hang-up reached the client and the phone (BYE).
    assert!(sum["hangup"].is_number(), "{ctx}");
    if hangup == "rest" {
        assert_eq!(sum["hangup_rest"][0], 200, "{ctx}");
        assert_eq!(sum["hangup_rest"][1]["data"]["sessionId"], sid);
    }
    assert!(
        far_lines.iter().any(|l| l == "STATE DISCONNECTED"),
        "{far_lines:?}"
    );

    // What the phone recorded: the MP3 and the µ-law speech, in order.
    let (rec, rec_rate) = read_recording(&d.join("far.wav"));
    let heard_far = transcribe_samples(&s.server, &rec, rec_rate, Some(&s.key)).await;
    let reference = format!("{mp3_text} {ulaw_text}");
    let w = wer_of(&reference, &heard_far);
    eprintln!(
        "{client}/{transport}: phone heard (WER {:.1} %): {heard_far}",
        w * 100.0
    );
    assert!(w <= 0.15, "WER {w:.2}: `{heard_far}` vs `{reference}`");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_over_websocket() {
    outbound("python", "websocket", "socket").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_over_polling() {
    outbound("python", "polling", "rest").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_client_over_websocket() {
    outbound("node", "websocket", "rest").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_client_over_polling() {
    outbound("node", "polling", "socket").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inbound_call_to_the_users_number_opens_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("[pbx.numbers]\n\"{NUMBER_IN}\" = \"alice\"\n");
    let server = Server::start_with_config(&[("VOXGATE_ASR__ENGINE", "none")], &toml);
    let alice = server.cli(&["keys", "create", "--user", "alice"]);
    let bob = server.cli(&["keys", "create", "--user", "bob"]);
    let run = |key: &str| {
        let cfg = json!({
            "url": format!("http://{}", server.addr), "token": key, "transport": "websocket",
            "inbound": true, "out_raw": dir.path().join(format!("in-{}.raw", &key[3..8])),
        });
        let mut c = tokio::process::Command::new(venv_python());
        c.arg(peers().join("sio_client.py"))
            .arg(cfg.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c.spawn().unwrap()
    };
    // bob's client must not hear of alice's call.
    let bob_client = run(&bob);
    let alice_client = run(&alice);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (far, _) = clip("0870");
    let target = format!("sip:{NUMBER_IN}@{}", server.sip_addr);
    let (_, mut child, lines) = phone("uac", &far, Path::new("-"), "-", Some(&target)).await;
    let out = tokio::time::timeout(Duration::from_secs(60), alice_client.wait_with_output())
        .await
        .expect("client finished")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ns: Vec<&Value> = sum["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e[0] == "newSession")
        .collect();
    assert_eq!(ns.len(), 1, "{sum}");
    assert_eq!(ns[0][2]["type"], "inbound");
    assert!(
        sum["dial"]
            .as_array()
            .unwrap()
            .contains(&json!("Connected")),
        "{sum}"
    );
    assert!(sum["audio_count"].as_u64().unwrap() > 100, "{sum}");
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let far_lines = lines.await.unwrap();
    assert!(
        far_lines.iter().any(|l| l == "STATE CONFIRMED"),
        "{far_lines:?}"
    );
    // bob's client heard nothing (it times out waiting for Connected).
    let mut bob_client = bob_client;
    let _ = bob_client.kill().await;
    let out = bob_client.wait_with_output().await.unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("newSession"));
}

/// Several sockets share a room and each gets the call's events; a socket that disconnects and
/// comes back (a reconnection) rejoins and goes on with the same call. Another user's socket can
/// neither join, feed nor hang up the call, and never hears of it.
#[tokio::test(flavor = "multi_thread")]
async fn sockets_share_a_room_and_a_reconnected_socket_continues_the_call() {
    let mut s = setup("-").await;
    let bob = s.server.cli(&["keys", "create", "--user", "bob"]);
    let cfg = json!({
        "url": format!("http://{}", s.server.addr), "token": s.key, "transport": "websocket",
        "number": "+15550100", "other_token": bob,
    });
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(venv_python())
            .arg(peers().join("sio_rejoin.py"))
            .arg(cfg.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("client finished")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum: Value = serde_json::from_slice(&out.stdout).unwrap();
    // 2 s of audio in both sockets (50 Buffers a second).
    for who in ["a", "b"] {
        let n = sum["both"][who].as_u64().unwrap();
        assert!(n >= 80, "{who} got {n} Buffers: {sum}");
    }
    assert!(sum["b_while_a_away"].as_u64().unwrap() >= 50, "{sum}");
    // python-socketio reports the refusal without the server's reason.
    assert_ne!(sum["bad_token"], "accepted", "{sum}");
    // bob: refused everywhere, told nothing.
    assert_eq!(sum["other_join"][0]["status"], "failed", "{sum}");
    assert_eq!(sum["other_audio_ack"]["success"], false, "{sum}");
    assert_eq!(sum["other_rest_hangup"], 404, "{sum}");
    assert_eq!(sum["other_audio"], 0, "{sum}");
    assert!(
        !sum["other_events"].to_string().contains("newSession"),
        "{sum}"
    );
    assert!(sum["a2_audio"].as_u64().unwrap() >= 30, "{sum}");
    assert_eq!(sum["a2_hangup"], true, "{sum}");
    assert_eq!(sum["b_hangup"], true, "{sum}");
    let far = tokio::time::timeout(Duration::from_secs(20), s.child.wait())
        .await
        .expect("the phone saw the BYE")
        .unwrap();
    assert!(far.success());
}
