//! SIP/RTP end-to-end tests against SIPp (`sip-tester`), with the real binary, over loopback.

mod common;

use common::sipp::*;
use common::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use voxgate::store::sqlite::SqliteStore;
use voxgate::store::Store;

const PCAPS: &str = "/usr/share/sip-tester";

fn digits(c: &Client) -> String {
    c.events_named("dtmf")
        .iter()
        .map(|e| e["digit"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_caller_speech_and_rfc4733_dtmf_reach_a_waiting_client() {
    sipp_available();
    let server = Server::start();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(
        dir.path(),
        "uac_audio.xml",
        &[
            ("@SPEECH@", &format!("{PCAPS}/g711a.pcap")),
            ("@DTMF1@", &format!("{PCAPS}/dtmf_2833_1.pcap")),
            ("@DTMF2@", &format!("{PCAPS}/dtmf_2833_pound.pcap")),
        ],
    );
    let sipp = tokio::spawn(sipp_uac(&server, &scen, "1000", dir.path(), &[]));

    let incoming = client.wait_event("incoming", Duration::from_secs(20)).await;
    assert_eq!(incoming["caller"], "5551234");
    assert_eq!(incoming["callee"], "1000");
    assert!(
        incoming["sdp"].as_str().unwrap().contains("PCMA/8000"),
        "{incoming}"
    );
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    let answer = client.wait_event("answer", Duration::from_secs(10)).await;
    assert!(
        answer["sdp"].as_str().unwrap().contains("m=audio "),
        "{answer}"
    );

    client.wait_event("speaking", Duration::from_secs(20)).await;
    let fin = client.wait_event("asrFinal", Duration::from_secs(40)).await;
    assert!(!fin["text"].as_str().unwrap().trim().is_empty(), "{fin}");
    let hangup = client.wait_event("hangup", Duration::from_secs(40)).await;
    assert_eq!(hangup["reason"], "bye", "{hangup}");
    assert_eq!(hangup["initiator"], "caller", "{hangup}");
    assert_eq!(
        digits(&client),
        "1#",
        "RFC 4733 events, each reported once: {:?}",
        client.events_named("dtmf")
    );

    let rtp = client
        .events_named("metrics")
        .into_iter()
        .find(|e| e["key"] == "rtp")
        .expect("rtp quality metrics");
    // g711a.pcap: 236 packets of 30 ms; each DTMF pcap: 8 sequence numbers (its end packet is sent
    // three times: duplicates are not counted). The two DTMF recordings share an SSRC and their
    // sequence numbers are 444 apart, which RFC 3550 A.3 counts as lost.
    assert_eq!(rtp["data"]["packetsReceived"], 236 + 8 + 8, "{rtp}");
    assert_eq!(rtp["data"]["packetsLost"], 444, "{rtp}");
    assert_eq!(rtp["data"]["dtmfReceived"], 2, "{rtp}");
    eprintln!("g711a.pcap transcribed as: {}", fin["text"]);
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "SIPp failed:\n{log}");

    client.wait_closed(Duration::from_secs(10)).await;
    let store = SqliteStore::open(&server.db_url()).await.unwrap();
    let calls = store
        .call(incoming["trackId"].as_str().unwrap())
        .await
        .unwrap();
    let call = calls.expect("call stored");
    assert_eq!(call.transport, "sip");
    assert_eq!(call.caller.as_deref(), Some("5551234"));
    assert!(call.quality.unwrap()["packetsReceived"].as_u64().unwrap() > 150);
}

/// The LibriVox clips as one headerless µ-law file (8 kHz) with 400 ms of silence between clips;
/// returns its duration in ms and the reference transcript.
fn librivox_ulaw(path: &Path) -> (u64, String) {
    let mut pcm8: Vec<i16> = Vec::new();
    let mut reference = String::new();
    for (wav, text) in librivox() {
        let (samples, rate) = read_wav(&wav);
        pcm8.extend(
            voxgate_media::resample::resample_clip(
                &samples,
                rate,
                voxgate_media::SampleRate::HZ_8000,
            )
            .unwrap(),
        );
        pcm8.extend(std::iter::repeat_n(0i16, 3200));
        reference.push_str(&text);
        reference.push(' ');
    }
    let mut enc = voxgate_media::codec::AudioEncoder::new(voxgate_media::codec::Codec::Pcmu);
    let bytes = enc.encode(&voxgate_media::AudioFrame::mono(
        voxgate_media::SampleRate::HZ_8000,
        pcm8.clone(),
    ));
    std::fs::write(path, bytes).unwrap();
    (pcm8.len() as u64 / 8, reference)
}

fn finals_text(c: &Client) -> String {
    c.events_named("asrFinal")
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voxgate_calls_sipp_and_transcribes_librivox_then_the_callee_hangs_up() {
    sipp_available();
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let audio = dir.path().join("librivox.ulaw");
    let (ms, reference) = librivox_ulaw(&audio);
    let scen = scenario(
        dir.path(),
        "uas_stream.xml",
        &[
            ("@AUDIO@", &audio.display().to_string()),
            ("@DURATION_MS@", &(ms + 1500).to_string()),
        ],
    );
    let (port, sipp) = spawn_sipp_uas(
        vec!["-sf".into(), scen.display().to_string()],
        dir.path().to_path_buf(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client.send(json!({"command": "invite", "option": {"caller": "bot", "callee": format!("sip:1000@127.0.0.1:{port}"), "codec": "pcmu"}})).await;
    let ringing = client.wait_event("ringing", Duration::from_secs(10)).await;
    assert_eq!(ringing["earlyMedia"], false);
    let answer = client.wait_event("answer", Duration::from_secs(10)).await;
    assert!(answer["sdp"].as_str().unwrap().contains("PCMU"), "{answer}");
    let hangup = client
        .wait_event("hangup", Duration::from_secs(ms / 1000 + 60))
        .await;
    assert_eq!(
        (hangup["reason"].as_str(), hangup["initiator"].as_str()),
        (Some("bye"), Some("callee")),
        "{hangup}"
    );
    let hyp = finals_text(&client);
    let w = wer(&reference, &hyp);
    eprintln!(
        "LibriVox over SIP/RTP PCMU: WER {:.1} %\nref: {reference}\nhyp: {hyp}",
        w * 100.0
    );
    assert!(w <= 0.15, "WER {w}");
    let rtp = client
        .events_named("metrics")
        .into_iter()
        .find(|e| e["key"] == "rtp")
        .expect("rtp metrics");
    assert_eq!(rtp["data"]["packetsLost"], 0, "{rtp}");
    assert_eq!(rtp["data"]["codec"], "PCMU");
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "SIPp failed:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voxgate_tts_reaches_sipp_and_comes_back_intelligible_then_voxgate_hangs_up() {
    sipp_available();
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(dir.path(), "uas_echo.xml", &[]);
    let (port, sipp) = spawn_sipp_uas(
        vec!["-sf".into(), scen.display().to_string(), "-rtp_echo".into()],
        dir.path().to_path_buf(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    // SIPp echoes our audio: barge-in off, or the bot would interrupt itself.
    client.send(json!({"command": "invite", "option": {"callee": format!("sip:echo@127.0.0.1:{port}"), "bargeIn": false}})).await;
    client.wait_event("answer", Duration::from_secs(10)).await;
    let sentence = "The weather today is sunny with a light breeze from the west.";
    client
        .send(json!({"command": "tts", "text": sentence, "autoHangup": true}))
        .await;
    client
        .wait_event("trackStart", Duration::from_secs(20))
        .await;
    let hangup = client.wait_event("hangup", Duration::from_secs(60)).await;
    assert_eq!(
        (hangup["reason"].as_str(), hangup["initiator"].as_str()),
        (Some("autohangup"), Some("system")),
        "{hangup}"
    );
    let hyp = finals_text(&client);
    let w = wer(sentence, &hyp);
    eprintln!("TTS echoed by SIPp: WER {:.1} % ({hyp})", w * 100.0);
    assert!(
        w <= 0.25,
        "voxgate's TTS did not come back intelligible: {hyp:?}"
    );
    let rtp = client
        .events_named("metrics")
        .into_iter()
        .find(|e| e["key"] == "rtp")
        .expect("rtp metrics");
    assert!(rtp["data"]["packetsSent"].as_u64().unwrap() > 100, "{rtp}");
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "SIPp did not see our BYE:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunk_with_digest_auth_register_and_invite_with_number_rewriting() {
    sipp_available();
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(dir.path(), "uas_trunk_auth.xml", &[]);
    // SIPp plays the carrier: it must be up before voxgate registers.
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp_on_m(
        port,
        2,
        vec![
            "-sf".into(),
            scen.display().to_string(),
            "-trace_msg".into(),
        ],
        dir.path().to_path_buf(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = format!(
        "[[sip.trunks]]\nname = \"carrier\"\nhost = \"127.0.0.1:{port}\"\nusername = \"alice\"\npassword = \"s3cret\"\nregister = true\n\
         register_expires = 600\nkeepalive_secs = 0\ncaller_id = \"15551230000\"\nstrip_prefix = \"+1\"\nadd_prefix = \"9\"\n"
    );
    let server = Server::start_with_config(&[], &config);
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client
        .send(json!({"command": "invite", "option": {"callee": "+15550100"}}))
        .await;
    let answer = client.wait_event("answer", Duration::from_secs(15)).await;
    assert!(answer["sdp"].as_str().unwrap().contains("PCMA"), "{answer}");
    client
        .send(json!({"command": "hangup", "reason": "done"}))
        .await;
    let hangup = client.wait_event("hangup", Duration::from_secs(10)).await;
    assert_eq!(
        (hangup["reason"].as_str(), hangup["initiator"].as_str()),
        (Some("done"), Some("user")),
        "{hangup}"
    );
    let (code, log) = sipp.await.unwrap();
    assert_eq!(
        code, 0,
        "the trunk rejected REGISTER or INVITE auth, or the number rewriting:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_end_holds_resumes_and_gets_488_for_an_unusable_codec_change() {
    sipp_available();
    let server = Server::start();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(dir.path(), "uac_hold.xml", &[]);
    let sipp = tokio::spawn(sipp_uac(&server, &scen, "1000", dir.path(), &[]));
    client.wait_event("incoming", Duration::from_secs(20)).await;
    client.send(json!({"command": "accept"})).await;
    client.wait_event("answer", Duration::from_secs(10)).await;
    let hangup = client.wait_event("hangup", Duration::from_secs(30)).await;
    assert_eq!(hangup["reason"], "bye");
    let (code, log) = sipp.await.unwrap();
    assert_eq!(
        code, 0,
        "hold (sendonly -> recvonly), resume (sendrecv) or the G.729-only re-INVITE (488) answered wrongly:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_offer_invite_gets_our_offer_and_media_flows() {
    sipp_available();
    let server = Server::start();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(
        dir.path(),
        "uac_late_offer.xml",
        &[("@SPEECH@", &format!("{PCAPS}/g711a.pcap"))],
    );
    let sipp = tokio::spawn(sipp_uac(&server, &scen, "1000", dir.path(), &[]));
    let incoming = client.wait_event("incoming", Duration::from_secs(20)).await;
    assert_eq!(incoming["sdp"], "", "late offer: no SDP in the INVITE");
    client.send(json!({"command": "accept"})).await;
    let answer = client.wait_event("answer", Duration::from_secs(10)).await;
    assert!(
        answer["sdp"]
            .as_str()
            .unwrap()
            .contains("a=rtpmap:8 PCMA/8000"),
        "our offer: {answer}"
    );
    client.wait_event("speaking", Duration::from_secs(20)).await;
    client.wait_event("hangup", Duration::from_secs(30)).await;
    let rtp = client
        .events_named("metrics")
        .into_iter()
        .find(|e| e["key"] == "rtp")
        .expect("rtp metrics");
    assert_eq!(
        rtp["data"]["codec"], "PCMA",
        "the codec of the ACK's answer: {rtp}"
    );
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "{log}");
}

/// Sends one datagram to `to` and returns the first line of the answer, if any within `wait`.
fn udp_exchange_within(to: &str, msg: &[u8], wait: Duration) -> Option<String> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(msg, to).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).ok()?;
    Some(
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    )
}

fn udp_exchange(to: &str, msg: &[u8]) -> Option<String> {
    udp_exchange_within(to, msg, Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_answer_unsupported_codecs_and_malformed_sip() {
    sipp_available();
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();

    // CANCEL while a waiting client has the call ringing.
    let client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    let scen = scenario(dir.path(), "uac_cancel.xml", &[]);
    let (code, log) = sipp_uac(&server, &scen, "1000", dir.path(), &[]).await;
    assert_eq!(code, 0, "CANCEL not answered with 200 + 487:\n{log}");
    client.wait_event("incoming", Duration::from_secs(5)).await;
    let hangup = client.wait_event("hangup", Duration::from_secs(10)).await;
    assert_eq!(
        (hangup["reason"].as_str(), hangup["initiator"].as_str()),
        (Some("cancelled"), Some("caller")),
        "{hangup}"
    );

    // Only unsupported codecs: 488 before anyone is bothered.
    let scen = scenario(dir.path(), "uac_488.xml", &[]);
    let (code, log) = sipp_uac(&server, &scen, "1000", dir.path(), &[]).await;
    assert_eq!(code, 0, "expected 488:\n{log}");

    // Malformed SIP: dropped or answered 4xx, never a crash.
    let sip = server.sip_addr.clone();
    let good_sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let invite = |call_id: &str, body: &str| {
        format!(
            "INVITE sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{call_id}\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\n\
             To: <sip:1000@{sip}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5999>\r\nMax-Forwards: 70\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let garbage: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\x00\xff\xfe garbage".to_vec(),
        b"INVITE sip:1000@127.0.0.1 SIP/2.0\r\n".to_vec(),
        invite("trunc", good_sdp).as_bytes()[..120].to_vec(),
        invite("nocallid", good_sdp)
            .replace("Call-ID: nocallid\r\n", "")
            .into_bytes(),
        invite("badcseq", good_sdp)
            .replace("CSeq: 1 INVITE", "CSeq: x INVITE")
            .into_bytes(),
        invite("badlen", good_sdp)
            .replace("Content-Length: ", "Content-Length: 99999")
            .into_bytes(),
        format!(
            "OPTIONS sip:x SIP/2.0\r\nVia: nonsense\r\n{}\r\n\r\n",
            "X-Long: ".to_string() + &"a".repeat(3000)
        )
        .into_bytes(),
        (0..1400u32).map(|i| (i * 7 % 256) as u8).collect(),
    ];
    for g in &garbage {
        let _ = udp_exchange_within(&sip, g, Duration::from_millis(200));
    }
    // Garbage SDP: 400; no audio we can use: 488.
    assert_eq!(
        udp_exchange(&sip, invite("garbage-sdp", "hello world").as_bytes()).as_deref(),
        Some("SIP/2.0 400 Bad Request")
    );
    let g729 = good_sdp.replace("RTP/AVP 0", "RTP/AVP 18");
    assert_eq!(
        udp_exchange(&sip, invite("g729", &g729).as_bytes()).as_deref(),
        Some("SIP/2.0 488 Not Acceptable Here")
    );
    // Still serving.
    let options = format!(
        "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5998;branch=z9hG4bKopt1\r\nFrom: <sip:a@127.0.0.1>;tag=9\r\nTo: <sip:{sip}>\r\n\
         Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(
        udp_exchange(&sip, options.as_bytes()).as_deref(),
        Some("SIP/2.0 200 OK")
    );
    let health = reqwest::get(server.http("/health")).await.unwrap();
    assert!(health.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refer_transfers_the_caller_then_voxgate_hangs_up() {
    sipp_available();
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(dir.path(), "uac_refer.xml", &[]);
    let sipp = tokio::spawn(sipp_uac(&server, &scen, "1000", dir.path(), &[]));
    client.wait_event("incoming", Duration::from_secs(20)).await;
    client.send(json!({"command": "accept"})).await;
    client.wait_event("answer", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "refer", "target": "sip:agent@127.0.0.1:5999"}))
        .await;
    let hangup = client.wait_event("hangup", Duration::from_secs(20)).await;
    let (code, log) = sipp.await.unwrap();
    assert_eq!(
        (hangup["reason"].as_str(), hangup["initiator"].as_str()),
        (Some("transferred"), Some("system")),
        "{hangup}\n{log}\n{:?}",
        client.events()
    );
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_keepalive_reports_the_trunk_up_in_health() {
    sipp_available();
    let dir = tempfile::tempdir().unwrap();
    let scen = dir.path().join("uas_options.xml");
    std::fs::write(
        &scen,
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="answer OPTIONS">
  <recv request="OPTIONS"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]O[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>
</scenario>
"#,
    )
    .unwrap();
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp_on_m(
        port,
        2,
        vec!["-sf".into(), scen.display().to_string()],
        dir.path().to_path_buf(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = format!(
        "[[sip.trunks]]\nname = \"pbx\"\nhost = \"127.0.0.1:{port}\"\nkeepalive_secs = 1\n"
    );
    let server = Server::start_with_config(&[("VOXGATE_ASR__ENGINE", "none")], &config);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut health = serde_json::Value::Null;
    while std::time::Instant::now() < deadline {
        health = reqwest::get(server.http("/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["sip"]["trunks"]["pbx"]["options"] == "up" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(health["sip"]["trunks"]["pbx"]["options"], "up", "{health}");
    assert_eq!(
        health["sip"]["trunks"]["pbx"]["optionsCode"], 200,
        "{health}"
    );
    assert_eq!(health["sip"]["listen"], server.sip_addr.as_str());
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "two keepalives answered:\n{log}");
}

/// A one-request HTTP server: returns its URL and a receiver for the JSON body it is POSTed.
async fn webhook_once() -> (String, tokio::sync::oneshot::Receiver<serde_json::Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let body = loop {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "webhook connection closed early");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break body[..len].to_string();
                }
            }
        };
        sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let _ = tx.send(serde_json::from_str(&body).unwrap());
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_over_tcp_through_a_webhook_and_unknown_numbers_get_404() {
    sipp_available();
    let (hook, body) = webhook_once().await;
    let config = format!("[[sip.numbers]]\nnumber = \"2000\"\nwebhook = \"{hook}\"\n");
    let server = Server::start_with_config(&[("VOXGATE_ASR__ENGINE", "none")], &config);
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(dir.path(), "uac_hold.xml", &[]);
    let sipp = tokio::spawn(sipp_uac(&server, &scen, "2000", dir.path(), &["-t", "t1"]));
    let hook_body = tokio::time::timeout(Duration::from_secs(20), body)
        .await
        .expect("webhook called")
        .unwrap();
    assert_eq!(
        (
            hook_body["event"].as_str(),
            hook_body["caller"].as_str(),
            hook_body["callee"].as_str()
        ),
        (Some("incoming"), Some("5551234"), Some("2000")),
        "{hook_body}"
    );
    let id = hook_body["callId"].as_str().unwrap().to_string();
    assert_eq!(hook_body["url"], format!("/call/sip?id={id}"));
    let mut client = Client::connect(&server.sip_ws_url(&format!("?id={id}&dump=false"))).await;
    let incoming = client.wait_event("incoming", Duration::from_secs(5)).await;
    assert_eq!(incoming["trackId"], id.as_str());
    client.send(json!({"command": "accept"})).await;
    client.wait_event("answer", Duration::from_secs(10)).await;
    let hangup = client.wait_event("hangup", Duration::from_secs(30)).await;
    assert_eq!(hangup["reason"], "bye");
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "call over TCP:\n{log}");

    // No [[sip.numbers]] entry for 3000 (and no "*"): 404.
    let sip = server.sip_addr.clone();
    let invite = format!(
        "INVITE sip:3000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5997;branch=z9hG4bKnf1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\n\
         To: <sip:3000@{sip}>\r\nCall-ID: nf1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5997>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(
        udp_exchange(&sip, invite.as_bytes()).as_deref(),
        Some("SIP/2.0 404 Not Found")
    );
}

/// SIP over TLS with OpenSSL's `s_client` as the peer: OPTIONS gets 200, an INVITE rings a
/// waiting client (`incoming`), and the client's refusal (`busy`) comes back as 486 on the TLS
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_over_tls_with_a_configured_certificate() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path(), "voxgate");
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tls = format!("127.0.0.1:{tls_port}");
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let server = Server::start_with(&[
        ("VOXGATE_ASR__ENGINE", "none"),
        ("VOXGATE_SIP__TLS_LISTEN", &tls),
        ("VOXGATE_SIP__TLS_CERT", &c),
        ("VOXGATE_SIP__TLS_KEY", &k),
    ]);
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;

    let mut s_client = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &tls,
            "-quiet",
            "-verify_return_error",
            "-CAfile",
            &ca.display().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = s_client.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(s_client.stdout.take().unwrap()).lines();
    let via = "Via: SIP/2.0/TLS 127.0.0.1:5996;branch=z9hG4bK";
    let options = format!("OPTIONS sip:{tls} SIP/2.0\r\n{via}tls1\r\nFrom: <sip:a@127.0.0.1>;tag=t1\r\nTo: <sip:{tls}>\r\nCall-ID: tls-opt\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    stdin.write_all(options.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut wait_for = async |want: &str, seen: &mut Vec<String>| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no `{want}` over TLS; got {seen:?}"))
                .unwrap()
                .expect("TLS stream open");
            seen.push(line.clone());
            if line.starts_with(want) {
                return;
            }
        }
    };
    wait_for("SIP/2.0 200 OK", &mut seen).await;
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let invite = format!(
        "INVITE sip:1000@{tls};transport=tls SIP/2.0\r\n{via}tls2\r\nFrom: <sip:5551234@127.0.0.1>;tag=t2\r\nTo: <sip:1000@{tls}>\r\n\
         Call-ID: tls-inv\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5996;transport=tls>\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    stdin.write_all(invite.as_bytes()).await.unwrap();
    wait_for("SIP/2.0 180", &mut seen).await;
    let incoming = client.wait_event("incoming", Duration::from_secs(5)).await;
    assert_eq!(incoming["caller"], "5551234");
    client
        .send(json!({"command": "hangup", "reason": "busy"}))
        .await;
    wait_for("SIP/2.0 486", &mut seen).await;
    let hangup = client.wait_event("hangup", Duration::from_secs(5)).await;
    assert_eq!(hangup["reason"], "busy");
}

/// The first lines of every datagram answering `msg`, until a final response (≥ 200) or `wait`.
fn udp_responses(to: &str, msg: &[u8], wait: Duration) -> Vec<String> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.send_to(msg, to).unwrap();
    let deadline = std::time::Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = s.recv(&mut buf) {
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let code: u16 = line
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            out.push(line);
            if code >= 200 {
                break;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_call_nobody_accepts_gets_480_after_the_ring_timeout() {
    let server = Server::start_with(&[
        ("VOXGATE_ASR__ENGINE", "none"),
        ("VOXGATE_SIP__RING_TIMEOUT_SECS", "1"),
    ]);
    let client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sip = server.sip_addr.clone();
    let invite = format!(
        "INVITE sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5995;branch=z9hG4bKrt1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\n\
         To: <sip:1000@{sip}>\r\nCall-ID: rt1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5995>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let lines = tokio::task::spawn_blocking(move || {
        udp_responses(&sip, invite.as_bytes(), Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("SIP/2.0 480 Temporarily Unavailable"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("SIP/2.0 180")),
        "{lines:?}"
    );
    client.wait_event("incoming", Duration::from_secs(2)).await;
    let hangup = client.wait_event("hangup", Duration::from_secs(5)).await;
    assert_eq!(
        (hangup["reason"].as_str(), hangup["initiator"].as_str()),
        (Some("no_answer"), Some("system")),
        "{hangup}"
    );
}

/// `sip.allow`: an INVITE from outside it gets 403 and leaves nothing behind (no call, no
/// webhook, no stored row); the same INVITE from an allowed address goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_from_outside_sip_allow_get_403_and_leave_no_state() {
    sipp_available();
    // A webhook that counts what it is told.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = hook.accept().await {
            h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let toml = format!(
        "[sip]\nallow = [\"10.0.0.0/8\"]\nnumbers = [{{ number = \"*\", webhook = \"http://{hook_addr}/\" }}]\n"
    );
    let server = Server::start_with_config(&[("VOXGATE_ASR__ENGINE", "none")], &toml);
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(
        dir.path(),
        "uac_status.xml",
        &[("@CODE@", "403"), ("@CHECK@", "")],
    );
    let (code, log) = sipp_uac(&server, &scen, "1000", dir.path(), &[]).await;
    assert_eq!(code, 0, "expected 403:\n{log}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    let calls: serde_json::Value = reqwest::get(server.http("/call/lists"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls["calls"], json!([]));
    let db = sqlx::SqlitePool::connect(&server.db_url()).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM calls")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 0);
    drop(server);

    // Loopback is allowed by default: the same INVITE reaches the number's route (no client
    // is waiting: 480).
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let scen = scenario(
        dir.path(),
        "uac_status.xml",
        &[("@CODE@", "480"), ("@CHECK@", "")],
    );
    let (code, log) = sipp_uac(&server, &scen, "1000", dir.path(), &[]).await;
    assert_eq!(code, 0, "expected 480:\n{log}");
}

/// Symmetric RTP latches only to the far end: RTP sent first from another address (127.0.0.2)
/// is ignored, and the bot's audio goes to the caller's address from its SDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_from_a_third_address_is_not_latched() {
    sipp_available();
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    let legit = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hijack = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let port = legit.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(
        dir.path(),
        "uac_latch.xml",
        &[("@RTP_PORT@", &port), ("@PAUSE@", "6000")],
    );
    let sipp = tokio::spawn(sipp_uac(&server, &scen, "1000", dir.path(), &[]));
    client.wait_event("incoming", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "accept", "option": {"codec": "pcmu"}}))
        .await;
    let answer = client.wait_event("answer", Duration::from_secs(10)).await;
    let sdp = answer["sdp"].as_str().unwrap().to_string();
    let our_port: u16 = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port in our answer");
    let ours = std::net::SocketAddr::from(([127, 0, 0, 1], our_port));
    let packet = |seq: u16, ssrc: u32| {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend(std::iter::repeat_n(0xffu8, 160));
        p
    };
    // The third party speaks first, then the caller.
    for i in 0..10u16 {
        hijack.send_to(&packet(i, 0xbad), ours).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..10u16 {
        legit.send_to(&packet(i, 0x900d), ours).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .send(json!({"command": "tts", "text": "Only the caller hears this."}))
        .await;
    let count = |s: tokio::net::UdpSocket| async move {
        let mut n = 0;
        let mut buf = [0u8; 2048];
        let end = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(_)) = tokio::time::timeout_at(end, s.recv_from(&mut buf)).await {
            n += 1;
        }
        n
    };
    let (to_legit, to_hijack) = tokio::join!(count(legit), count(hijack));
    assert!(to_legit > 20, "the caller got {to_legit} packets");
    assert_eq!(to_hijack, 0, "the third address got our audio");
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "{log}");
    let h = client.wait_event("hangup", Duration::from_secs(10)).await;
    assert_eq!(h["initiator"], "caller", "{h}");
}

/// An inbound call to a seed-003 number whose owner is at their concurrent-call quota is refused
/// with 486 and `Retry-After`, before any dialog exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_the_owners_quota_gets_486_with_retry_after() {
    sipp_available();
    let toml =
        "[pbx.numbers]\n\"+12025550150\" = \"alice\"\n[limits.users.alice]\ncalls_per_user = 0\n";
    let server = Server::start_with_config(&[("VOXGATE_ASR__ENGINE", "none")], toml);
    let dir = tempfile::tempdir().unwrap();
    let check = r#"<action><ereg regexp="Retry-After: *[0-9]+" search_in="msg" check_it="true" assign_to="ra"/><log message="[$ra]"/></action>"#;
    let scen = scenario(
        dir.path(),
        "uac_status.xml",
        &[("@CODE@", "486"), ("@CHECK@", check)],
    );
    let (code, log) = sipp_uac(&server, &scen, "+12025550150", dir.path(), &[]).await;
    assert_eq!(code, 0, "expected 486 with Retry-After:\n{log}");
    let calls: serde_json::Value = reqwest::get(server.http("/call/lists"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls["calls"], json!([]));
}

/// Waits (≤ 5 s) until the server holds `n` call sessions: a `/call/sip` client takes calls
/// once the server has its session, a moment after its WebSocket connects.
async fn call_sessions(server: &Server, n: u64) {
    let url = server.http("/health");
    for _ in 0..100 {
        let h: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        if h["calls"].as_u64() == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server never had {n} call sessions");
}

/// The whole final response (≥ 200) answering `msg`, within `wait`.
fn udp_final(to: &str, msg: &[u8], wait: Duration) -> Option<String> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.send_to(msg, to).unwrap();
    let deadline = std::time::Instant::now() + wait;
    let mut buf = vec![0u8; 65_536];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = s.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if !text.starts_with("SIP/2.0 1") {
                return Some(text);
            }
        }
    }
    None
}

/// A header's value in a response (case-insensitive name, first one).
fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Issue 10, RFC 3261 §8.2: every request out of a dialog gets an answer the RFC allows — 405
/// with `Allow` for a method voxgate does not serve, 501 for one it does not know, 420 with
/// `Unsupported`, 415 with `Accept`, 406, 416, 505, 400 with a reason that says what is wrong,
/// OPTIONS with `Allow`, `Accept` and `Supported`; valid but unusual requests (folded headers,
/// an RFC 2543 From without a tag) are served; the server goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_out_of_a_dialog_gets_a_valid_answer() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let sip = server.sip_addr.clone();
    let request = |method: &str, cseq_method: &str, extra: &str, body: &str| {
        format!(
            "{method} sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5997;rport;branch=z9hG4bK-{method}-{n}\r\n\
             From: <sip:a@127.0.0.1>;tag=7\r\nTo: <sip:1000@{sip}>\r\nCall-ID: rfc-{method}-{n}@127.0.0.1\r\n\
             CSeq: 1 {cseq_method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len(),
            n = extra.len() + body.len(),
        )
    };
    let ask = |m: String| {
        let sip = sip.clone();
        async move {
            let m2 = m.clone();
            tokio::task::spawn_blocking(move || {
                udp_final(&sip, m2.as_bytes(), Duration::from_secs(3))
            })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no final answer to\n{m}"))
        }
    };
    let status = |r: &str| r.lines().next().unwrap_or_default().to_string();

    // OPTIONS: what voxgate can do.
    let r = ask(request("OPTIONS", "OPTIONS", "", "")).await;
    assert_eq!(status(&r), "SIP/2.0 200 OK", "{r}");
    for h in ["Allow", "Accept", "Supported"] {
        assert!(header(&r, h).is_some(), "OPTIONS answer without {h}:\n{r}");
    }
    assert!(header(&r, "Allow").unwrap().contains("INVITE"), "{r}");
    assert_eq!(
        header(&r, "Accept"),
        Some("application/sdp, multipart/mixed"),
        "{r}"
    );

    // Methods voxgate knows but does not serve out of a dialog: 405 with Allow.
    for m in [
        "SUBSCRIBE",
        "PUBLISH",
        "MESSAGE",
        "REGISTER",
        "INFO",
        "REFER",
        "NOTIFY",
        "UPDATE",
        "PRACK",
    ] {
        let r = ask(request(m, m, "", "")).await;
        assert!(status(&r).starts_with("SIP/2.0 405 "), "{m}: {r}");
        assert!(
            header(&r, "Allow").is_some_and(|a| a.contains("OPTIONS")),
            "{m}: {r}"
        );
    }
    // A method nobody defined (any token characters, RFC 4475 §3.1.1.2): 501 with Allow.
    let r = ask(request("NEWMETHOD", "NEWMETHOD", "", "")).await;
    assert!(status(&r).starts_with("SIP/2.0 501 "), "{r}");
    assert!(header(&r, "Allow").is_some(), "{r}");
    let r = ask(request(
        "!interesting-Method0123456789_*+`.%indeed'~",
        "!interesting-Method0123456789_*+`.%indeed'~",
        "",
        "",
    ))
    .await;
    assert!(status(&r).starts_with("SIP/2.0 501 "), "{r}");

    // An extension voxgate lacks (RFC 4475 §3.3.5): 420 naming it.
    let r = ask(request(
        "OPTIONS",
        "OPTIONS",
        "Require: nothingpermitted, timer\r\n",
        "",
    ))
    .await;
    assert!(status(&r).starts_with("SIP/2.0 420 "), "{r}");
    assert!(
        header(&r, "Unsupported").is_some_and(|u| u.contains("nothingpermitted")),
        "{r}"
    );

    // A body voxgate cannot use (RFC 4475 §3.3.6): 415 with Accept; an Accept that rules out
    // SDP (§3.3.15): 406.
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let r = ask(request(
        "INVITE",
        "INVITE",
        "Content-Type: application/unknownformat\r\n",
        "<audio> <pcmu port=\"443\"/> </audio>",
    ))
    .await;
    assert!(status(&r).starts_with("SIP/2.0 415 "), "{r}");
    assert_eq!(
        header(&r, "Accept"),
        Some("application/sdp, multipart/mixed"),
        "{r}"
    );
    let r = ask(request(
        "INVITE",
        "INVITE",
        "Accept: text/nobodyknowsthis\r\nContent-Type: application/sdp\r\n",
        sdp,
    ))
    .await;
    assert!(status(&r).starts_with("SIP/2.0 406 "), "{r}");

    // Refused before parsing: 416, 505, and 400s that say why.
    let opts = request("OPTIONS", "OPTIONS", "", "");
    let cases = [
        (
            opts.replace(
                &format!("OPTIONS sip:1000@{sip}"),
                "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent",
            ),
            "SIP/2.0 416 ",
        ),
        (
            opts.replacen("SIP/2.0\r\n", "SIP/7.0\r\n", 1),
            "SIP/2.0 505 ",
        ),
        (
            opts.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
            "SIP/2.0 400 CSeq method does not match",
        ),
        (
            opts.replace("Content-Length: 0", "Content-Length: 0\r\nl: 5"),
            "SIP/2.0 400 Multiple Content-Length",
        ),
        (
            opts.replace("Content-Length: 0", "Content-Length: -999"),
            "SIP/2.0 400 Negative Content-Length",
        ),
        (
            opts.replace("Max-Forwards: 70", "Max-Forwards: 70\r\nMax-Forwards: 5"),
            "SIP/2.0 400 Multiple Max-Forwards",
        ),
        (
            opts.replace("To: <sip:1000@", "To: \"unclosed <sip:1000@"),
            "SIP/2.0 400 Malformed To",
        ),
        (
            opts.replace(
                &format!("OPTIONS sip:1000@{sip}"),
                &format!("OPTIONS <sip:1000@{sip}>"),
            ),
            "SIP/2.0 400 Malformed Request-URI",
        ),
    ];
    for (m, want) in cases {
        let r = ask(m.clone()).await;
        assert!(
            status(&r).starts_with(want),
            "want {want:?}, got:\n{r}\nfor:\n{m}"
        );
    }

    // Valid but unusual: folded headers with white space around separators (RFC 4475 §3.1.1.1),
    // and an RFC 2543 request whose From has no tag (§3.4.1).
    let folded = opts
        .replace(
            "From: <sip:a@127.0.0.1>;tag=7",
            "from   :\r\n <sip:a@127.0.0.1>\r\n  ;\r\n  tag = 7",
        )
        .replace("CSeq: 1 OPTIONS", "cseq: 0001\r\n  OPTIONS");
    let r = ask(folded).await;
    assert_eq!(status(&r), "SIP/2.0 200 OK", "{r}");
    let r = ask(opts.replace(";tag=7", "")).await;
    assert_eq!(status(&r), "SIP/2.0 200 OK", "{r}");

    // Still serving, and nothing was left behind.
    let r = ask(request("OPTIONS", "OPTIONS", "", "")).await;
    assert_eq!(status(&r), "SIP/2.0 200 OK");
    let health: serde_json::Value = reqwest::get(server.http("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["calls"], 0, "{health}");
}

/// Issue 10, RFC 3261 §8.2.1 / §12.2.2: within a dialog, methods voxgate does not serve get 405
/// with `Allow`, an unknown `Require` gets 420, OPTIONS lists the capabilities, and the call goes on
/// (BYE ends it). The far end is a raw UDP socket speaking SIP by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_within_a_dialog_get_valid_answers() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let sip = server.sip_addr.clone();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let rtp = free_udp_port();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
    );
    let send = |method: &str, cseq: u32, to_tag: &str, extra: &str, body: &str| {
        let to_tag = if to_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={to_tag}")
        };
        let branch = format!("z9hG4bK-dlg-{method}-{cseq}");
        let m = format!(
            "{method} sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch={branch}\r\n\
             From: <sip:5551234@127.0.0.1>;tag=dlg1\r\nTo: <sip:1000@{sip}>{to_tag}\r\nCall-ID: dlg-405@127.0.0.1\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:5551234@{me}>\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.send_to(m.as_bytes(), &sip).unwrap();
    };
    // The final response to `method` (skipping provisional ones and retransmissions of others).
    let final_for = |method: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65_536];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let r = String::from_utf8_lossy(&buf[..n]).to_string();
                let cseq_method = header(&r, "CSeq")
                    .and_then(|c| c.split_whitespace().nth(1))
                    .unwrap_or_default()
                    .to_string();
                if !r.starts_with("SIP/2.0 1") && cseq_method == method {
                    return r;
                }
            }
        }
        panic!("no final answer to {method}");
    };
    send("INVITE", 1, "", "Content-Type: application/sdp\r\n", &sdp);
    client.wait_event("incoming", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    let ok = tokio::task::block_in_place(|| final_for("INVITE"));
    assert!(ok.starts_with("SIP/2.0 200 "), "{ok}");
    let tag = header(&ok, "To")
        .and_then(|t| t.split("tag=").nth(1))
        .map(|t| t.split(';').next().unwrap().trim().to_string())
        .expect("a To tag");
    send("ACK", 1, &tag, "", "");
    client.wait_event("answer", Duration::from_secs(5)).await;

    for (i, m) in ["SUBSCRIBE", "MESSAGE", "PUBLISH", "REGISTER"]
        .iter()
        .enumerate()
    {
        send(m, 2 + i as u32, &tag, "", "");
        let r = tokio::task::block_in_place(|| final_for(m));
        assert!(r.starts_with("SIP/2.0 405 "), "{m}: {r}");
        assert!(
            header(&r, "Allow").is_some_and(|a| a.contains("BYE") && a.contains("REFER")),
            "{m}: {r}"
        );
    }
    // A REFER is served within a dialog (transfer requests), but not without a Refer-To.
    send("REFER", 6, &tag, "", "");
    let r = tokio::task::block_in_place(|| final_for("REFER"));
    assert!(r.starts_with("SIP/2.0 400 "), "{r}");
    assert!(
        header(&r, "Warning").is_some_and(|w| w.contains("Refer-To")),
        "{r}"
    );
    send("OPTIONS", 10, &tag, "Require: 100rel-of-the-future\r\n", "");
    let r = tokio::task::block_in_place(|| final_for("OPTIONS"));
    assert!(r.starts_with("SIP/2.0 420 "), "{r}");
    assert_eq!(
        header(&r, "Unsupported"),
        Some("100rel-of-the-future"),
        "{r}"
    );
    send("OPTIONS", 11, &tag, "", "");
    let r = tokio::task::block_in_place(|| final_for("OPTIONS"));
    assert!(r.starts_with("SIP/2.0 200 "), "{r}");
    assert!(
        header(&r, "Allow").is_some() && header(&r, "Accept").is_some(),
        "{r}"
    );

    // The call survived all of it: BYE ends it.
    send("BYE", 12, &tag, "", "");
    let r = tokio::task::block_in_place(|| final_for("BYE"));
    assert!(r.starts_with("SIP/2.0 200 "), "{r}");
    let hangup = client.wait_event("hangup", Duration::from_secs(5)).await;
    assert_eq!(hangup["reason"], "bye", "{hangup}");
}

/// Issue 10, RFC 3264 §6, RFC 5621, RFC 4566 §5.7: a multipart/mixed INVITE is answered from its
/// SDP part; an offer with several streams gets the first usable audio stream and port 0 for
/// the others; a `c=` with an unknown network type is refused with 488 and a Warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_and_multi_stream_offers_are_answered() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let sip = server.sip_addr.clone();
    let rtp = free_udp_port();
    let invite = |call_id: &str, ctype: &str, body: &str| {
        format!(
            "INVITE sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5996;rport;branch=z9hG4bK-{call_id}\r\n\
             X-Account-Id: 42\r\nx-carrier-ref:  abc;def \r\n\
             From: <sip:5551234@127.0.0.1>;tag=mp\r\nTo: <sip:1000@{sip}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:5551234@127.0.0.1:5996>\r\nMax-Forwards: 70\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let ask = |m: String| {
        let sip = sip.clone();
        tokio::task::spawn_blocking(move || udp_final(&sip, m.as_bytes(), Duration::from_secs(10)))
    };

    // multipart/mixed: the SDP part is the offer.
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
    );
    let body = format!(
        "--b1\r\nContent-Type: application/resource-lists+xml\r\n\r\n<list/>\r\n--b1\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--b1--\r\n"
    );
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let pending = ask(invite("multipart-1", "multipart/mixed; boundary=b1", &body));
    let incoming = client.wait_event("incoming", Duration::from_secs(10)).await;
    assert_eq!(incoming["sdp"].as_str(), Some(sdp.as_str()), "{incoming}");
    // The far end's X- headers (issue 10 point 7), as sent, in `incoming`.
    assert_eq!(incoming["headers"]["X-Account-Id"], "42", "{incoming}");
    assert_eq!(
        incoming["headers"]["x-carrier-ref"], "abc;def",
        "{incoming}"
    );
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    let ok = pending
        .await
        .unwrap()
        .expect("an answer to the multipart INVITE");
    assert!(ok.starts_with("SIP/2.0 200 "), "{ok}");
    assert!(ok.contains("m=audio ") && ok.contains(" RTP/AVP 0"), "{ok}");
    client.send(json!({"command": "hangup"})).await;
    client.wait_event("hangup", Duration::from_secs(10)).await;

    // Video, an audio stream with no codec we have, then a usable one.
    let multi = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=video 5002 RTP/AVP 31\r\nm=audio 5004 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\nm=audio {rtp} RTP/AVP 8\r\n"
    );
    drop(client);
    call_sessions(&server, 0).await;
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let pending = ask(invite("multistream-1", "application/sdp", &multi));
    client.wait_event("incoming", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    let ok = pending
        .await
        .unwrap()
        .expect("an answer to the multi-stream INVITE");
    let m: Vec<&str> = ok.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(m.len(), 3, "{ok}");
    assert_eq!(m[0], "m=video 0 RTP/AVP 31", "{ok}");
    assert_eq!(m[1], "m=audio 0 RTP/AVP 18", "{ok}");
    assert!(
        m[2].starts_with("m=audio ")
            && m[2].ends_with(" RTP/AVP 8")
            && !m[2].starts_with("m=audio 0 "),
        "{ok}"
    );
    client.send(json!({"command": "hangup"})).await;
    client.wait_event("hangup", Duration::from_secs(10)).await;

    // An unknown network type: 488 with a Warning, before anyone is bothered.
    let atm = sdp.replace(
        "c=IN IP4 127.0.0.1",
        "c=ATM NSAP 47.0091.8100.0000.0060.3e64.fd01.0060.3e64.fd01.00",
    );
    let r = ask(invite("atm-1", "application/sdp", &atm))
        .await
        .unwrap()
        .expect("an answer");
    assert!(r.starts_with("SIP/2.0 488 "), "{r}");
    assert!(header(&r, "Warning").is_some(), "{r}");
}

/// Issue 10 point 7: an `invite` on `/call/sip` may carry `X-` headers (`option.headers`); they
/// reach the far end's INVITE. A header that is not `X-` is a clear `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_headers_reach_the_far_end() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    far.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let far_addr = far.local_addr().unwrap();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client
        .send(json!({"command": "invite", "option": {"callee": format!("sip:bob@{far_addr}"), "headers": {"Via": "x"}}}))
        .await;
    let e = client.wait_event("error", Duration::from_secs(5)).await;
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("not an X- header name"),
        "{e}"
    );
    client
        .send(json!({"command": "invite", "option": {"callee": format!("sip:bob@{far_addr}"), "codec": "pcmu",
            "headers": {"X-Account-Id": "42", "X-Campaign": "spring sale"}}}))
        .await;
    let invite = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 65_536];
        for _ in 0..50 {
            if let Ok((n, from)) = far.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if m.starts_with("INVITE ") {
                    // Refuse it: 486 with our tag.
                    let mut resp = String::from("SIP/2.0 486 Busy Here\r\n");
                    for l in m.lines().skip(1) {
                        let name = l.split(':').next().unwrap_or_default().to_ascii_lowercase();
                        if ["via", "from", "call-id", "cseq"].contains(&name.as_str()) {
                            resp.push_str(l);
                            resp.push_str("\r\n");
                        } else if name == "to" {
                            resp.push_str(&format!("{l};tag=far\r\n"));
                        }
                    }
                    resp.push_str("Content-Length: 0\r\n\r\n");
                    far.send_to(resp.as_bytes(), from).unwrap();
                    return m;
                }
            }
        }
        panic!("no INVITE reached the far end");
    })
    .await
    .unwrap();
    assert_eq!(header(&invite, "X-Account-Id"), Some("42"), "{invite}");
    assert_eq!(
        header(&invite, "X-Campaign"),
        Some("spring sale"),
        "{invite}"
    );
    let hangup = client.wait_event("hangup", Duration::from_secs(10)).await;
    assert_eq!(hangup["reason"], "busy", "{hangup}");

    // X- headers on the BYE: the application's `hangup` carries them; bad names are refused.
    let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    far.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let far_addr = far.local_addr().unwrap();
    let rtp = free_udp_port();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client
        .send(json!({"command": "invite", "option": {"callee": format!("sip:bob@{far_addr}"), "codec": "pcmu"}}))
        .await;
    let far = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 65_536];
        for _ in 0..50 {
            if let Ok((n, from)) = far.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if m.starts_with("INVITE ") {
                    let sdp = format!(
                        "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
                    );
                    let extra = format!(
                        "Contact: <sip:bob@{far_addr}>\r\nContent-Type: application/sdp\r\n"
                    );
                    far.send_to(far_answer(&m, "200 OK", "far", &extra, &sdp).as_bytes(), from)
                        .unwrap();
                    return far;
                }
            }
        }
        panic!("no INVITE reached the far end");
    })
    .await
    .unwrap();
    client.wait_event("answer", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "hangup", "headers": {"Via": "x"}}))
        .await;
    let e = client
        .wait_for("the refused hangup", Duration::from_secs(5), |e| {
            e["event"] == "error" && e["sender"] != "asr"
        })
        .await;
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("not an X- header name"),
        "{e}"
    );
    client
        .send(json!({"command": "hangup", "reason": "done", "headers": {"X-Disposition": "sale", "X-Agent-Id": "7"}}))
        .await;
    let bye = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 65_536];
        for _ in 0..50 {
            if let Ok((n, from)) = far.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if m.starts_with("BYE ") {
                    far.send_to(far_answer(&m, "200 OK", "far", "", "").as_bytes(), from)
                        .unwrap();
                    return m;
                }
            }
        }
        panic!("no BYE reached the far end");
    })
    .await
    .unwrap();
    assert_eq!(header(&bye, "X-Disposition"), Some("sale"), "{bye}");
    assert_eq!(header(&bye, "X-Agent-Id"), Some("7"), "{bye}");
    let hangup = client.wait_event("hangup", Duration::from_secs(10)).await;
    assert_eq!(hangup["reason"], "done", "{hangup}");
}

