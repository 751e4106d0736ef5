//! Seed 003 load benchmark (issue 8): N concurrent calls started by `POST /pbx/call` and driven
//! over Socket.IO (websocket transport), audio both ways. SIPp answers every call as the far end
//! and echoes its RTP (`-rtp_echo`), so each room both sends µ-law audio (20 ms Buffers, LibriVox
//! speech) and receives the far end's audio (320-byte 8 kHz Buffers). Once all calls are up and
//! settled, the server's CPU (% of one core per call) and RSS (MB per call above idle) are
//! measured over `--window` seconds; the Buffers each room received per second are printed too.
//!
//! The client is a minimal Engine.IO v4 / Socket.IO v5 websocket client (the wire format the
//! official clients speak, tested against them in crates/voxgate/tests/pbx.rs): one process can
//! then drive hundreds of rooms without the client's own cost dominating the machine.
//!
//! `cargo build --release -p voxgate -p voxgate-bench && bench/run-pbx-load.sh`

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use voxgate_bench::{measure, print_usage, proc_rss_mb, speech_8k, start_server};
use voxgate_media::codec::{AudioEncoder, Codec};
use voxgate_media::{AudioFrame, SampleRate};

#[derive(Parser)]
struct Args {
    /// Concurrent calls.
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Calls started per second.
    #[arg(long, default_value_t = 25)]
    rate: usize,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 20)]
    window: u64,
    #[arg(long, default_value = "target/release/voxgate")]
    server: String,
    #[arg(long, default_value = "models")]
    models_dir: String,
    #[arg(long, default_value_t = 18381)]
    port: u16,
    #[arg(long, default_value_t = 15360)]
    sip_port: u16,
    #[arg(long, default_value_t = 16360)]
    sipp_port: u16,
}

#[derive(Default)]
struct Shared {
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Buffers received / sent during the measured window (counting on when `measuring` is 1).
    measuring: AtomicUsize,
    received: AtomicU64,
    sent: AtomicU64,
}

/// SIPp as the far end: answers PCMU and waits for our BYE (its RTP is echoed by `-rtp_echo`).
const UAS: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="voxgate pbx load far end">
  <recv request="INVITE"/>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]V[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 1 1 IN IP4 [local_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=ptime:20
    ]]>
  </send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
</scenario>
"#;

