//! SIP load benchmark (issue 3): SIPp places G.711 calls to voxgate over loopback; each call is
//! taken by a `/call/sip` WebSocket client (`incoming` → `accept`, ASR off, VAD on) that keeps a
//! `play` running, so RTP flows both ways: SIPp streams LibriVox speech as PCMA (its `rtp_stream`),
//! voxgate runs it through the jitter buffer, decoder, resampler, DTMF and VAD, and sends the
//! bot's audio back.
//!
//! Two modes:
//! - `--mode concurrent --calls N`: N calls up at once; after they are all answered and a settle
//!   period, measures the server's CPU (% of one core per call) and RSS (MB per call above the
//!   idle server) over `--window` seconds. Also prints call set-up latency (SIPp: INVITE sent →
//!   200 OK received, including the WebSocket round trip to the application) and the RTP
//!   quality voxgate reported at hang-up.
//! - `--mode cps --calls N --rate R`: N short calls (2 s of media) offered at R calls/s; prints the
//!   completed and failed calls, the achieved rate and the set-up latency.
//!
//! `cargo build --release -p voxgate -p voxgate-bench && bench/run-sip-load.sh`

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use voxgate_bench::{librivox, percentile, proc_cpu_secs, proc_rss_mb};
use voxgate_media::codec::{AudioEncoder, Codec};
use voxgate_media::{AudioFrame, SampleRate};

#[derive(Parser)]
struct Args {
    /// `concurrent` or `cps`.
    #[arg(long, default_value = "concurrent")]
    mode: String,
    /// Concurrent calls (concurrent mode) or total calls (cps mode).
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// New calls per second SIPp offers.
    #[arg(long, default_value_t = 50)]
    rate: usize,
    /// Measured window, seconds (concurrent mode).
    #[arg(long, default_value_t = 20)]
    window: u64,
    #[arg(long, default_value = "target/release/voxgate")]
    server: String,
    #[arg(long, default_value = "models")]
    models_dir: String,
    #[arg(long, default_value_t = 18281)]
    port: u16,
    #[arg(long, default_value_t = 15260)]
    sip_port: u16,
    #[arg(long, default_value_t = 16260)]
    sipp_port: u16,
    /// Keep the temporary directory (SIPp traces) for inspection.
    #[arg(long)]
    keep: bool,
}

#[derive(Default)]
struct Shared {
    answered: AtomicUsize,
    ended: AtomicUsize,
    errors: Mutex<Vec<String>>,
    quality: Mutex<Vec<serde_json::Value>>,
}

/// One application client: waits for calls, accepts, keeps bot audio playing; loops until `stop`.
async fn client(url: String, bot_wav: String, shared: Arc<Shared>, stop: tokio::time::Instant) {
    while tokio::time::Instant::now() < stop {
        let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        let play = serde_json::json!({"command": "play", "url": bot_wav}).to_string();
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = tokio::time::sleep_until(stop) => None,
            };
            let Some(Ok(Message::Text(t))) = msg else {
                break;
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
            match v["event"].as_str() {
                Some("incoming") => {
                    let accept = r#"{"command":"accept","option":{"asr":{"enabled":false},"bargeIn":false}}"#;
                    let _ = sink.send(Message::Text(accept.into())).await;
                }
                Some("answer") => {
                    shared.answered.fetch_add(1, Ordering::Relaxed);
                    let _ = sink.send(Message::Text(play.clone().into())).await;
                }
                Some("trackEnd") => {
                    let _ = sink.send(Message::Text(play.clone().into())).await;
                }
                Some("metrics") if v["key"] == "rtp" => {
                    shared.quality.lock().unwrap().push(v["data"].clone())
                }
                Some("hangup") => {
                    shared.ended.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Some("error") => shared
                    .errors
                    .lock()
                    .unwrap()
                    .push(v["error"].as_str().unwrap_or_default().to_string()),
                _ => {}
            }
        }
        let _ = sink.close().await;
    }
}