/// Issue 10 point 4, RFC 3261 §15.1.2: a BYE on an early dialog (the caller gave up while it
/// rang, with BYE instead of CANCEL) gets 200, the pending INVITE gets 487, and the waiting
/// client hears `hangup`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bye_on_an_early_dialog_ends_the_ringing_invite_with_487() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let sip = server.sip_addr.clone();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let send = |method: &str, cseq: u32, to_tag: &str, body: &str| {
        let to_tag = if to_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={to_tag}")
        };
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let m = format!(
            "{method} sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bK-early-{method}\r\n\
             From: <sip:5551234@127.0.0.1>;tag=early1\r\nTo: <sip:1000@{sip}>{to_tag}\r\nCall-ID: early-bye@127.0.0.1\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:5551234@{me}>\r\nMax-Forwards: 70\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.send_to(m.as_bytes(), &sip).unwrap();
    };
    // Every response until `want` finals have come (or 10 s).
    let responses = |want: usize| -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65_536];
        let mut out = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).to_string());
                if out.iter().filter(|r| !r.starts_with("SIP/2.0 1")).count() >= want {
                    break;
                }
            }
        }
        out
    };
    send("INVITE", 1, "", sdp);
    client.wait_event("incoming", Duration::from_secs(10)).await;
    let early = tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65_536];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let r = String::from_utf8_lossy(&buf[..n]).to_string();
                if r.starts_with("SIP/2.0 180") {
                    return r;
                }
            }
        }
        panic!("no 180");
    });
    let tag = header(&early, "To")
        .and_then(|t| t.split("tag=").nth(1))
        .map(|t| t.split(';').next().unwrap().trim().to_string())
        .expect("a To tag on the 180");
    send("BYE", 2, &tag, "");
    let got = tokio::task::block_in_place(|| responses(2));
    let finals: Vec<String> = got
        .iter()
        .filter(|r| !r.starts_with("SIP/2.0 1"))
        .map(|r| {
            let cseq = header(r, "CSeq").unwrap_or_default().to_string();
            format!("{} / {cseq}", r.lines().next().unwrap_or_default())
        })
        .collect();
    assert!(
        finals
            .iter()
            .any(|f| f.starts_with("SIP/2.0 200") && f.ends_with("BYE")),
        "{finals:?}"
    );
    assert!(
        finals
            .iter()
            .any(|f| f.starts_with("SIP/2.0 487") && f.ends_with("INVITE")),
        "{finals:?}"
    );
    let hangup = client.wait_event("hangup", Duration::from_secs(5)).await;
    assert_eq!(
        (hangup["reason"].as_str(), hangup["initiator"].as_str()),
        (Some("cancelled"), Some("caller")),
        "{hangup}"
    );
}