async fn session(
    a: Arc<Args>,
    key: Arc<String>,
    frames: Arc<Vec<Vec<u8>>>,
    shared: Arc<Shared>,
    stop: tokio::time::Instant,
) -> anyhow::Result<()> {
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        a.port
    );
    let (ws, _) = tokio_tungstenite::connect_async(&url).await?;
    let (mut tx, mut rx) = ws.split();
    // Engine.IO open, then the Socket.IO CONNECT with auth.
    let _open = rx
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no open"))??;
    tx.send(Message::Text(format!("40{{\"token\":\"{key}\"}}").into()))
        .await?;
    loop {
        match rx.next().await.ok_or_else(|| anyhow::anyhow!("closed"))?? {
            Message::Text(t) if t.starts_with("40") => break,
            Message::Text(t) if t.starts_with("44") => anyhow::bail!("refused: {t}"),
            _ => {}
        }
    }
    let resp: serde_json::Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/pbx/call", a.port))
        .bearer_auth(key.as_str())
        .json(&serde_json::json!({"phoneNumber": "+15550100"}))
        .send()
        .await?
        .json()
        .await?;
    let sid = resp["data"]["sessionId"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("/pbx/call: {resp}"))?
        .to_string();
    tx.send(Message::Text(
        format!("42[\"joinRoom\",{{\"sessionId\":\"{sid}\"}}]").into(),
    ))
    .await?;
    let mut up = false;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let header = format!(
        "451-[\"audio\",{{\"sessionId\":\"{sid}\",\"audioData\":{{\"_placeholder\":true,\"num\":0}},\"audioFormat\":\"ulaw\"}}]"
    );
    let mut i = 0usize;
    loop {
        tokio::select! {
            m = rx.next() => {
                let Some(m) = m else { break };
                match m? {
                    Message::Text(t) if t.as_str() == "2" => tx.send(Message::Text("3".into())).await?,
                    Message::Text(t) if !up && t.contains("\"Connected\"") => {
                        up = true;
                        shared.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Message::Text(t) if t.contains("\"hangup\"") && t.starts_with("42") => break,
                    Message::Binary(_) if shared.measuring.load(Ordering::Relaxed) == 1 => {
                        shared.received.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            _ = tick.tick(), if up => {
                tx.send(Message::Text(header.clone().into())).await?;
                tx.send(Message::Binary(frames[i % frames.len()].clone().into())).await?;
                i += 1;
                if shared.measuring.load(Ordering::Relaxed) == 1 {
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = tokio::time::sleep_until(stop) => {
                tx.send(Message::Text(format!("42[\"hangup\",{{\"sessionId\":\"{sid}\"}}]").into())).await?;
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(Ok(m)) = rx.next().await {
                        if let Message::Text(t) = m {
                            if t.contains("\"hangup\"") { break; }
                        }
                    }
                }).await;
                break;
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut a = Args::parse();
    // The server runs in its own directory: absolute paths.
    a.server = std::fs::canonicalize(&a.server)?.display().to_string();
    a.models_dir = std::fs::canonicalize(&a.models_dir)?.display().to_string();
    let a = Arc::new(a);
    let dir = std::env::temp_dir().join(format!("voxgate-pbx-load-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data"))?;
    // The far end.
    std::fs::write(dir.join("uas.xml"), UAS)?;
    let mut sipp = std::process::Command::new("sipp")
        .args(["-sf", "uas.xml", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
        .args(["-p", &a.sipp_port.to_string(), "-rtp_echo", "-nostdin"])
        .args(["-m", &a.calls.to_string(), "-max_socket", "4096"])
        .args(["-timeout", "900s"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The server: one user with room for the run.
    let n = a.calls * 4;
    std::fs::write(
        dir.join("voxgate.toml"),
        format!(
            "[[sip.trunks]]\nname = \"far\"\nhost = \"127.0.0.1:{}\"\nkeepalive_secs = 0\n\
             [limits]\ncalls = {n}\n[limits.users.bench]\noriginations_per_minute = {n}\n\
             calls_per_user = {n}\nstreams_per_user = {n}\n",
            a.sipp_port
        ),
    )?;
    let data = dir.join("data");
    let out = std::process::Command::new(&a.server)
        .args(["keys", "create", "--user", "bench", "--data-dir"])
        .arg(&data)
        .current_dir(&dir)
        .output()?;
    anyhow::ensure!(out.status.success(), "keys create failed");
    let key = Arc::new(String::from_utf8(out.stdout)?.trim().to_string());
    let mut cmd = std::process::Command::new(&a.server);
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{}", a.port),
        "--data-dir",
    ])
    .arg(&data)
    .args(["--models-dir", &a.models_dir])
    .env("RUST_LOG", "warn")
    .env("VOXGATE_ASR__ENGINE", "none")
    .env("VOXGATE_SIP__LISTEN", format!("127.0.0.1:{}", a.sip_port))
    .current_dir(&dir);
    let mut child = start_server(cmd)?;
    let pid = child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = proc_rss_mb(pid);

    // 20 ms µ-law frames of speech.
    let pcm = speech_8k()?;
    let mut enc = AudioEncoder::new(Codec::Pcmu);
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        pcm.chunks_exact(160)
            .map(|c| enc.encode(&AudioFrame::mono(SampleRate::HZ_8000, c.to_vec())))
            .collect(),
    );
    let shared = Arc::new(Shared::default());
    let ramp = Duration::from_secs_f64(a.calls as f64 / a.rate.max(1) as f64);
    let stop = tokio::time::Instant::now() + ramp + Duration::from_secs(8 + a.window);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.calls {
        let (a2, k, f, s) = (a.clone(), key.clone(), frames.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = session(a2, k, f, s.clone(), stop).await {
                s.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("session: {e:#}");
            }
        }));
        tokio::time::sleep(Duration::from_secs_f64(1.0 / a.rate.max(1) as f64)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < a.calls
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let up = shared.connected.load(Ordering::Relaxed);
    println!(
        "rooms up         {up} of {} in {:.1} s ({} failed)",
        a.calls,
        started.elapsed().as_secs_f64(),
        shared.failed.load(Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    shared.measuring.store(1, Ordering::Relaxed);
    let w = measure(
        pid,
        tokio::time::Instant::now() + Duration::from_secs(a.window),
    )
    .await;
    shared.measuring.store(0, Ordering::Relaxed);
    let per_room = |n: u64| n as f64 / w.wall_secs / up.max(1) as f64;
    println!(
        "audio per room   {:.1} Buffers/s received (320 B, 8 kHz), {:.1} sent (µ-law 20 ms)",
        per_room(shared.received.load(Ordering::Relaxed)),
        per_room(shared.sent.load(Ordering::Relaxed))
    );
    print_usage("call", up, &w, idle_rss);
    for t in tasks {
        let _ = t.await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = sipp.kill();
    let _ = sipp.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