fn write_scenario(dir: &Path, audio: &Path, media_ms: u64) -> PathBuf {
    let text = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="voxgate sip load">
  <send retrans="500">
    <![CDATA[
      INVITE sip:1000@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:load@[local_ip]:[local_port]>;tag=[pid]L[call_number]
      To: <sip:1000@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:load@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 1 1 IN IP4 [local_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [rtpstream_audio_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=ptime:20
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[
      ACK sip:1000@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:load@[local_ip]:[local_port]>;tag=[pid]L[call_number]
      To: <sip:1000@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <nop><action><exec rtp_stream="{audio},-1,8"/></action></nop>
  <pause milliseconds="{media_ms}"/>
  <nop><action><exec rtp_stream="pause"/></action></nop>
  <send retrans="500">
    <![CDATA[
      BYE sip:1000@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:load@[local_ip]:[local_port]>;tag=[pid]L[call_number]
      To: <sip:1000@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#,
        audio = audio.display()
    );
    let p = dir.join("sip-load.xml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Set-up latencies (ms) from SIPp's `-trace_rtt` file.
fn read_rtt(dir: &Path) -> Vec<f64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().to_string_lossy().ends_with("_rtt.csv") {
            for line in std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .skip(1)
            {
                // date;date_ms;response_time;rtd_no
                if let Some(v) = line
                    .split(';')
                    .nth(2)
                    .and_then(|x| x.trim().parse::<f64>().ok())
                {
                    out.push(v);
                }
            }
        }
    }
    out
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run(a))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("voxgate-sip-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Caller speech: LibriVox clips with 1.5 s pauses, 8 kHz A-law, headerless (SIPp rtp_stream).
    let mut pcm = Vec::new();
    for (s, _) in librivox()? {
        pcm.extend(s);
        pcm.extend(vec![0i16; 24000]);
    }
    let pcm8 =
        voxgate_media::resample::resample_clip(&pcm, SampleRate::HZ_16000, SampleRate::HZ_8000)?;
    let alaw = AudioEncoder::new(Codec::Pcma).encode(&AudioFrame::mono(SampleRate::HZ_8000, pcm8));
    let audio = dir.join("caller.alaw");
    std::fs::write(&audio, alaw)?;
    // Bot audio: 10 s of the same speech as a 16 kHz WAV, replayed by each client.
    let bot = dir.join("bot.wav");
    {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&bot, spec)?;
        for &s in pcm.iter().take(160_000) {
            w.write_sample(s)?;
        }
        w.finalize()?;
    }

    let mut child = std::process::Command::new(&a.server)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", a.port),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .args(["--models-dir", &a.models_dir])
        .env("RUST_LOG", "warn")
        .env("VOXGATE_CALL__DUMP_DEFAULT", "false")
        .env("VOXGATE_ASR__ENGINE", "none")
        .env("VOXGATE_SIP__LISTEN", format!("127.0.0.1:{}", a.sip_port))
        .env("VOXGATE_SIP__RING_TIMEOUT_SECS", "120")
        // `play` reads files only from the media directory: the bot's WAV is there.
        .env("VOXGATE_PLAY__MEDIA_DIR", &dir)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("voxgate listening") => break,
                Some(_) => {}
                None => anyhow::bail!("server exited"),
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = proc_rss_mb(pid);
    let shared = Arc::new(Shared::default());
    let url = format!("ws://127.0.0.1:{}/call/sip?dump=false", a.port);
    let bot_url = format!("file://{}", bot.display());

    let concurrent = a.mode == "concurrent";
    let ramp_secs = a.calls as f64 / a.rate.max(1) as f64;
    let media_ms = if concurrent {
        ((ramp_secs + 5.0 + a.window as f64 + 3.0) * 1000.0) as u64
    } else {
        2000
    };
    let stop = tokio::time::Instant::now()
        + Duration::from_millis(media_ms)
        + Duration::from_secs_f64(ramp_secs + 60.0);
    // Clients: as many as calls up at once (concurrent), or enough for the offered rate (cps).
    let n_clients = if concurrent {
        a.calls
    } else {
        (a.rate * 4).min(a.calls).max(1)
    };
    let clients: Vec<_> = (0..n_clients)
        .map(|_| tokio::spawn(client(url.clone(), bot_url.clone(), shared.clone(), stop)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500 + n_clients as u64 * 2)).await;

    let scen = write_scenario(&dir, &audio, media_ms);
    let sipp_dir = dir.clone();
    let (calls, rate, sip_port, sipp_port) = (a.calls, a.rate, a.sip_port, a.sipp_port);
    let started = Instant::now();
    let sipp = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sipp")
            .arg(format!("127.0.0.1:{sip_port}"))
            .args([
                "-sf",
                &scen.display().to_string(),
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-p",
                &sipp_port.to_string(),
            ])
            .args([
                "-m",
                &calls.to_string(),
                "-l",
                &calls.to_string(),
                "-r",
                &rate.to_string(),
                "-nostdin",
                "-trace_rtt",
                "-rtt_freq",
                "1",
            ])
            .args(["-timeout", "600s", "-max_socket", "4096"])
            .current_dir(&sipp_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
    });

    let mut cpu_per_call = None;
    let mut rss_per_call = None;
    if concurrent {
        let deadline = Instant::now() + Duration::from_secs_f64(ramp_secs + 60.0);
        while shared.answered.load(Ordering::Relaxed) < a.calls && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let up = shared.answered.load(Ordering::Relaxed);
        println!(
            "calls answered: {up}/{} in {:.1} s",
            a.calls,
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cpu0 = proc_cpu_secs(pid);
        let t0 = Instant::now();
        let mut rss = Vec::new();
        while t0.elapsed() < Duration::from_secs(a.window) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss.push(proc_rss_mb(pid));
        }
        let cpu = (proc_cpu_secs(pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        let rss_mb = rss.iter().cloned().fold(0.0, f64::max);
        let live = up
            .saturating_sub(shared.ended.load(Ordering::Relaxed))
            .max(1);
        cpu_per_call = Some(cpu / live as f64);
        rss_per_call = Some((rss_mb - idle_rss) / live as f64);
        println!("window {} s with {live} live calls: server CPU {cpu:.1} % of one core, RSS {rss_mb:.0} MB (idle {idle_rss:.0} MB)", a.window);
    }
    let out = sipp.await??;
    let wall = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for c in clients {
        c.abort();
    }
    let _ = child.kill();
    let _ = child.wait();

    let rtt = read_rtt(&dir);
    let q = shared.quality.lock().unwrap().clone();
    let sum = |k: &str| q.iter().map(|v| v[k].as_f64().unwrap_or(0.0)).sum::<f64>();
    let (expected, lost) = (sum("packetsExpected"), sum("packetsLost"));
    let jitter: Vec<f64> = q
        .iter()
        .map(|v| v["jitterMs"].as_f64().unwrap_or(0.0))
        .collect();
    println!(
        "mode {}: {} calls offered at {}/s; SIPp exit {} in {wall:.1} s",
        a.mode,
        a.calls,
        a.rate,
        out.status.code().unwrap_or(-1)
    );
    if !concurrent {
        println!(
            "achieved {:.1} completed calls/s",
            shared.ended.load(Ordering::Relaxed) as f64 / wall
        );
    }
    println!(
        "answered {}, ended {}",
        shared.answered.load(Ordering::Relaxed),
        shared.ended.load(Ordering::Relaxed)
    );
    if !rtt.is_empty() {
        println!("set-up latency (INVITE -> 200 OK) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} calls", percentile(&rtt, 50.0), percentile(&rtt, 99.0), rtt.iter().cloned().fold(0.0, f64::max), rtt.len());
    }
    if let (Some(c), Some(r)) = (cpu_per_call, rss_per_call) {
        println!("CPU per call {c:.3} % of one core; RSS per call {r:.3} MB");
    }
    println!(
        "RTP from {} calls: loss {:.3} % ({lost} of {expected} packets), jitter p50 {:.2} ms p99 {:.2} ms, late {}, concealed {}",
        q.len(),
        if expected > 0.0 { 100.0 * lost / expected } else { 0.0 },
        percentile(&jitter, 50.0),
        percentile(&jitter, 99.0),
        sum("late"),
        sum("concealed")
    );
    let errors = shared.errors.lock().unwrap().clone();
    if !errors.is_empty() {
        println!("{} error events, first: {}", errors.len(), errors[0]);
    }
    if !out.status.success() {
        println!(
            "SIPp: {}",
            stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    if a.keep {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