/// The final response a far end written by hand gives to `req` (status line and reason), copying
/// Via, From, Call-ID and CSeq, adding a To tag, and `extra` (headers and body).
fn far_response(req: &str, status: &str, extra: &str) -> String {
    let mut resp = format!("SIP/2.0 {status}\r\n");
    for l in req.lines().skip(1) {
        let name = l
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if ["via", "from", "call-id", "cseq"].contains(&name.as_str()) {
            resp.push_str(l);
            resp.push_str("\r\n");
        } else if name == "to" {
            if l.contains("tag=") {
                resp.push_str(&format!("{l}\r\n"));
            } else {
                resp.push_str(&format!("{l};tag=far\r\n"));
            }
        }
    }
    resp.push_str(extra);
    resp
}

/// Issue 10 point 4, RFC 3261 §13.2.2.4: a 2xx without a Contact (no remote target) is still
/// ACKed, then the call is ended with BYE — not left retransmitting — and the application hears
/// an error and `hangup`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_without_contact_is_acked_then_ended_with_bye() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    far.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let far_addr = far.local_addr().unwrap();
    let rtp = free_udp_port();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client
        .send(json!({"command": "invite", "option": {"callee": format!("sip:bob@{far_addr}"), "codec": "pcmu"}}))
        .await;
    let seen = tokio::task::spawn_blocking(move || {
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
        );
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            let Ok((n, from)) = far.recv_from(&mut buf) else { continue };
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            let method = m.split(' ').next().unwrap_or_default().to_string();
            seen.push(method.clone());
            match method.as_str() {
                "INVITE" => {
                    let ok = far_response(
                        &m,
                        "200 OK",
                        &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()),
                    );
                    far.send_to(ok.as_bytes(), from).unwrap();
                }
                "BYE" => {
                    let ok = far_response(&m, "200 OK", "Content-Length: 0\r\n\r\n");
                    far.send_to(ok.as_bytes(), from).unwrap();
                    break;
                }
                _ => {}
            }
        }
        seen
    })
    .await
    .unwrap();
    let hangup = client.wait_event("hangup", Duration::from_secs(10)).await;
    assert!(
        seen.contains(&"ACK".to_string()),
        "no ACK for the Contact-less 200: {seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("BYE"), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|m| *m == "INVITE").count(),
        1,
        "the INVITE was retransmitted after the 200: {seen:?}"
    );
    assert_eq!(hangup["reason"], "failed", "{hangup}");
    let error = client.events_named("error");
    assert!(
        error.iter().any(|e| e["error"]
            .as_str()
            .unwrap_or_default()
            .contains("without a Contact")),
        "{error:?}"
    );
}

