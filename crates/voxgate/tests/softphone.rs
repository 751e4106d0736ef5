//! End-to-end calls between voxgate and real softphones (baresip, `baresip-core`): G.722 and Opus,
//! both directions of call set-up, audio checked both ways by transcription.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use voxgate_media::resample::resample_clip;
use voxgate_media::SampleRate;

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A headless baresip: plays `source` (a WAV) as its microphone and records what it hears with
/// the sndfile module. Killed on drop.
struct Baresip {
    child: Child,
    dir: tempfile::TempDir,
    sip_port: u16,
}

impl Baresip {
    /// `codec`: baresip's name for the one codec it may use, e.g. `G722/16000/1`, `opus/48000/2`.
    /// `codec`: baresip's name for the one codec it may use, e.g. `G722/16000/1`, `opus/48000/2`.
    /// `mediaenc`: baresip's media encryption for the account (`srtp-mand`: RTP/SAVP with SDES
    /// keys; `srtp`: best-effort a=crypto on RTP/AVP).
    fn start_enc(
        source: &Path,
        codec: &str,
        auto_answer: bool,
        dial: Option<&str>,
        mediaenc: Option<&str>,
    ) -> Baresip {
        assert!(
            Path::new("/usr/bin/baresip").exists(),
            "baresip is missing: run `make test` (installs baresip-core)"
        );
        let dir = tempfile::tempdir().unwrap();
        let sip_port = free_port();
        let cons_port = free_port();
        let snd = dir.path().join("snd");
        std::fs::create_dir_all(&snd).unwrap();
        let config = format!(
            "sip_listen\t127.0.0.1:{sip_port}\nnet_interface\t127.0.0.1\naudio_source\taufile,{}\naudio_player\taubridge,nil\n\
             module_path\t/usr/lib/baresip/modules\nmodule\tg711.so\nmodule\tg722.so\nmodule\topus.so\nmodule\taufile.so\n\
             module\taubridge.so\nmodule\tsndfile.so\nmodule\tcons.so\nmodule\tsrtp.so\nmodule_app\taccount.so\nmodule_app\tmenu.so\n\
             snd_path\t{}\ncons_listen\t127.0.0.1:{cons_port}\nrtp_ports\t{}-{}\n",
            source.display(),
            snd.display(),
            40000 + (sip_port % 1000) * 10,
            40000 + (sip_port % 1000) * 10 + 9,
        );
        std::fs::write(dir.path().join("config"), config).unwrap();
        let answer = if auto_answer { ";answermode=auto" } else { "" };
        let enc = mediaenc
            .map(|e| format!(";mediaenc={e}"))
            .unwrap_or_default();
        std::fs::write(
            dir.path().join("accounts"),
            format!("<sip:bob@127.0.0.1:{sip_port}>;regint=0{answer}{enc};audio_codecs={codec}\n"),
        )
        .unwrap();
        let mut cmd = Command::new("baresip");
        cmd.arg("-f").arg(dir.path()).args(["-t", "90"]);
        if let Some(uri) = dial {
            cmd.args(["-e", &format!("/dial {uri}")]);
        }
        let log = std::fs::File::create(dir.path().join("baresip.log")).unwrap();
        let child = cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn baresip");
        Baresip {
            child,
            dir,
            sip_port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    /// The WAV sndfile wrote of the audio baresip received (decoded).
    fn received_wav(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.dir.path().join("snd"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains("-dec"))
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// LibriVox clips at `rate` as one WAV (`channels` identical channels) with 1 s of silence before
/// and 2 s after; the reference text.
fn librivox_wav(path: &Path, rate: SampleRate, channels: u16, clips: usize) -> String {
    let mut pcm: Vec<i16> = vec![0; rate.hz() as usize];
    let mut reference = String::new();
    for (wav, text) in librivox().into_iter().take(clips) {
        let (s, r) = read_wav(&wav);
        pcm.extend(resample_clip(&s, r, rate).unwrap());
        pcm.extend(std::iter::repeat_n(0i16, rate.hz() as usize / 2));
        reference.push_str(&text);
        reference.push(' ');
    }
    pcm.extend(std::iter::repeat_n(0i16, rate.hz() as usize * 2));
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate.hz(),
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in pcm {
        for _ in 0..channels {
            w.write_sample(s).unwrap();
        }
    }
    w.finalize().unwrap();
    reference
}

fn finals(c: &Client) -> String {
    c.events_named("asrFinal")
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

const SENTENCE: &str = "Please hold while I check the balance of your account.";

/// One call with a softphone: voxgate hears LibriVox from it and says SENTENCE to it.
async fn softphone_call(
    codec: &str,
    rate: SampleRate,
    channels: u16,
    voxgate_dials: bool,
    expect_sdp: &str,
) {
    softphone_call_enc(codec, rate, channels, voxgate_dials, expect_sdp, None, &[]).await
}

/// [`softphone_call`] with baresip's `mediaenc` and the server's environment.
async fn softphone_call_enc(
    codec: &str,
    rate: SampleRate,
    channels: u16,
    voxgate_dials: bool,
    expect_sdp: &str,
    mediaenc: Option<&str>,
    env: &[(&str, &str)],
) {
    let server = Server::start_with(env);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.wav");
    let reference = librivox_wav(&source, rate, channels, 2);
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    let phone = if voxgate_dials {
        let p = Baresip::start_enc(&source, codec, true, None, mediaenc);
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.send(json!({"command": "invite", "option": {"callee": format!("sip:bob@127.0.0.1:{}", p.sip_port), "bargeIn": false}})).await;
        p
    } else {
        let uri = format!("sip:1000@{}", server.sip_addr);
        let p = Baresip::start_enc(&source, codec, false, Some(&uri), mediaenc);
        client.wait_event("incoming", Duration::from_secs(20)).await;
        client
            .send(json!({"command": "accept", "option": {"bargeIn": false}}))
            .await;
        p
    };
    let answer = client
        .try_wait_event("answer", Duration::from_secs(15))
        .await;
    let answer =
        answer.unwrap_or_else(|| panic!("no answer: {:#?}\n{}", client.events(), phone.log()));
    assert!(
        answer["sdp"].as_str().unwrap().contains(expect_sdp),
        "{answer}\n{}",
        phone.log()
    );
    client
        .send(json!({"command": "tts", "text": SENTENCE}))
        .await;
    // baresip hangs up when its source file ends.
    let hangup = client
        .try_wait_event("hangup", Duration::from_secs(80))
        .await;
    let hangup =
        hangup.unwrap_or_else(|| panic!("no hangup: {:#?}\n{}", client.events(), phone.log()));
    assert_eq!(hangup["reason"], "bye", "{hangup}\n{}", phone.log());
    let heard = finals(&client);
    let w = wer(&reference, &heard);
    eprintln!(
        "{codec}: voxgate heard baresip with WER {:.1} %: {heard}",
        w * 100.0
    );
    assert!(w <= 0.15, "voxgate heard {heard:?}, expected {reference:?}");
    let rtp = client
        .events_named("metrics")
        .into_iter()
        .find(|e| e["key"] == "rtp")
        .expect("rtp metrics");
    eprintln!("{rtp}");
    assert_eq!(
        rtp["data"]["srtp"],
        mediaenc.is_some(),
        "SRTP in the call's figures: {rtp}"
    );
    // baresip sends one plain 16-octet RTCP packet as its media starts, before its SRTP is
    // keyed: voxgate drops it as unauthenticated (counted). Every RTP packet must pass.
    assert!(rtp["data"]["srtpFailures"].as_u64().unwrap() <= 1, "{rtp}");
    let wav = phone
        .received_wav()
        .unwrap_or_else(|| panic!("baresip recorded nothing\n{}", phone.log()));
    let said = transcribe(&server, &wav).await;
    let w = wer(SENTENCE, &said);
    eprintln!(
        "{codec}: baresip heard voxgate's TTS with WER {:.1} %: {said}",
        w * 100.0
    );
    assert!(w <= 0.25, "baresip heard {said:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_calls_voxgate_with_g722() {
    softphone_call("G722/16000/1", SampleRate::HZ_16000, 1, false, "G722/8000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voxgate_calls_baresip_with_opus() {
    softphone_call(
        "opus/48000/2",
        SampleRate::HZ_48000,
        2,
        true,
        "opus/48000/2",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voxgate_calls_baresip_with_g722() {
    softphone_call("G722/16000/1", SampleRate::HZ_16000, 1, true, "G722/8000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_calls_voxgate_with_opus() {
    softphone_call(
        "opus/48000/2",
        SampleRate::HZ_48000,
        2,
        false,
        "opus/48000/2",
    )
    .await;
}

/// PJSUA2 calls voxgate: its RFC 4733 digits reach `dtmf` events, and the `dtmf` command's RFC 4733
/// events are reported by PJSUA2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pjsua2_dtmf_both_ways() {
    let python = repo_root().join(".venv-peers/bin/python");
    assert!(
        python.exists(),
        "PJSUA2 is missing: run `make test` (scripts/install-deps.sh test creates .venv-peers)"
    );
    let server = Server::start_with(&[("VOXGATE_ASR__ENGINE", "none")]);
    let mut client = Client::connect(&server.sip_ws_url("?dump=false")).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pjsua_dtmf.py");
    let (sip_port, rtp_port) = (free_port(), free_port());
    let target = format!("sip:1000@{}", server.sip_addr);
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&script).args([
        sip_port.to_string(),
        rtp_port.to_string(),
        target,
        "19#".into(),
        "3".into(),
        "40".into(),
    ]);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let pjsua = cmd.spawn().expect("run PJSUA2");
    client.wait_event("incoming", Duration::from_secs(20)).await;
    client
        .send(json!({"command": "accept", "option": {"asr": {"enabled": false}}}))
        .await;
    client.wait_event("answer", Duration::from_secs(10)).await;
    // PJSUA2 dials its digits 1.5 s after the call is up.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while client.events_named("dtmf").len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let heard: String = client
        .events_named("dtmf")
        .iter()
        .map(|e| e["digit"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(heard, "19#");
    client
        .send(json!({"command": "dtmf", "digits": "42*"}))
        .await;
    let out = tokio::time::timeout(Duration::from_secs(40), pjsua.wait_with_output())
        .await
        .expect("PJSUA2 finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("RECEIVED 42*"),
        "PJSUA2 reported:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let hangup = client.wait_event("hangup", Duration::from_secs(10)).await;
    assert_eq!(
        (hangup["reason"].as_str(), hangup["initiator"].as_str()),
        (Some("bye"), Some("caller"))
    );
}

/// Issue 10 point 5: SRTP with SDES keys (RFC 4568) against baresip's `srtp` module. baresip
/// offers `RTP/SAVP` with `AES_CM_128_HMAC_SHA1_80` (`mediaenc=srtp-mand`); voxgate answers with
/// its own key and both directions transcribe back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_calls_voxgate_with_srtp() {
    softphone_call_enc(
        "PCMU/8000/1",
        SampleRate::HZ_8000,
        1,
        false,
        "RTP/SAVP",
        Some("srtp-mand"),
        &[],
    )
    .await;
}

/// voxgate offers `RTP/SAVP` (`sip.srtp = "required"`) and baresip answers with its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voxgate_calls_baresip_with_srtp() {
    softphone_call_enc(
        "G722/16000/1",
        SampleRate::HZ_16000,
        1,
        true,
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
        Some("srtp-mand"),
        &[("VOXGATE_SIP__SRTP", "required")],
    )
    .await;
}