/// Issue 10 point 4: when the far end has vanished (it answered, then never answers our BYE),
/// the application's `hangup` still comes at once; the BYE transaction times out in the
/// background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_is_immediate_when_the_far_end_has_vanished() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    far.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let far_addr = far.local_addr().unwrap();
    let rtp = free_udp_port();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client
        .send(json!({"command": "invite", "option": {"callee": format!("sip:bob@{far_addr}"), "codec": "pcmu"}}))
        .await;
    let far_task = tokio::task::spawn_blocking(move || {
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
        );
        let mut buf = vec![0u8; 65_536];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut byes = 0;
        while std::time::Instant::now() < deadline {
            let Ok((n, from)) = far.recv_from(&mut buf) else {
                continue;
            };
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            if m.starts_with("INVITE ") {
                let ok = far_response(
                    &m,
                    "200 OK",
                    &format!(
                        "Contact: <sip:bob@{far_addr}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                        sdp.len()
                    ),
                );
                far.send_to(ok.as_bytes(), from).unwrap();
            } else if m.starts_with("BYE ") {
                byes += 1; // never answered: the far end is gone
                if byes >= 2 {
                    break;
                }
            }
        }
        byes
    });
    client.wait_event("answer", Duration::from_secs(10)).await;
    let t = std::time::Instant::now();
    client.send(json!({"command": "hangup"})).await;
    let hangup = client.wait_event("hangup", Duration::from_secs(30)).await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "hangup took {took:?}: {hangup}"
    );
    assert!(far_task.await.unwrap() >= 1, "no BYE was sent");
}

/// Issue 10 point 4: a re-INVITE the far end sends right after its 200 OK (before or just after
/// our ACK) finds its dialog — never 481 — over 8 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinvite_right_after_the_answer_finds_its_dialog() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let mut answers = Vec::new();
    for call in 0..8 {
        let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        far.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let far_addr = far.local_addr().unwrap();
        let rtp = free_udp_port();
        let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
        client
            .send(json!({"command": "invite", "option": {"callee": format!("sip:bob@{far_addr}"), "codec": "pcmu"}}))
            .await;
        let answer = tokio::task::spawn_blocking(move || {
            let sdp = format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
            );
            let mut buf = vec![0u8; 65_536];
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                let Ok((n, from)) = far.recv_from(&mut buf) else { continue };
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if m.starts_with("INVITE ") && !m.contains(";tag=far") {
                    let ok = far_response(
                        &m,
                        "200 OK",
                        &format!(
                            "Contact: <sip:bob@{far_addr}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                            sdp.len()
                        ),
                    );
                    far.send_to(ok.as_bytes(), from).unwrap();
                    // The re-INVITE goes out at once, not waiting for the ACK (hold).
                    let from_l = m.lines().find(|l| l.starts_with("From:")).unwrap();
                    let call_id = m.lines().find(|l| l.starts_with("Call-ID:")).unwrap();
                    let contact = m
                        .lines()
                        .find(|l| l.starts_with("Contact:"))
                        .and_then(|l| l.split('<').nth(1))
                        .and_then(|l| l.split('>').next())
                        .unwrap();
                    let hold = sdp.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
                    let reinvite = format!(
                        "INVITE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {far_addr};rport;branch=z9hG4bK-re-{call}\r\n\
                         From: <sip:bob@{far_addr}>;tag=far\r\nTo: {}\r\n{call_id}\r\nCSeq: 1 INVITE\r\n\
                         Contact: <sip:bob@{far_addr}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{hold}",
                        from_l.trim_start_matches("From:").trim(),
                        hold.len()
                    );
                    far.send_to(reinvite.as_bytes(), from).unwrap();
                } else if m.starts_with("SIP/2.0 ")
                    && m.contains("z9hG4bK-re-")
                    && !m.starts_with("SIP/2.0 1")
                {
                    return m.lines().next().unwrap_or_default().to_string();
                }
            }
            "no answer to the re-INVITE".to_string()
        })
        .await
        .unwrap();
        answers.push(answer);
        client.send(json!({"command": "hangup"})).await;
        client.wait_event("hangup", Duration::from_secs(10)).await;
    }
    assert!(
        answers.iter().all(|a| a.starts_with("SIP/2.0 200")),
        "re-INVITE answers: {answers:?}"
    );
}

/// What RFC 4475's notes allow as voxgate's (a UAS's) answer to one torture message.
#[derive(Debug, Clone, Copy)]
enum Torture {
    /// Well-formed: any final answer but 400 (the method decides which: 200, 405, 481, 4xx for
    /// an INVITE nobody takes, ...).
    Valid,
    /// Exactly these status codes.
    Codes(&'static [u16]),
    /// Any final answer (the RFC allows rejecting or accepting).
    Either,
    /// A response with no transaction here: dropped without an answer.
    Silent,
}

/// Each message of RFC 4475 §3 (tests/rfc4475/, see its README) and the answer its notes allow.
const RFC4475: &[(&str, Torture)] = &[
    ("3.1.1.1_wsinv", Torture::Valid),
    ("3.1.1.2_intmeth", Torture::Codes(&[501, 405])),
    ("3.1.1.3_esc01", Torture::Valid),
    ("3.1.1.4_escnull", Torture::Valid),
    ("3.1.1.5_esc02", Torture::Codes(&[501, 405])),
    ("3.1.1.6_lwsdisp", Torture::Codes(&[200])),
    ("3.1.1.7_longreq", Torture::Valid),
    ("3.1.1.8_dblreq", Torture::Valid),
    ("3.1.1.9_semiuri", Torture::Codes(&[200])),
    ("3.1.1.10_transports", Torture::Codes(&[200])),
    ("3.1.1.11_mpart01", Torture::Valid),
    ("3.1.1.12_unreason", Torture::Silent),
    ("3.1.1.13_noreason", Torture::Silent),
    ("3.1.2.1_badinv01", Torture::Codes(&[400])),
    ("3.1.2.2_clerr", Torture::Codes(&[400])),
    ("3.1.2.3_ncl", Torture::Codes(&[400])),
    ("3.1.2.4_scalar02", Torture::Codes(&[400])),
    ("3.1.2.5_scalarlg", Torture::Silent),
    ("3.1.2.6_quotbal", Torture::Codes(&[400])),
    ("3.1.2.7_ltgtruri", Torture::Codes(&[400])),
    ("3.1.2.8_lwsruri", Torture::Codes(&[400])),
    ("3.1.2.9_lwsstart", Torture::Codes(&[400])),
    ("3.1.2.10_trws", Torture::Codes(&[400])),
    ("3.1.2.11_escruri", Torture::Codes(&[400])),
    ("3.1.2.12_baddate", Torture::Either),
    ("3.1.2.13_regbadct", Torture::Codes(&[400])),
    ("3.1.2.14_badaspec", Torture::Either),
    ("3.1.2.15_baddn", Torture::Codes(&[400])),
    ("3.1.2.16_badvers", Torture::Codes(&[505])),
    ("3.1.2.17_mismatch01", Torture::Codes(&[400])),
    ("3.1.2.18_mismatch02", Torture::Codes(&[400, 501])),
    ("3.1.2.19_bigcode", Torture::Silent),
    ("3.2.1_badbranch", Torture::Codes(&[200])),
    ("3.3.1_insuf", Torture::Codes(&[400])),
    ("3.3.2_unkscm", Torture::Codes(&[416])),
    ("3.3.3_novelsc", Torture::Codes(&[416])),
    ("3.3.4_unksm2", Torture::Either),
    ("3.3.5_bext01", Torture::Codes(&[420])),
    ("3.3.6_invut", Torture::Codes(&[415])),
    ("3.3.7_regaut01", Torture::Valid),
    ("3.3.8_multi01", Torture::Codes(&[400])),
    ("3.3.9_mcl01", Torture::Codes(&[400])),
    ("3.3.10_bcast", Torture::Silent),
    ("3.3.11_zeromf", Torture::Codes(&[200])),
    ("3.3.12_cparam01", Torture::Valid),
    ("3.3.13_cparam02", Torture::Valid),
    ("3.3.14_regescrt", Torture::Valid),
    ("3.3.15_sdp01", Torture::Codes(&[406])),
    ("3.4.1_inv2543", Torture::Valid),
];

/// A torture message as sent: the file's lines joined with CRLF, `{0xHH}` as that octet.
fn torture_message(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/rfc4475")
        .join(format!("{name}.sip"));
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::with_capacity(text.len() + 64);
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\n' {
            out.extend_from_slice(b"\r\n");
            i += 1;
        } else if text[i..].starts_with(b"{0x") && text.len() >= i + 6 && text[i + 5] == b'}' {
            let hex = std::str::from_utf8(&text[i + 3..i + 5]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 6;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// The Call-ID of a torture message (`Call-ID:` or `i:`), to tell its answers from others'.
fn torture_call_id(msg: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    text.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        let n = n.trim();
        (n.eq_ignore_ascii_case("call-id") || n == "i").then(|| v.trim().to_string())
    })
}

/// The final answer with `call_id` among the SIP messages in `stream` (framed by
/// Content-Length), if one has come.
fn final_in_stream(stream: &[u8], call_id: Option<&str>) -> Option<String> {
    let mut rest = stream;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_string();
        let body = header(&head, "Content-Length")
            .or_else(|| header(&head, "l"))
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(0);
        let head = head.trim_start_matches(['\r', '\n']).to_string();
        let ours =
            call_id.is_none() || header(&head, "Call-ID").or_else(|| header(&head, "i")) == call_id;
        if ours && head.starts_with("SIP/2.0 ") && !head.starts_with("SIP/2.0 1") {
            return Some(head);
        }
        rest = &rest[(end + 4 + body).min(rest.len())..];
    }
    None
}

/// Sends every RFC 4475 message to `sip` over `tcp` or UDP (from 127.0.47.75:5060) and
/// collects each one's final answer (matched by Call-ID), waiting `wait` for those that expect
/// one.
fn torture_run(sip: &str, tcp: bool) -> Vec<(&'static str, Torture, Option<String>)> {
    use std::io::{Read, Write};
    let udp = (!tcp).then(|| {
        let s = std::net::UdpSocket::bind("127.0.47.75:5060").expect("bind 127.0.47.75:5060");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s
    });
    let mut buf = vec![0u8; 65_536];
    let mut results = Vec::new();
    for (name, expect) in RFC4475 {
        let msg = torture_message(name);
        let call_id = torture_call_id(&msg);
        // Over TCP, clerr's Content-Length (9999) announces octets that never come: the server
        // waits for them (RFC 4475 §3.1.2.2), so no answer is due before the connection closes.
        let expect = match (*name, tcp) {
            ("3.1.2.2_clerr", true) => Torture::Silent,
            _ => *expect,
        };
        let wait = match expect {
            Torture::Silent => Duration::from_millis(700),
            _ => Duration::from_secs(8),
        };
        let deadline = std::time::Instant::now() + wait;
        let mut answer = None;
        if let Some(s) = &udp {
            s.send_to(&msg, sip).unwrap();
            while answer.is_none() && std::time::Instant::now() < deadline {
                let Ok(n) = s.recv(&mut buf) else { continue };
                answer = final_in_stream(&buf[..n], call_id.as_deref());
            }
        } else {
            let mut c = std::net::TcpStream::connect(sip).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            c.write_all(&msg).unwrap();
            let mut got = Vec::new();
            while answer.is_none() && std::time::Instant::now() < deadline {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        answer = final_in_stream(&got, call_id.as_deref());
                    }
                    Err(_) => continue,
                }
            }
        }
        results.push((*name, expect, answer));
    }
    results
}

/// Issue 10 point 2: every RFC 4475 §3 message over UDP and over TCP gets the answer the RFC's
/// notes allow, the server never stops answering, and no call is left behind. Over UDP,
/// responses without `rport` go to the Via's sent-by port (RFC 3261 §18.2.2), 5060 for these
/// messages, so the test sends from 5060 on an address of its own; over TCP each message has a
/// connection of its own and its answers come back on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4475_torture_messages_get_the_answers_the_rfc_allows() {
    // A server per transport: the INVITEs' server transactions outlive a run (Timer H waits
    // for an ACK this test does not send), and the same message over TCP would match them.
    for tcp in [false, true] {
        torture_check(tcp).await;
    }
}

async fn torture_check(tcp: bool) {
    let transport = if tcp { "TCP" } else { "UDP" };
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let sip = server.sip_addr.clone();
    let sip2 = sip.clone();
    let results = tokio::task::spawn_blocking(move || torture_run(&sip2, tcp))
        .await
        .unwrap();
    if tcp {
        // A refused request does not end the connection: the next one on it is served, and a
        // keep-alive ping (CRLFCRLF) gets its pong (RFC 5626 §3.5.1).
        let answers = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(&sip).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65_536];
            let mut answers = Vec::new();
            for name in ["3.1.2.1_badinv01", "3.1.1.6_lwsdisp"] {
                let msg = torture_message(name);
                let id = torture_call_id(&msg);
                c.write_all(&msg).unwrap();
                for _ in 0..50 {
                    if let Some(a) = final_in_stream(&got, id.as_deref()) {
                        answers.push(a.lines().next().unwrap_or_default().to_string());
                        break;
                    }
                    if let Ok(n) = c.read(&mut buf) {
                        got.extend_from_slice(&buf[..n]);
                    }
                }
            }
            c.write_all(b"\r\n\r\n").unwrap();
            let before = got.len();
            for _ in 0..20 {
                if got[before..].starts_with(b"\r\n") {
                    answers.push("pong".into());
                    break;
                }
                if let Ok(n) = c.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            answers
        })
        .await
        .unwrap();
        assert_eq!(
            answers,
            [
                "SIP/2.0 400 Malformed Via: an empty parameter or list element",
                "SIP/2.0 200 OK",
                "pong"
            ]
        );
    }

    let mut wrong = Vec::new();
    for (name, expect, answer) in &results {
        let code = answer.as_ref().map(|a| {
            a.split(' ')
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0)
        });
        let ok = match (expect, code) {
            (Torture::Silent, None) => true,
            (Torture::Valid, Some(c)) => c != 400 && c >= 200,
            (Torture::Either, Some(c)) => c >= 200,
            (Torture::Codes(cs), Some(c)) => cs.contains(&c),
            _ => false,
        };
        let line = answer
            .as_deref()
            .map(|a| a.lines().next().unwrap_or_default().to_string())
            .unwrap_or_else(|| "no answer".into());
        eprintln!("{transport} {name:24} {line}");
        if !ok {
            wrong.push(format!(
                "{transport} {name}: expected {expect:?}, got {line}"
            ));
        }
        // 415 names what we take, 420 what we do not support (RFC 3261 §21.4.13, §21.4.15).
        if let (Some(415), Some(a)) = (code, answer) {
            assert!(header(a, "Accept").is_some(), "{name}: 415 without Accept");
        }
        if let (Some(420), Some(a)) = (code, answer) {
            assert!(
                header(a, "Unsupported").is_some(),
                "{name}: 420 without Unsupported"
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The server still answers, and no call is left behind.
    let h: serde_json::Value = reqwest::get(server.http("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    call_sessions(&server, 0).await;
    let lists: serde_json::Value = reqwest::get(server.http("/call/lists"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(lists["calls"], serde_json::json!([]), "{lists}");
}

/// A raw-UDP far end's answer to `req`: `code reason` with its Via, From, Call-ID, CSeq, To
/// (tagged `tag`) and `extra` headers (CRLF-terminated lines) and `body`.
fn far_answer(req: &str, code: &str, tag: &str, extra: &str, body: &str) -> String {
    let mut resp = format!("SIP/2.0 {code}\r\n");
    for l in req.split("\r\n").skip(1) {
        let name = l
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if ["via", "v", "from", "f", "call-id", "i", "cseq"].contains(&name.as_str()) {
            resp.push_str(l);
            resp.push_str("\r\n");
        } else if name == "to" || name == "t" {
            if l.contains("tag=") {
                resp.push_str(&format!("{l}\r\n"));
            } else {
                resp.push_str(&format!("{l};tag={tag}\r\n"));
            }
        }
    }
    resp.push_str(extra);
    resp.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    resp
}

/// Issue 10 point 5, RFC 4028 as UAS: an INVITE asking for less than Min-SE gets 422 with
/// `Min-SE: 90`; a granted session timer is stated in the 200 (`Session-Expires`,
/// `Require: timer`), a refresh (UPDATE) is answered and restarts the clock, and when refreshes
/// stop voxgate sends BYE after the interval minus a third (60 s of 90) and the client hears
/// `error` and `hangup`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_timers_as_uas_refuse_grant_and_expire() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let sip = server.sip_addr.clone();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let rtp = free_udp_port();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
    );
    let send = |method: &str, call_id: &str, cseq: u32, to_tag: &str, extra: &str, body: &str| {
        let to_tag = if to_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={to_tag}")
        };
        let m = format!(
            "{method} sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bK-st-{call_id}-{cseq}\r\n\
             From: <sip:5551234@127.0.0.1>;tag=st1\r\nTo: <sip:1000@{sip}>{to_tag}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:5551234@{me}>\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.send_to(m.as_bytes(), &sip).unwrap();
    };
    let next = |want: &dyn Fn(&str) -> bool, secs: u64| -> Option<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut buf = vec![0u8; 65_536];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if want(&m) {
                    return Some(m);
                }
            }
        }
        None
    };
    let final_for = |method: &'static str| {
        move |m: &str| {
            !m.starts_with("SIP/2.0 1")
                && m.starts_with("SIP/2.0 ")
                && header(m, "CSeq").is_some_and(|c| c.ends_with(method))
        }
    };

    // Too short an interval: 422 with our Min-SE, and no call.
    send(
        "INVITE",
        "st-short",
        1,
        "",
        "Session-Expires: 60\r\nContent-Type: application/sdp\r\n",
        &sdp,
    );
    let r = tokio::task::block_in_place(|| next(&final_for("INVITE"), 10)).expect("an answer");
    assert!(r.starts_with("SIP/2.0 422 "), "{r}");
    assert_eq!(header(&r, "Min-SE"), Some("90"), "{r}");
    send("ACK", "st-short", 1, "", "", "");

    // Granted: the far end (UAC) refreshes.
    send(
        "INVITE",
        "st-ok",
        1,
        "",
        "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\nContent-Type: application/sdp\r\n",
        &sdp,
    );
    client.wait_event("incoming", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    let ok = tokio::task::block_in_place(|| next(&final_for("INVITE"), 10)).expect("a 200");
    assert!(ok.starts_with("SIP/2.0 200 "), "{ok}");
    assert_eq!(
        header(&ok, "Session-Expires"),
        Some("90;refresher=uac"),
        "{ok}"
    );
    assert_eq!(header(&ok, "Require"), Some("timer"), "{ok}");
    let tag = header(&ok, "To")
        .and_then(|t| t.split("tag=").nth(1))
        .map(|t| t.split(';').next().unwrap().trim().to_string())
        .expect("a To tag");
    send("ACK", "st-ok", 1, &tag, "", "");
    let answered = std::time::Instant::now();
    client.wait_event("answer", Duration::from_secs(5)).await;

    // A refresh 15 s in: answered with the session restated; the clock restarts.
    tokio::time::sleep(Duration::from_secs(15)).await;
    send(
        "UPDATE",
        "st-ok",
        2,
        &tag,
        "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
        "",
    );
    let r = tokio::task::block_in_place(|| next(&final_for("UPDATE"), 10)).expect("an answer");
    assert!(r.starts_with("SIP/2.0 200 "), "{r}");
    assert_eq!(
        header(&r, "Session-Expires"),
        Some("90;refresher=uac"),
        "{r}"
    );

    // No more refreshes: BYE 60 s after the last one (not 60 s after the answer).
    let bye = tokio::task::block_in_place(|| next(&|m: &str| m.starts_with("BYE "), 90))
        .expect("voxgate never sent BYE");
    let at = answered.elapsed();
    assert!(
        at >= Duration::from_secs(70) && at <= Duration::from_secs(90),
        "BYE {at:?} after the answer"
    );
    sock.send_to(far_answer(&bye, "200 OK", &tag, "", "").as_bytes(), &sip)
        .unwrap();
    let e = client
        .wait_for("the session-expired error", Duration::from_secs(5), |e| {
            e["event"] == "error" && e["sender"] == "sip"
        })
        .await;
    assert!(
        e["error"].as_str().unwrap().contains("session expired"),
        "{e}"
    );
    let h = client.wait_event("hangup", Duration::from_secs(5)).await;
    assert_eq!(h["initiator"], "system", "{h}");
}

/// Issue 10 point 5, RFC 4028 as UAC: voxgate's INVITE says `Supported: timer` and asks for
/// `Session-Expires: 1800`; when the far end grants 90 s with `refresher=uac`, voxgate refreshes
/// with an UPDATE after half the interval, carrying the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_timers_as_uac_ask_and_refresh() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    far.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let far_addr = far.local_addr().unwrap();
    let rtp = free_udp_port();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client
        .send(json!({"command": "invite", "option": {"callee": format!("sip:bob@{far_addr}"), "codec": "pcmu"}}))
        .await;
    let (invite, update, update_at) = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 65_536];
        let mut invite = None;
        let mut answered = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(70);
        while std::time::Instant::now() < deadline {
            let Ok((n, from)) = far.recv_from(&mut buf) else {
                continue;
            };
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            if m.starts_with("INVITE ") && invite.is_none() {
                let sdp = format!(
                    "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
                );
                let extra = format!(
                    "Contact: <sip:bob@{far_addr}>\r\nSession-Expires: 90;refresher=uac\r\nRequire: timer\r\n\
                     Allow: INVITE, ACK, BYE, CANCEL, UPDATE\r\nContent-Type: application/sdp\r\n"
                );
                far.send_to(far_answer(&m, "200 OK", "far", &extra, &sdp).as_bytes(), from)
                    .unwrap();
                invite = Some(m);
                answered = Some(std::time::Instant::now());
            } else if m.starts_with("UPDATE ") {
                far.send_to(
                    far_answer(&m, "200 OK", "far", "Session-Expires: 90;refresher=uac\r\n", "")
                        .as_bytes(),
                    from,
                )
                .unwrap();
                let at = answered.map(|a| a.elapsed());
                return (invite, Some(m), at);
            }
        }
        (invite, None, None)
    })
    .await
    .unwrap();
    let invite = invite.expect("no INVITE reached the far end");
    let supported = |m: &str, tag: &str| {
        m.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                (n.trim().eq_ignore_ascii_case("supported") || n.trim() == "k")
                    && v.split(',').any(|t| t.trim() == tag)
            })
        })
    };
    assert!(supported(&invite, "timer"), "{invite}");
    assert_eq!(header(&invite, "Session-Expires"), Some("1800"), "{invite}");
    let update = update.expect("voxgate never refreshed the session");
    assert_eq!(
        header(&update, "Session-Expires"),
        Some("90;refresher=uac"),
        "{update}"
    );
    let at = update_at.unwrap();
    assert!(
        at >= Duration::from_secs(40) && at <= Duration::from_secs(55),
        "refresh {at:?} after the answer"
    );
    client.wait_event("answer", Duration::from_secs(1)).await;
    client.send(json!({"command": "hangup"})).await;
    client.wait_event("hangup", Duration::from_secs(10)).await;
}

/// An RFC 7616 `qop=auth` digest response, computed here with RustCrypto's hashes (not with the
/// server's code): `alg` is `MD5` or `SHA-256`.
#[allow(clippy::too_many_arguments)]
fn digest_response(
    alg: &str,
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    cnonce: &str,
) -> String {
    let h = |s: String| -> String {
        use sha2::Digest;
        if alg == "MD5" {
            hex::encode(md5::Md5::digest(s.as_bytes()))
        } else {
            hex::encode(sha2::Sha256::digest(s.as_bytes()))
        }
    };
    let ha1 = h(format!("{user}:{realm}:{password}"));
    let ha2 = h(format!("{method}:{uri}"));
    h(format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"))
}

/// Issue 10 point 6, RFC 3261 §22 and RFC 8760: with `[[sip.users]]`, a REGISTER without
/// credentials gets 401 with a SHA-256 and an MD5 challenge; a wrong password or an unknown
/// user 403; good credentials (SHA-256 or MD5) 200 with the binding. An INVITE from outside
/// `sip.allow` needs credentials too (401, then served), and `invite` with the username as
/// `callee` dials the registered Contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_devices_register_and_call_with_digest_credentials() {
    let server = Server::start_with_config(
        &[
            ("VOXGATE_ASR__ENGINE", "none"),
            ("VOXGATE_SIP__RING_TIMEOUT_SECS", "2"),
        ],
        "[sip]\nallow = [\"192.0.2.1/32\"]\n[[sip.users]]\nusername = \"alice\"\npassword = \"s3cret\"\n",
    );
    let sip = server.sip_addr.clone();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let uri = format!("sip:{sip}");
    let send = |method: &str, user: &str, cseq: u32, extra: &str, body: &str| {
        let ruri = if method == "REGISTER" {
            uri.clone()
        } else {
            format!("sip:1000@{sip}")
        };
        let to = if method == "REGISTER" {
            format!("<sip:{user}@{sip}>")
        } else {
            format!("<sip:1000@{sip}>")
        };
        let m = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bK-reg-{user}-{cseq}\r\n\
             From: <sip:{user}@{sip}>;tag=r{cseq}\r\nTo: {to}\r\nCall-ID: reg-{user}-{method}@127.0.0.1\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:{user}@{me}>\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.send_to(m.as_bytes(), &sip).unwrap();
    };
    let final_for = |cseq: u32| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65_536];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let r = String::from_utf8_lossy(&buf[..n]).to_string();
                let ours = header(&r, "CSeq")
                    .and_then(|c| c.split_whitespace().next())
                    .and_then(|n| n.parse::<u32>().ok())
                    == Some(cseq);
                if ours && r.starts_with("SIP/2.0 ") && !r.starts_with("SIP/2.0 1") {
                    return r;
                }
            }
        }
        panic!("no final answer to CSeq {cseq}");
    };
    let challenges = |r: &str| -> Vec<(String, String)> {
        r.lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
            .map(|l| {
                let param = |k: &str| {
                    l.split(&format!("{k}=")[..])
                        .nth(1)
                        .map(|v| {
                            v.trim_start_matches('"')
                                .split(['"', ','])
                                .next()
                                .unwrap()
                                .to_string()
                        })
                        .unwrap_or_default()
                };
                (param("algorithm"), param("nonce"))
            })
            .collect()
    };
    let authorization = |alg: &str,
                         user: &str,
                         pass: &str,
                         method: &str,
                         uri: &str,
                         nonce: &str| {
        let resp = digest_response(alg, user, "voxgate", pass, method, uri, nonce, "0a4f113b");
        format!(
            "Authorization: Digest username=\"{user}\", realm=\"voxgate\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{resp}\", algorithm={alg}, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\n"
        )
    };

    // No credentials: two challenges, in `sip.digest_algorithms` order (MD5 first by default,
    // for clients that read only the first, SIPp among them; RFC 8760 §2.4).
    send("REGISTER", "alice", 1, "Expires: 600\r\n", "");
    let r = tokio::task::block_in_place(|| final_for(1));
    assert!(r.starts_with("SIP/2.0 401 "), "{r}");
    let ch = challenges(&r);
    assert_eq!(
        ch.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["MD5", "SHA-256"],
        "{r}"
    );
    let nonce = ch[0].1.clone();
    // Wrong password, unknown user: 403.
    let bad = authorization("MD5", "alice", "guess", "REGISTER", &uri, &nonce);
    send(
        "REGISTER",
        "alice",
        2,
        &format!("Expires: 600\r\n{bad}"),
        "",
    );
    let r = tokio::task::block_in_place(|| final_for(2));
    assert!(r.starts_with("SIP/2.0 403 "), "{r}");
    let who = authorization("MD5", "mallory", "s3cret", "REGISTER", &uri, &nonce);
    send(
        "REGISTER",
        "mallory",
        3,
        &format!("Expires: 600\r\n{who}"),
        "",
    );
    let r = tokio::task::block_in_place(|| final_for(3));
    assert!(r.starts_with("SIP/2.0 403 "), "{r}");
    // Good credentials, SHA-256 then MD5: 200 with the binding.
    for (cseq, alg) in [(4, "SHA-256"), (5, "MD5")] {
        let good = authorization(alg, "alice", "s3cret", "REGISTER", &uri, &nonce);
        send(
            "REGISTER",
            "alice",
            cseq,
            &format!("Expires: 600\r\n{good}"),
            "",
        );
        let r = tokio::task::block_in_place(|| final_for(cseq));
        assert!(r.starts_with("SIP/2.0 200 "), "{alg}: {r}");
        let contact = header(&r, "Contact").unwrap_or_default();
        assert!(
            contact.contains(&format!("sip:alice@{me}")) && contact.contains("expires="),
            "{alg}: {r}"
        );
    }

    // An INVITE from outside sip.allow: 401 without credentials, served with them (no client
    // waits, so it rings and gets 480 after the ring timeout).
    let rtp = free_udp_port();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
    );
    send(
        "INVITE",
        "alice",
        6,
        "Content-Type: application/sdp\r\n",
        &sdp,
    );
    let r = tokio::task::block_in_place(|| final_for(6));
    assert!(r.starts_with("SIP/2.0 401 "), "{r}");
    let nonce = challenges(&r)[0].1.clone();
    let ruri = format!("sip:1000@{sip}");
    let good = authorization("SHA-256", "alice", "s3cret", "INVITE", &ruri, &nonce);
    send(
        "INVITE",
        "alice",
        7,
        &format!("{good}Content-Type: application/sdp\r\n"),
        &sdp,
    );
    let r = tokio::task::block_in_place(|| final_for(7));
    assert!(r.starts_with("SIP/2.0 480 "), "{r}");

    // The application calls the registered device by its username.
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client
        .send(json!({"command": "invite", "option": {"callee": "alice", "codec": "pcmu"}}))
        .await;
    let invite = tokio::task::block_in_place(|| {
        let mut buf = vec![0u8; 65_536];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if m.starts_with("INVITE ") {
                    sock.send_to(
                        far_answer(&m, "486 Busy Here", "dev", "", "").as_bytes(),
                        from,
                    )
                    .unwrap();
                    return m;
                }
            }
        }
        panic!("the registered device got no INVITE");
    });
    assert!(
        invite.starts_with(&format!("INVITE sip:alice@{me} ")),
        "{invite}"
    );
    let h = client.wait_event("hangup", Duration::from_secs(10)).await;
    assert_eq!(h["reason"], "busy", "{h}");

    // A real client: SIPp answers the challenge itself (`[authentication]`, -au/-ap).
    sipp_available();
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(dir.path(), "uac_register_auth.xml", &[]);
    let (code, log) = sipp_uac(
        &server,
        &scen,
        "alice",
        dir.path(),
        &["-au", "alice", "-ap", "s3cret"],
    )
    .await;
    assert_eq!(code, 0, "SIPp REGISTER with digest failed:\n{log}");
    let (code, log) = sipp_uac(
        &server,
        &scen,
        "alice",
        dir.path(),
        &["-au", "alice", "-ap", "wrong"],
    )
    .await;
    assert_ne!(code, 0, "a wrong password registered:\n{log}");

    // An account kept in the store (`voxgate sip-users add`, HA1 values only), added while the
    // server runs: MD5 and SHA-256 both verify against the stored HA1s; removed, it is unknown.
    server.cli(&["sip-users", "add", "carol", "--password", "carol-pass-1"]);
    let listed = server.cli(&["sip-users", "list"]);
    assert!(
        listed.contains("carol") && !listed.contains("carol-pass-1"),
        "{listed}"
    );
    let db = std::fs::read(server.data_dir.path().join("voxgate.db")).unwrap_or_default();
    assert!(
        !db.windows(12).any(|w| w == b"carol-pass-1"),
        "the password itself was stored"
    );
    send("REGISTER", "carol", 20, "Expires: 600\r\n", "");
    let r = tokio::task::block_in_place(|| final_for(20));
    assert!(r.starts_with("SIP/2.0 401 "), "{r}");
    let nonce = challenges(&r)[0].1.clone();
    for (cseq, alg) in [(21, "SHA-256"), (22, "MD5")] {
        let good = authorization(alg, "carol", "carol-pass-1", "REGISTER", &uri, &nonce);
        send(
            "REGISTER",
            "carol",
            cseq,
            &format!("Expires: 600\r\n{good}"),
            "",
        );
        let r = tokio::task::block_in_place(|| final_for(cseq));
        assert!(r.starts_with("SIP/2.0 200 "), "store user, {alg}: {r}");
    }
    let bad = authorization("SHA-256", "carol", "carol-pass-2", "REGISTER", &uri, &nonce);
    send(
        "REGISTER",
        "carol",
        23,
        &format!("Expires: 600\r\n{bad}"),
        "",
    );
    let r = tokio::task::block_in_place(|| final_for(23));
    assert!(r.starts_with("SIP/2.0 403 "), "{r}");
    server.cli(&["sip-users", "remove", "carol"]);
    let good = authorization("MD5", "carol", "carol-pass-1", "REGISTER", &uri, &nonce);
    send(
        "REGISTER",
        "carol",
        24,
        &format!("Expires: 600\r\n{good}"),
        "",
    );
    let r = tokio::task::block_in_place(|| final_for(24));
    assert!(
        r.starts_with("SIP/2.0 403 "),
        "a removed account registered: {r}"
    );
}

/// Issue 10 point 5, RFC 3262 as UAC: voxgate's INVITE says `Supported: 100rel`, and a reliable
/// 180 (`Require: 100rel`, `RSeq`) gets a PRACK with the matching `RAck`; the call then answers
/// and ends normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reliable_provisional_response_is_pracked() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    far.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let far_addr = far.local_addr().unwrap();
    let rtp = free_udp_port();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client
        .send(json!({"command": "invite", "option": {"callee": format!("sip:bob@{far_addr}"), "codec": "pcmu"}}))
        .await;
    let (invite, prack) = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 65_536];
        let mut invite: Option<String> = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            let Ok((n, from)) = far.recv_from(&mut buf) else {
                continue;
            };
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            let contact = format!("Contact: <sip:bob@{far_addr}>\r\n");
            if m.starts_with("INVITE ") && invite.is_none() {
                let extra = format!("{contact}Require: 100rel\r\nRSeq: 7\r\n");
                far.send_to(far_answer(&m, "180 Ringing", "far", &extra, "").as_bytes(), from)
                    .unwrap();
                invite = Some(m);
            } else if m.starts_with("PRACK ") {
                far.send_to(far_answer(&m, "200 OK", "far", "", "").as_bytes(), from)
                    .unwrap();
                // Now answer the INVITE.
                let inv = invite.clone().unwrap();
                let sdp = format!(
                    "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
                );
                let extra = format!("{contact}Content-Type: application/sdp\r\n");
                far.send_to(far_answer(&inv, "200 OK", "far", &extra, &sdp).as_bytes(), from)
                    .unwrap();
                return (invite, Some((m, far)));
            }
        }
        (invite, None)
    })
    .await
    .unwrap();
    let invite = invite.expect("no INVITE reached the far end");
    assert!(
        invite
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("supported:")
                && l.split(':')
                    .nth(1)
                    .is_some_and(|v| v.split(',').any(|t| t.trim() == "100rel"))),
        "{invite}"
    );
    let (prack, far) = prack.expect("no PRACK for the reliable 180");
    let cseq = header(&invite, "CSeq").unwrap().to_string();
    assert_eq!(
        header(&prack, "RAck"),
        Some(format!("7 {cseq}").as_str()),
        "{prack}"
    );
    client.wait_event("answer", Duration::from_secs(10)).await;
    client.send(json!({"command": "hangup"})).await;
    let bye = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 65_536];
        for _ in 0..50 {
            if let Ok((n, from)) = far.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if m.starts_with("BYE ") {
                    far.send_to(far_answer(&m, "200 OK", "far", "", "").as_bytes(), from)
                        .unwrap();
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(bye, "no BYE after hangup");
    client.wait_event("hangup", Duration::from_secs(10)).await;
}

/// Issue 10 point 5, RFC 3262 §3 as UAS: a caller that requires 100rel gets a reliable 180
/// (`Require: 100rel`, `RSeq`), retransmitted until its PRACK, which gets 200; the 200 to the
/// INVITE waits for that PRACK even when the application accepts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_requires_100rel_gets_a_reliable_180() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let sip = server.sip_addr.clone();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let rtp = free_udp_port();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
    );
    let send = |method: &str, cseq: u32, to_tag: &str, extra: &str, body: &str| {
        let to_tag = if to_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={to_tag}")
        };
        let m = format!(
            "{method} sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bK-rel-{method}-{cseq}\r\n\
             From: <sip:5551234@127.0.0.1>;tag=rel1\r\nTo: <sip:1000@{sip}>{to_tag}\r\nCall-ID: rel-100@127.0.0.1\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:5551234@{me}>\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.send_to(m.as_bytes(), &sip).unwrap();
    };
    send(
        "INVITE",
        1,
        "",
        "Require: 100rel\r\nSupported: 100rel\r\nContent-Type: application/sdp\r\n",
        &sdp,
    );
    client.wait_event("incoming", Duration::from_secs(10)).await;
    // The application accepts at once; the 200 must still wait for the PRACK.
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    let (ringings, early_200) = tokio::task::block_in_place(|| {
        let mut buf = vec![0u8; 65_536];
        let mut ringings = Vec::new();
        let mut early_200 = None;
        let deadline = std::time::Instant::now() + Duration::from_millis(2200);
        while std::time::Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if m.starts_with("SIP/2.0 180 ") {
                    ringings.push(m);
                } else if m.starts_with("SIP/2.0 200 ") {
                    early_200 = Some(m);
                }
            }
        }
        (ringings, early_200)
    });
    assert!(early_200.is_none(), "200 before the PRACK: {early_200:?}");
    assert!(
        ringings.len() >= 2,
        "the reliable 180 was not retransmitted: {ringings:?}"
    );
    let r = &ringings[0];
    assert_eq!(header(r, "Require"), Some("100rel"), "{r}");
    assert_eq!(header(r, "RSeq"), Some("1"), "{r}");
    let tag = header(r, "To")
        .and_then(|t| t.split("tag=").nth(1))
        .map(|t| t.split(';').next().unwrap().trim().to_string())
        .expect("a To tag");
    send("PRACK", 2, &tag, "RAck: 1 1 INVITE\r\n", "");
    let (prack_ok, invite_ok) = tokio::task::block_in_place(|| {
        let mut buf = vec![0u8; 65_536];
        let (mut prack_ok, mut invite_ok) = (None, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && (prack_ok.is_none() || invite_ok.is_none()) {
            if let Ok(n) = sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                let cseq = header(&m, "CSeq").unwrap_or_default().to_string();
                if m.starts_with("SIP/2.0 200 ") && cseq.ends_with("PRACK") {
                    prack_ok = Some(m);
                } else if m.starts_with("SIP/2.0 200 ") && cseq.ends_with("INVITE") {
                    invite_ok = Some(m);
                }
            }
        }
        (prack_ok, invite_ok)
    });
    assert!(prack_ok.is_some(), "the PRACK got no 200");
    assert!(invite_ok.is_some(), "no 200 to the INVITE after the PRACK");
    send("ACK", 1, &tag, "", "");
    client.wait_event("answer", Duration::from_secs(5)).await;
    send("BYE", 3, &tag, "", "");
    let h = client.wait_event("hangup", Duration::from_secs(5)).await;
    assert_eq!(h["reason"], "bye", "{h}");
}

/// Collects RTP payloads of payload type `pt` arriving on `sock` until `stop` is set (at most
/// `limit`); returns them decoded as 8 kHz μ-law (PCMU) samples and the packet count.
fn collect_pcmu(
    sock: std::net::UdpSocket,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    limit: Duration,
) -> (Vec<i16>, usize) {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut dec = voxgate_media::codec::AudioDecoder::new(voxgate_media::codec::Codec::Pcmu);
    let (mut pcm, mut packets) = (Vec::new(), 0);
    let mut buf = [0u8; 2048];
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if let Ok(n) = sock.recv(&mut buf) {
            if n > 12 && buf[1] & 0x7f == 0 {
                packets += 1;
                pcm.extend_from_slice(&dec.decode(&buf[12..n]).samples);
            }
        }
    }
    (pcm, packets)
}

/// Issue 10 point 5, early media with SIPp as the caller (tests/sipp/uac_early_media.xml): the
/// application sends `progress`; SIPp gets 183 with SDP, the client `ringing` with
/// `earlyMedia`; the TTS prompt reaches the caller's RTP socket before any 200 and transcribes
/// back; `accept` then sends the 200 and the call goes on until SIPp's BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_is_heard_before_the_answer() {
    sipp_available();
    let server = Server::start();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(
        dir.path(),
        "uac_early_media.xml",
        &[("RTP_PORT", &rtp_port)],
    );
    let sipp = tokio::spawn(sipp_uac(&server, &scen, "1000", dir.path(), &[]));
    client.wait_event("incoming", Duration::from_secs(10)).await;
    // Before `progress` there is nothing to play into.
    client
        .send(json!({"command": "tts", "text": "too early"}))
        .await;
    let e = client
        .wait_for("error", Duration::from_secs(5), |e| e["sender"] == "tts")
        .await;
    assert!(e["error"].as_str().unwrap().contains("progress"), "{e}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let heard = tokio::task::spawn_blocking(move || collect_pcmu(rtp, s, Duration::from_secs(40)));
    client
        .send(json!({"command": "progress", "option": {"codec": "pcmu"}}))
        .await;
    let r = client
        .wait_for("ringing", Duration::from_secs(10), |e| {
            e["earlyMedia"] == true
        })
        .await;
    assert_eq!(r["earlyMedia"], true, "{r}");
    let sentence = "Please hold while we connect your call to the next available agent.";
    client
        .send(json!({"command": "tts", "text": sentence, "playId": "hold"}))
        .await;
    client.wait_event("trackEnd", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (pcm, packets) = heard.await.unwrap();
    assert!(
        client.events_named("answer").is_empty(),
        "answered before `accept`"
    );
    client
        .send(json!({"command": "accept", "option": {"codec": "pcmu"}}))
        .await;
    client.wait_event("answer", Duration::from_secs(10)).await;
    let h = client.wait_event("hangup", Duration::from_secs(20)).await;
    assert_eq!(h["reason"], "bye", "{h}");
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "SIPp early-media scenario failed:\n{log}");
    assert!(
        packets > 100,
        "only {packets} RTP packets before the answer"
    );
    let hyp = transcribe_samples(&server, &pcm, voxgate_media::SampleRate::HZ_8000, None).await;
    let w = wer(sentence, &hyp);
    eprintln!(
        "early media: {packets} packets before the 200, WER {:.1} % ({hyp})",
        w * 100.0
    );
    assert!(w <= 0.25, "the early prompt was not heard: {hyp:?}");
}

/// Issue 10 point 5, early media to a caller that requires 100rel (RFC 3262): the 183 waits for
/// the PRACK of the reliable 180, is itself reliable (`RSeq: 2`, retransmitted until PRACKed),
/// and the 200 — sent only after that PRACK — repeats the 183's SDP answer exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_early_media_for_a_caller_that_requires_100rel() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let sip = server.sip_addr.clone();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let rtp = free_udp_port();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0\r\n"
    );
    let send = |method: &str, cseq: u32, to_tag: &str, extra: &str, body: &str| {
        let to_tag = if to_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={to_tag}")
        };
        let m = format!(
            "{method} sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bK-em-{method}-{cseq}\r\n\
             From: <sip:5551234@127.0.0.1>;tag=em1\r\nTo: <sip:1000@{sip}>{to_tag}\r\nCall-ID: early-100rel@127.0.0.1\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:5551234@{me}>\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.send_to(m.as_bytes(), &sip).unwrap();
    };
    // Everything voxgate sends within `wait`, or until `done` says enough.
    let recv_all = |wait: Duration, done: &dyn Fn(&[String]) -> bool| {
        let mut buf = vec![0u8; 65_536];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline && !done(&got) {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        }
        got
    };
    send(
        "INVITE",
        1,
        "",
        "Require: 100rel\r\nSupported: 100rel\r\nContent-Type: application/sdp\r\n",
        &sdp,
    );
    client.wait_event("incoming", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "progress", "option": {}}))
        .await;
    // The 180 is not PRACKed yet: no 183 may come (RFC 3262 §3).
    let got = tokio::task::block_in_place(|| recv_all(Duration::from_millis(1500), &|_| false));
    assert!(
        !got.iter().any(|m| m.starts_with("SIP/2.0 183 ")),
        "183 before the 180's PRACK: {got:?}"
    );
    let r180 = got
        .iter()
        .find(|m| m.starts_with("SIP/2.0 180 "))
        .expect("a reliable 180");
    let tag = header(r180, "To")
        .and_then(|t| t.split("tag=").nth(1))
        .map(|t| t.split(';').next().unwrap().trim().to_string())
        .expect("a To tag");
    send("PRACK", 2, &tag, "RAck: 1 1 INVITE\r\n", "");
    let got = tokio::task::block_in_place(|| {
        recv_all(Duration::from_secs(5), &|g| {
            g.iter().filter(|m| m.starts_with("SIP/2.0 183 ")).count() >= 2
        })
    });
    let r183: Vec<&String> = got
        .iter()
        .filter(|m| m.starts_with("SIP/2.0 183 "))
        .collect();
    assert!(
        r183.len() >= 2,
        "the reliable 183 was not retransmitted before its PRACK: {got:?}"
    );
    assert_eq!(header(r183[0], "RSeq"), Some("2"), "{}", r183[0]);
    assert_eq!(header(r183[0], "Require"), Some("100rel"), "{}", r183[0]);
    let early_sdp = r183[0].split("\r\n\r\n").nth(1).unwrap().to_string();
    assert!(early_sdp.contains("m=audio "), "{}", r183[0]);
    assert!(
        !got.iter().any(|m| m.starts_with("SIP/2.0 200 ")
            && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))),
        "200 before any accept"
    );
    let r = client
        .wait_for("ringing", Duration::from_secs(5), |e| {
            e["earlyMedia"] == true
        })
        .await;
    assert_eq!(r["earlyMedia"], true);
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    // The 200 waits for the 183's PRACK.
    let got = tokio::task::block_in_place(|| recv_all(Duration::from_millis(1200), &|_| false));
    assert!(
        !got.iter().any(|m| m.starts_with("SIP/2.0 200 ")
            && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))),
        "200 before the 183's PRACK: {got:?}"
    );
    send("PRACK", 3, &tag, "RAck: 2 1 INVITE\r\n", "");
    let got = tokio::task::block_in_place(|| {
        recv_all(Duration::from_secs(10), &|g| {
            g.iter().any(|m| {
                m.starts_with("SIP/2.0 200 ")
                    && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
            })
        })
    });
    let ok = got
        .iter()
        .find(|m| {
            m.starts_with("SIP/2.0 200 ")
                && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
        })
        .expect("a 200 to the INVITE after the PRACK");
    assert_eq!(
        ok.split("\r\n\r\n").nth(1).unwrap(),
        early_sdp,
        "the 200's SDP differs from the 183's"
    );
    send("ACK", 1, &tag, "", "");
    client.wait_event("answer", Duration::from_secs(5)).await;
    send("BYE", 4, &tag, "", "");
    let h = client.wait_event("hangup", Duration::from_secs(5)).await;
    assert_eq!(h["reason"], "bye", "{h}");
}

/// Issue 10 point 5, REFER received (RFC 3515): the far end (a raw UA standing in for a PBX's
/// transferor) asks voxgate to transfer; the application hears `transfer` `requested` and
/// refuses (NOTIFY 603) the first time; accepts the second, to a busy target (SIPp
/// uas_busy.xml: NOTIFY 180 then 486, `transfer` `failed`, the call stays); accepts the third — an attended transfer whose
/// Refer-To carries `?Replaces=` (RFC 3891 §5): voxgate calls the target (SIPp,
/// tests/sipp/uas_replaces.xml, which checks the Replaces header and echoes RTP), NOTIFYs its
/// progress, sends the transferor BYE once the target answered, and the call goes on with the
/// target — the bot's speech comes back from it transcribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refer_from_the_far_end_is_refused_or_followed() {
    sipp_available();
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let scen = scenario(dir.path(), "uas_replaces.xml", &[]);
    let (target_port, sipp) = spawn_sipp_uas(
        vec!["-sf".into(), scen.display().to_string(), "-rtp_echo".into()],
        dir.path().to_path_buf(),
    );
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let sip = server.sip_addr.clone();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\n"
    );
    let send = |method: &str, cseq: u32, to_tag: &str, extra: &str, body: &str| {
        let to_tag = if to_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={to_tag}")
        };
        let m = format!(
            "{method} sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bK-xfer-{method}-{cseq}\r\n\
             From: <sip:agent@127.0.0.1>;tag=xf1\r\nTo: <sip:1000@{sip}>{to_tag}\r\nCall-ID: xfer-1@127.0.0.1\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:agent@{me}>\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.send_to(m.as_bytes(), &sip).unwrap();
    };
    // Reads for up to `wait`, answering voxgate's requests (NOTIFY, BYE) with 200, until `done`.
    let pump = |wait: Duration, done: &dyn Fn(&[String]) -> bool| {
        let mut buf = vec![0u8; 65_536];
        let mut got: Vec<String> = Vec::new();
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline && !done(&got) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if !m.starts_with("SIP/2.0 ") {
                    sock.send_to(far_answer(&m, "200 OK", "xf1", "", "").as_bytes(), from)
                        .unwrap();
                }
                got.push(m);
            }
        }
        got
    };
    let sipfrag = |got: &[String], code: &str| {
        got.iter()
            .any(|m| m.starts_with("NOTIFY ") && m.contains(&format!("SIP/2.0 {code}")))
    };
    send("INVITE", 1, "", "Content-Type: application/sdp\r\n", &sdp);
    client.wait_event("incoming", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "accept", "option": {"codec": "pcmu", "bargeIn": false}}))
        .await;
    let got = tokio::task::block_in_place(|| {
        pump(Duration::from_secs(5), &|g| {
            g.iter().any(|m| m.starts_with("SIP/2.0 200 "))
        })
    });
    let ok = got
        .iter()
        .find(|m| m.starts_with("SIP/2.0 200 "))
        .expect("200");
    let tag = header(ok, "To")
        .and_then(|t| t.split("tag=").nth(1))
        .map(|t| t.split(';').next().unwrap().trim().to_string())
        .expect("a To tag");
    // 1. Refused. The REFER overtakes the ACK of voxgate's 200 (as it may on any network): it
    //    must wait for the ACK and be answered, not dropped.
    let target = format!("sip:echo@127.0.0.1:{target_port}");
    let refer = format!("Refer-To: <{target}>\r\nReferred-By: <sip:agent@127.0.0.1>\r\n");
    send("REFER", 2, &tag, &refer, "");
    std::thread::sleep(Duration::from_millis(200));
    send("ACK", 1, &tag, "", "");
    client.wait_event("answer", Duration::from_secs(5)).await;
    let got = tokio::task::block_in_place(|| {
        pump(Duration::from_secs(5), &|g| {
            sipfrag(g, "100") && g.iter().any(|m| m.starts_with("SIP/2.0 202 "))
        })
    });
    let accepted = got.iter().position(|m| m.starts_with("SIP/2.0 202 "));
    let trying = got
        .iter()
        .position(|m| m.starts_with("NOTIFY ") && m.contains("SIP/2.0 100"));
    assert!(accepted.is_some(), "no 202 to the REFER: {got:?}");
    assert!(accepted < trying, "the NOTIFY overtook the 202: {got:?}");
    assert!(sipfrag(&got, "100"), "no NOTIFY 100 Trying: {got:?}");
    let t = client
        .wait_for("transfer requested", Duration::from_secs(5), |e| {
            e["event"] == "transfer" && e["state"] == "requested"
        })
        .await;
    assert_eq!(t["target"], target.as_str(), "{t}");
    assert_eq!(t["referredBy"], "sip:agent@127.0.0.1", "{t}");
    client.send(json!({"command": "rejectTransfer"})).await;
    let got = tokio::task::block_in_place(|| pump(Duration::from_secs(5), &|g| sipfrag(g, "603")));
    let n603 = got
        .iter()
        .find(|m| m.starts_with("NOTIFY ") && m.contains("SIP/2.0 603"))
        .unwrap_or_else(|| panic!("no NOTIFY 603: {got:?}"));
    assert!(
        header(n603, "Subscription-State").is_some_and(|s| s.starts_with("terminated")),
        "{n603}"
    );
    client
        .wait_for("transfer rejected", Duration::from_secs(5), |e| {
            e["event"] == "transfer" && e["state"] == "rejected"
        })
        .await;

    // 2. Accepted, but the target is busy: the transferor hears 180 then 486 in NOTIFYs, the
    //    application `ringing` then `failed` (486), and the call goes on with the transferor.
    let busy = scenario(dir.path(), "uas_busy.xml", &[]);
    let (busy_port, busy_sipp) = spawn_sipp_uas(
        vec!["-sf".into(), busy.display().to_string()],
        dir.path().to_path_buf(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy_target = format!("sip:busy@127.0.0.1:{busy_port}");
    send(
        "REFER",
        3,
        &tag,
        &format!("Refer-To: <{busy_target}>\r\n"),
        "",
    );
    tokio::task::block_in_place(|| pump(Duration::from_secs(5), &|g| sipfrag(g, "100")));
    client
        .wait_for("transfer requested (busy)", Duration::from_secs(5), |e| {
            e["event"] == "transfer"
                && e["state"] == "requested"
                && e["target"] == busy_target.as_str()
        })
        .await;
    client.send(json!({"command": "acceptTransfer"})).await;
    let got = tokio::task::block_in_place(|| pump(Duration::from_secs(10), &|g| sipfrag(g, "486")));
    assert!(sipfrag(&got, "180"), "no NOTIFY 180: {got:?}");
    assert!(sipfrag(&got, "486"), "no NOTIFY 486: {got:?}");
    assert!(
        !got.iter().any(|m| m.starts_with("BYE ")),
        "a failed transfer hung up on the transferor: {got:?}"
    );
    let f = client
        .wait_for("transfer failed", Duration::from_secs(5), |e| {
            e["event"] == "transfer" && e["state"] == "failed"
        })
        .await;
    assert_eq!(f["code"], 486, "{f}");
    assert!(
        client.events_named("hangup").is_empty(),
        "{:?}",
        client.events()
    );
    let (code, log) = busy_sipp.await.unwrap();
    assert_eq!(code, 0, "the busy target:\n{log}");

    // 3. Accepted, attended: the target must get the Replaces of the Refer-To, unescaped.
    let refer = format!(
        "Refer-To: <{target}?Replaces=xfer-old%40127.0.0.1%3Bto-tag%3Dold2%3Bfrom-tag%3Dold1>\r\nReferred-By: <sip:agent@127.0.0.1>\r\n"
    );
    send("REFER", 4, &tag, &refer, "");
    tokio::task::block_in_place(|| pump(Duration::from_secs(5), &|g| sipfrag(g, "100")));
    client
        .wait_for("transfer requested again", Duration::from_secs(5), |e| {
            e["event"] == "transfer" && e["state"] == "requested"
        })
        .await;
    client.send(json!({"command": "acceptTransfer"})).await;
    let got = tokio::task::block_in_place(|| {
        pump(Duration::from_secs(15), &|g| {
            g.iter().any(|m| m.starts_with("BYE "))
        })
    });
    assert!(sipfrag(&got, "200"), "no NOTIFY 200: {got:?}");
    assert!(
        got.iter().any(|m| m.starts_with("BYE ")),
        "the transferor got no BYE: {got:?}"
    );
    client
        .wait_for("transfer completed", Duration::from_secs(5), |e| {
            e["event"] == "transfer" && e["state"] == "completed"
        })
        .await;
    // The call goes on with the target: what the bot says comes back from SIPp's echo.
    let sentence = "The weather today is sunny with a light breeze from the west.";
    client
        .send(json!({"command": "tts", "text": sentence}))
        .await;
    client.wait_event("trackEnd", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        client.events_named("hangup").is_empty(),
        "the transferor's BYE ended the call: {:?}",
        client.events()
    );
    client.send(json!({"command": "hangup"})).await;
    client.wait_event("hangup", Duration::from_secs(10)).await;
    let hyp = finals_text(&client);
    let w = wer(sentence, &hyp);
    eprintln!("after the transfer: WER {:.1} % ({hyp})", w * 100.0);
    assert!(w <= 0.25, "no audio through the transfer target: {hyp:?}");
    let (code, log) = sipp.await.unwrap();
    assert_eq!(
        code, 0,
        "the target (SIPp) did not see a clean call:\n{log}"
    );
}

/// Issue 10 point 5, RFC 3891 as the recipient: an INVITE whose `Replaces` names an answered
/// call (attended transfer completed by a PBX, or call pickup) is answered at once and takes
/// that call's place — the old party gets BYE, the application hears `transfer` `replaced`,
/// and the bot's speech now reaches the new party (transcribed from its RTP). A `Replaces`
/// that names no call gets 481 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_with_replaces_takes_over_the_call() {
    let server = Server::start();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let sip = server.sip_addr.clone();
    // One signalling socket and one RTP socket per party: A (replaced) and B (replacing).
    let party = || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (s, r)
    };
    let (a, a_rtp) = party();
    let (b, b_rtp) = party();
    let invite = |sock: &std::net::UdpSocket,
                  rtp: &std::net::UdpSocket,
                  call_id: &str,
                  tag: &str,
                  extra: &str| {
        let me = sock.local_addr().unwrap();
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
            rtp.local_addr().unwrap().port()
        );
        let m = format!(
            "INVITE sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bK-{call_id}-1\r\n\
             From: <sip:{tag}@127.0.0.1>;tag={tag}\r\nTo: <sip:1000@{sip}>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:{tag}@{me}>\r\nMax-Forwards: 70\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        sock.send_to(m.as_bytes(), &sip).unwrap();
    };
    let in_dialog = |sock: &std::net::UdpSocket,
                     method: &str,
                     call_id: &str,
                     tag: &str,
                     to_tag: &str,
                     cseq: u32| {
        let me = sock.local_addr().unwrap();
        let m = format!(
            "{method} sip:1000@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bK-{call_id}-{cseq}{method}\r\n\
             From: <sip:{tag}@127.0.0.1>;tag={tag}\r\nTo: <sip:1000@{sip}>;tag={to_tag}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        sock.send_to(m.as_bytes(), &sip).unwrap();
    };
    // Reads `sock` for up to `wait`, answering requests with 200, until `done`.
    let pump = |sock: &std::net::UdpSocket,
                tag: &str,
                wait: Duration,
                done: &dyn Fn(&[String]) -> bool| {
        let mut buf = vec![0u8; 65_536];
        let mut got: Vec<String> = Vec::new();
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline && !done(&got) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                if !m.starts_with("SIP/2.0 ") {
                    sock.send_to(far_answer(&m, "200 OK", tag, "", "").as_bytes(), from)
                        .unwrap();
                }
                got.push(m);
            }
        }
        got
    };
    let ok_of = |got: &[String]| {
        got.iter()
            .find(|m| {
                m.starts_with("SIP/2.0 200 ")
                    && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
            })
            .cloned()
    };
    let to_tag = |m: &str| {
        header(m, "To")
            .and_then(|t| t.split("tag=").nth(1))
            .map(|t| t.split(';').next().unwrap().trim().to_string())
            .expect("a To tag")
    };
    let is_ok = |g: &[String]| {
        g.iter().any(|m| {
            m.starts_with("SIP/2.0 200 ")
                && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
        })
    };

    invite(&a, &a_rtp, "rep-a@127.0.0.1", "aaa", "");
    client.wait_event("incoming", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "accept", "option": {"codec": "pcmu"}}))
        .await;
    let got = tokio::task::block_in_place(|| pump(&a, "aaa", Duration::from_secs(5), &is_ok));
    let a_tag = to_tag(&ok_of(&got).expect("A's 200"));
    in_dialog(&a, "ACK", "rep-a@127.0.0.1", "aaa", &a_tag, 1);
    client.wait_event("answer", Duration::from_secs(5)).await;

    // A Replaces naming no call: 481, and A's call goes on.
    invite(
        &b,
        &b_rtp,
        "rep-x@127.0.0.1",
        "bbb",
        "Replaces: nothing@127.0.0.1;to-tag=1;from-tag=2\r\n",
    );
    let got = tokio::task::block_in_place(|| {
        pump(&b, "bbb", Duration::from_secs(5), &|g| {
            g.iter().any(|m| m.starts_with("SIP/2.0 481 "))
        })
    });
    assert!(got.iter().any(|m| m.starts_with("SIP/2.0 481 ")), "{got:?}");

    // B replaces A (tags as RFC 3891 §6.1 names them for the recipient's dialog).
    let replaces = format!("Replaces: rep-a@127.0.0.1;to-tag={a_tag};from-tag=aaa\r\n");
    invite(&b, &b_rtp, "rep-b@127.0.0.1", "bbb", &replaces);
    let got = tokio::task::block_in_place(|| pump(&b, "bbb", Duration::from_secs(5), &is_ok));
    let b_tag =
        to_tag(&ok_of(&got).unwrap_or_else(|| panic!("B's INVITE was not answered: {got:?}")));
    in_dialog(&b, "ACK", "rep-b@127.0.0.1", "bbb", &b_tag, 1);
    let got = tokio::task::block_in_place(|| {
        pump(&a, "aaa", Duration::from_secs(5), &|g| {
            g.iter().any(|m| m.starts_with("BYE "))
        })
    });
    assert!(
        got.iter().any(|m| m.starts_with("BYE ")),
        "A got no BYE: {got:?}"
    );
    let t = client
        .wait_for("transfer replaced", Duration::from_secs(5), |e| {
            e["event"] == "transfer" && e["state"] == "replaced"
        })
        .await;
    assert_eq!(t["target"], "bbb", "{t}");

    // The bot now talks to B.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let heard =
        tokio::task::spawn_blocking(move || collect_pcmu(b_rtp, s, Duration::from_secs(40)));
    let sentence = "Thanks for waiting, your colleague has joined the call.";
    client
        .send(json!({"command": "tts", "text": sentence}))
        .await;
    client.wait_event("trackEnd", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (pcm, packets) = heard.await.unwrap();
    assert!(
        client.events_named("hangup").is_empty(),
        "A's end ended the call: {:?}",
        client.events()
    );
    in_dialog(&b, "BYE", "rep-b@127.0.0.1", "bbb", &b_tag, 2);
    let h = client.wait_event("hangup", Duration::from_secs(10)).await;
    assert_eq!(h["reason"], "bye", "{h}");
    assert!(packets > 100, "B got {packets} RTP packets");
    let hyp = transcribe_samples(&server, &pcm, voxgate_media::SampleRate::HZ_8000, None).await;
    let w = wer(sentence, &hyp);
    eprintln!(
        "after Replaces: {packets} packets to B, WER {:.1} % ({hyp})",
        w * 100.0
    );
    assert!(w <= 0.25, "B did not hear the bot: {hyp:?}");
}

/// A test PKI for 127.0.0.1 in `dir`: a CA (`<name>-ca.pem`) and a P-256 server certificate it
/// signed (`<name>.pem`, subjectAltName IP:127.0.0.1, not a CA) with its key (`<name>-key.pem`),
/// made with openssl (Debian package `openssl`). Returns (CA, certificate, key).
fn test_pki(
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let f = |suffix: &str| dir.join(format!("{name}{suffix}"));
    let (ca, ca_key, cert, key, csr, ext) = (
        f("-ca.pem"),
        f("-ca-key.pem"),
        f(".pem"),
        f("-key.pem"),
        f(".csr"),
        f(".ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let steps: Vec<Vec<std::ffi::OsString>> = vec![
        ["req", "-x509"]
            .iter()
            .chain(ec.iter())
            .map(Into::into)
            .chain(
                ["-days", "1", "-subj", "/CN=voxgate test CA", "-keyout"]
                    .iter()
                    .map(Into::into),
            )
            .chain([
                ca_key.clone().into_os_string(),
                "-out".into(),
                ca.clone().into_os_string(),
            ])
            .collect(),
        ["req"]
            .iter()
            .chain(ec.iter())
            .map(Into::into)
            .chain(["-subj", "/CN=127.0.0.1", "-keyout"].iter().map(Into::into))
            .chain([
                key.clone().into_os_string(),
                "-out".into(),
                csr.clone().into_os_string(),
            ])
            .collect(),
        ["x509", "-req", "-days", "1", "-in"]
            .iter()
            .map(Into::into)
            .chain([
                csr.into_os_string(),
                "-CA".into(),
                ca.clone().into_os_string(),
                "-CAkey".into(),
                ca_key.into_os_string(),
            ])
            .chain([
                "-CAcreateserial".into(),
                "-extfile".into(),
                ext.into_os_string(),
                "-out".into(),
                cert.clone().into_os_string(),
            ])
            .collect(),
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package openssl) makes the test certificates");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (ca, cert, key)
}

/// Issue 10 point 5, dialling out over TLS (RFC 3261 §26.2): voxgate A calls through a trunk
/// with `transport = "tls"` whose certificate chains to `sip.tls_ca` — voxgate B listening on
/// TLS answers, the trunk's OPTIONS keep-alive over TLS reports it up — and refuses a trunk whose
/// certificate it does not trust (the call fails, B never hears of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voxgate_dials_a_trunk_over_tls_and_refuses_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path(), "b");
    let (other, _, _) = test_pki(dir.path(), "other");
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tls = format!("127.0.0.1:{tls_port}");
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let b = Server::start_with(&[
        ("VOXGATE_ASR__ENGINE", "none"),
        ("VOXGATE_SIP__TLS_LISTEN", &tls),
        ("VOXGATE_SIP__TLS_CERT", &c),
        ("VOXGATE_SIP__TLS_KEY", &k),
    ]);
    let mut on_b = Client::connect(&b.sip_ws_url("?dump=false")).await;
    call_sessions(&b, 1).await;
    let config = |ca: &Path| {
        format!(
            "[sip]\ntls_ca = \"{}\"\n[[sip.trunks]]\nname = \"b\"\nhost = \"{tls}\"\ntransport = \"tls\"\nkeepalive_secs = 1\n",
            ca.display()
        )
    };
    let a = Server::start_with_config(&[("VOXGATE_ASR__ENGINE", "none")], &config(&ca));
    let mut on_a = Client::connect(&a.sip_ws_url("?dump=false")).await;
    on_a.send(json!({"command": "invite", "option": {"callee": "1000", "caller": "5550100"}}))
        .await;
    let inc = on_b.wait_event("incoming", Duration::from_secs(10)).await;
    assert_eq!(inc["caller"], "5550100", "{inc}");
    on_b.send(json!({"command": "accept", "option": {}})).await;
    let ans = on_a.wait_event("answer", Duration::from_secs(10)).await;
    assert!(ans["sdp"].as_str().unwrap().contains("m=audio"), "{ans}");
    let mut health = serde_json::Value::Null;
    for _ in 0..50 {
        health = reqwest::get(a.http("/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["sip"]["trunks"]["b"]["options"] == "up" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health["sip"]["trunks"]["b"]["options"], "up", "{health}");
    on_a.send(json!({"command": "hangup"})).await;
    let h = on_b.wait_event("hangup", Duration::from_secs(10)).await;
    assert_eq!(h["reason"], "bye", "{h}");

    // A trunk whose certificate does not chain to sip.tls_ca: the call fails on our side.
    let on_b = Client::connect(&b.sip_ws_url("?dump=false")).await;
    let untrusting = Server::start_with_config(&[("VOXGATE_ASR__ENGINE", "none")], &config(&other));
    let mut on_u = Client::connect(&untrusting.sip_ws_url("?dump=false")).await;
    on_u.send(json!({"command": "invite", "option": {"callee": "1000"}}))
        .await;
    let h = on_u.wait_event("hangup", Duration::from_secs(40)).await;
    assert_ne!(h["reason"], "bye", "{h}");
    assert!(
        on_b.try_wait_event("incoming", Duration::from_millis(500))
            .await
            .is_none(),
        "B heard of a call over an untrusted TLS connection"
    );
}

/// Issue 10's SIPp scenarios (tests/sipp/): refusals out of a dialog (405 + Allow, 501, 420 +
/// Unsupported, 415 + Accept, 406, 416, 505, 400; OPTIONS capabilities), requests in a dialog
/// (multi-stream offer, X- headers both ways, 405 in the dialog, UPDATE and a multipart
/// re-INVITE with SDP, hang-up), PRACK as UAS and as UAC, and a callee's Contact-less 200. Each scenario
/// checks the headers and bodies it receives (`check_it`), so SIPp's exit code is the verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_scenarios_of_issue_10() {
    sipp_available();
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let dir = tempfile::tempdir().unwrap();

    // Refusals: no call state may come of them.
    let scen = scenario(dir.path(), "uac_refusals.xml", &[]);
    let (code, log) = sipp_uac(&server, &scen, "1000", dir.path(), &[]).await;
    assert_eq!(code, 0, "uac_refusals.xml:\n{log}");
    let calls: serde_json::Value = reqwest::get(server.http("/call/lists"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(0), "{calls}");

    // A dialog: X- header in, multi-stream answer, in-dialog requests, X- header on our BYE.
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let scen = scenario(dir.path(), "uac_dialog.xml", &[]);
    let sipp = tokio::spawn(sipp_uac(&server, &scen, "1000", dir.path(), &[]));
    let inc = client.wait_event("incoming", Duration::from_secs(10)).await;
    assert_eq!(inc["headers"]["X-Account-Id"], "42", "{inc}");
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    client.wait_event("answer", Duration::from_secs(5)).await;
    // The scenario's SUBSCRIBE, UPDATE and re-INVITE take well under a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    client
        .send(json!({"command": "hangup", "headers": {"X-Reason": "done-by-test"}}))
        .await;
    client.wait_event("hangup", Duration::from_secs(5)).await;
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "uac_dialog.xml:\n{log}");

    // PRACK as UAS: the application accepts at once; the 200 waits for the PRACK.
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let scen = scenario(dir.path(), "uac_prack.xml", &[]);
    let sipp = tokio::spawn(sipp_uac(&server, &scen, "1000", dir.path(), &[]));
    client.wait_event("incoming", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    let h = client.wait_event("hangup", Duration::from_secs(15)).await;
    assert_eq!(h["reason"], "bye", "{h}");
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "uac_prack.xml:\n{log}");

    // PRACK as UAC: a reliable 180 is PRACKed with its RSeq.
    let scen = scenario(dir.path(), "uas_prack.xml", &[]);
    let (port, sipp) = spawn_sipp_uas(
        vec!["-sf".into(), scen.display().to_string()],
        dir.path().to_path_buf(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client
        .send(json!({"command": "invite", "option": {"callee": format!("sip:prack@127.0.0.1:{port}")}}))
        .await;
    client.wait_event("answer", Duration::from_secs(10)).await;
    client.send(json!({"command": "hangup"})).await;
    client.wait_event("hangup", Duration::from_secs(10)).await;
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "uas_prack.xml:\n{log}");

    // A callee's 200 without Contact: ACKed, then BYE; the application hears why.
    let scen = scenario(dir.path(), "uas_no_contact.xml", &[]);
    let (port, sipp) = spawn_sipp_uas(
        vec!["-sf".into(), scen.display().to_string()],
        dir.path().to_path_buf(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    client
        .send(json!({"command": "invite", "option": {"callee": format!("sip:nocontact@127.0.0.1:{port}")}}))
        .await;
    let e = client
        .wait_for("the Contact error", Duration::from_secs(10), |e| {
            e["event"] == "error" && e["code"] == 502
        })
        .await;
    assert!(e["error"].as_str().unwrap().contains("Contact"), "{e}");
    client.wait_event("hangup", Duration::from_secs(10)).await;
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "uas_no_contact.xml:\n{log}");
}

/// Store accounts alone turn the registrar on: without `[[sip.users]]` REGISTER gets 405 until
/// `voxgate sip-users add` stores one, then 401 with a challenge (issue 10 point 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sip_user_added_to_the_store_turns_registration_on() {
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let sip = server.sip_addr.clone();
    let register = |cseq: u32| {
        format!(
            "REGISTER sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5998;rport;branch=z9hG4bK-st-{cseq}\r\n\
             From: <sip:dave@{sip}>;tag=d{cseq}\r\nTo: <sip:dave@{sip}>\r\nCall-ID: store-reg-{cseq}@127.0.0.1\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:dave@127.0.0.1:5998>\r\nMax-Forwards: 70\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let ask = |m: String| {
        let sip = sip.clone();
        tokio::task::spawn_blocking(move || udp_final(&sip, m.as_bytes(), Duration::from_secs(3)))
    };
    let r = ask(register(1)).await.unwrap().expect("an answer");
    assert!(r.starts_with("SIP/2.0 405 "), "{r}");
    server.cli(&[
        "sip-users",
        "add",
        "dave",
        "--password",
        "dave-pass-1",
        "--user",
        "acme",
    ]);
    // "No accounts" is believed for up to 2 s (registrar::STORE_RECHECK).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = ask(register(2)).await.unwrap().expect("an answer");
    assert!(r.starts_with("SIP/2.0 401 "), "{r}");
    assert!(header(&r, "WWW-Authenticate").is_some(), "{r}");
}

/// Issue 10's REFER received with SIPp as the transferor (tests/sipp/uac_refer_received.xml):
/// SIPp calls, REFERs voxgate to a second SIPp (echo callee); the application accepts; SIPp checks
/// the NOTIFYs (100, 180, 200 with `Subscription-State: terminated`) and gets voxgate's BYE; the
/// call goes on with the target until the application hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_transferor_refers_voxgate_to_a_target() {
    sipp_available();
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let dir = tempfile::tempdir().unwrap();
    let echo = scenario(dir.path(), "uas_echo.xml", &[]);
    let (target_port, target) = spawn_sipp_uas(
        vec!["-sf".into(), echo.display().to_string(), "-rtp_echo".into()],
        dir.path().to_path_buf(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target_uri = format!("sip:echo@127.0.0.1:{target_port}");
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let scen = scenario(
        dir.path(),
        "uac_refer_received.xml",
        &[("TARGET", &target_uri)],
    );
    let transferor = tokio::spawn(sipp_uac(&server, &scen, "1000", dir.path(), &[]));
    client.wait_event("incoming", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    let t = client
        .wait_for("transfer requested", Duration::from_secs(10), |e| {
            e["event"] == "transfer" && e["state"] == "requested"
        })
        .await;
    assert_eq!(t["target"], target_uri.as_str(), "{t}");
    client.send(json!({"command": "acceptTransfer"})).await;
    client
        .wait_for("transfer completed", Duration::from_secs(15), |e| {
            e["event"] == "transfer" && e["state"] == "completed"
        })
        .await;
    let (code, log) = transferor.await.unwrap();
    assert_eq!(code, 0, "uac_refer_received.xml:\n{log}");
    assert!(
        client.events_named("hangup").is_empty(),
        "{:?}",
        client.events()
    );
    client.send(json!({"command": "hangup"})).await;
    client.wait_event("hangup", Duration::from_secs(10)).await;
    let (code, log) = target.await.unwrap();
    assert_eq!(
        code, 0,
        "the target (uas_echo.xml) did not get our BYE:\n{log}"
    );
}

/// Issue 10's session timers with SIPp (tests/sipp/uac_session_timer.xml): 422 with Min-SE for a
/// 60 s session, a 90 s session granted to a refreshing caller, an UPDATE refresh answered, and
/// voxgate's BYE 60 s after refreshes stop (the client hears `error` 408 and `hangup`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_session_timer_refresh_and_expiry() {
    sipp_available();
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    call_sessions(&server, 1).await;
    let scen = scenario(dir.path(), "uac_session_timer.xml", &[]);
    let sipp = tokio::spawn(sipp_uac(
        &server,
        &scen,
        "1000",
        dir.path(),
        &["-timeout", "100s"],
    ));
    client.wait_event("incoming", Duration::from_secs(10)).await;
    client
        .send(json!({"command": "accept", "option": {}}))
        .await;
    let e = client
        .wait_for("the session-expired error", Duration::from_secs(90), |e| {
            e["event"] == "error" && e["code"] == 408
        })
        .await;
    assert!(
        e["error"].as_str().unwrap().contains("session expired"),
        "{e}"
    );
    client.wait_event("hangup", Duration::from_secs(10)).await;
    let (code, log) = sipp.await.unwrap();
    assert_eq!(code, 0, "uac_session_timer.xml:\n{log}");
}
