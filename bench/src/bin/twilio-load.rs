//! Load benchmark for Twilio Media Streams (issue 7): N concurrent streams into `/stream/{bot_id}`
//! on loopback, each sending what Twilio sends (`connected`, `start`, then one `media` message of
//! base64 µ-law every 20 ms, real speech: LibriVox clips separated by 1.5 s pauses) and echoing
//! the `mark`s it receives, as Twilio does. The bot answers every stream; `--tts` of them greet
//! the caller (Piper), so bot audio flows out as `media` too; those callers listen (they send
//! silence, which would otherwise barge in on the greeting). VAD on, ASR off, like the `/call`
//! benchmark (`load`), so that the figures compare: what a Twilio stream costs over a `/call`
//! session is the JSON and base64 on both directions and the playout marks.
//!
//! Prints server CPU and RSS per stream, greeting time to first audio, media and marks counted,
//! and the client's own lateness (high lateness means the client is saturated).
//!
//! `cargo run --release -p voxgate-bench --bin twilio-load -- --streams 200 --secs 30`

use base64::Engine as _;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use voxgate_bench::{percentile, proc_rss_mb};
use voxgate_media::codec::{AudioEncoder, Codec};
use voxgate_media::{AudioFrame, SampleRate};

#[derive(Parser)]
struct Args {
    /// Concurrent streams.
    #[arg(long, default_value_t = 200)]
    streams: usize,
    /// Seconds of the measured window (after ramp-up).
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// How many streams get a spoken greeting (bot audio out).
    #[arg(long, default_value_t = 5)]
    tts: usize,
    /// The voxgate binary to start.
    #[arg(long, default_value = "target/release/voxgate")]
    server: String,
    /// Models directory for the server.
    #[arg(long, default_value = "models")]
    models_dir: String,
    /// Port for the server.
    #[arg(long, default_value_t = 18182)]
    port: u16,
}

#[derive(Default)]
struct Stats {
    first_audio: Vec<f64>,
    lateness: Vec<f64>,
    errors: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    i: usize,
    url: String,
    // The caller's payloads, one per 20 ms, repeated.
    frames: Arc<Vec<String>>,
    start_at: tokio::time::Instant,
    measure_from: tokio::time::Instant,
    stop_at: tokio::time::Instant,
    stats: Arc<Mutex<Stats>>,
    media_in: Arc<AtomicU64>,
    marks: Arc<AtomicU64>,
) {
    tokio::time::sleep_until(start_at).await;
    let (ws, _) = match tokio_tungstenite::connect_async(&url).await {
        Ok(x) => x,
        Err(e) => {
            stats.lock().unwrap().errors.push(format!("connect: {e}"));
            return;
        }
    };
    let (sink, mut source) = ws.split();
    let sink = Arc::new(tokio::sync::Mutex::new(sink));
    let stream_sid = format!("MZ{:032x}", i + 1);
    let call_sid = format!(
        "CA{:032x}",
        (i as u128 + 1) * 7919 + std::process::id() as u128
    );
    let start = serde_json::json!({
        "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
        "start": {"accountSid": "AC0", "streamSid": stream_sid, "callSid": call_sid,
                  "tracks": ["inbound"], "customParameters": {},
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
    });
    {
        let mut s = sink.lock().await;
        let _ = s
            .send(Message::Text(
                r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.into(),
            ))
            .await;
        let _ = s.send(Message::Text(start.to_string().into())).await;
    }
    let connected_at = Instant::now();
    let (st, mi, mk, sk, sid) = (
        stats.clone(),
        media_in.clone(),
        marks.clone(),
        sink.clone(),
        stream_sid.clone(),
    );
    // Twilio's side: count the bot's media, echo its marks (played at once: loopback).
    let reader = tokio::spawn(async move {
        let mut first = true;
        while let Some(Ok(msg)) = source.next().await {
            let Message::Text(t) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
            match v["event"].as_str() {
                Some("media") => {
                    mi.fetch_add(1, Ordering::Relaxed);
                    if first {
                        first = false;
                        st.lock()
                            .unwrap()
                            .first_audio
                            .push(connected_at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                Some("mark") => {
                    mk.fetch_add(1, Ordering::Relaxed);
                    let echo =
                        serde_json::json!({"event": "mark", "streamSid": sid, "mark": v["mark"]});
                    let _ = sk
                        .lock()
                        .await
                        .send(Message::Text(echo.to_string().into()))
                        .await;
                }
                _ => {}
            }
        }
    });
    let offset = (i * 37) % frames.len();
    let t0 = tokio::time::Instant::now();
    let mut k: u64 = 0;
    let mut late = Vec::new();
    loop {
        let due = t0 + Duration::from_millis(20 * k);
        if due >= stop_at {
            break;
        }
        tokio::time::sleep_until(due).await;
        let now = tokio::time::Instant::now();
        if now >= measure_from {
            late.push(now.saturating_duration_since(due).as_secs_f64() * 1000.0);
        }
        let payload = &frames[(offset + k as usize) % frames.len()];
        let msg = format!(
            r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{payload}"}},"streamSid":"{stream_sid}"}}"#,
            k + 2,
            k + 1,
            k * 20
        );
        if sink
            .lock()
            .await
            .send(Message::Text(msg.into()))
            .await
            .is_err()
        {
            break;
        }
        k += 1;
    }
    let stop = serde_json::json!({"event": "stop", "sequenceNumber": (k + 2).to_string(), "streamSid": stream_sid, "stop": {"accountSid": "AC0", "callSid": call_sid}});
    let _ = sink
        .lock()
        .await
        .send(Message::Text(stop.to_string().into()))
        .await;
    let _ = sink.lock().await.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    stats.lock().unwrap().lateness.extend(late);
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run(a))
}

async fn create_bot(
    http: &reqwest::Client,
    port: u16,
    greeting: Option<&str>,
) -> anyhow::Result<String> {
    let mut body = serde_json::json!({"goal": "Benchmark", "webhook": "http://127.0.0.1:9/unused", "voice": "piper:joe"});
    if let Some(g) = greeting {
        body["greeting"] = g.into();
    }
    let r: serde_json::Value = http
        .post(format!("http://127.0.0.1:{port}/bots"))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    r["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("bot not created: {r}"))
}

async fn run(a: Args) -> anyhow::Result<()> {
    // Speech: each clip then 1.5 s of silence, as base64 µ-law payloads of 20 ms.
    let pcm8 = voxgate_bench::speech_8k()?;
    let mut enc = AudioEncoder::new(Codec::Pcmu);
    let frames: Arc<Vec<String>> = Arc::new(
        pcm8.chunks_exact(160)
            .map(|c| {
                base64::engine::general_purpose::STANDARD
                    .encode(enc.encode(&AudioFrame::mono(SampleRate::HZ_8000, c.to_vec())))
            })
            .collect(),
    );

    let data = std::env::temp_dir().join(format!("voxgate-twilio-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    std::fs::write(
        data.join("voxgate.toml"),
        "[bots]\nnumbers = [\"+15550001\", \"+15550002\"]\ncalls_per_day = 100000000\n",
    )?;
    let mut cmd = std::process::Command::new(std::fs::canonicalize(&a.server)?);
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{}", a.port),
        "--data-dir",
    ])
    .arg(&data)
    .args(["--models-dir"])
    .arg(std::fs::canonicalize(&a.models_dir)?)
    .current_dir(&data)
    .env("RUST_LOG", "warn")
    .env("VOXGATE_ASR__ENGINE", "none")
    .env("VOXGATE_SIP__ENABLED", "false");
    let mut child = voxgate_bench::start_server(cmd)?;
    let pid = child.id();
    let http = reqwest::Client::new();
    let quiet_bot = create_bot(&http, a.port, None).await?;
    let greeting_bot = create_bot(
        &http,
        a.port,
        Some("Thank you for calling. Please tell me how I can help you today."),
    )
    .await?;
    let url = |bot: &str| format!("ws://127.0.0.1:{}/stream/{bot}", a.port);
    let silence: Arc<Vec<String>> = Arc::new(vec![
        base64::engine::general_purpose::STANDARD
            .encode([0xffu8; 160]);
        1
    ]);
    // Warm up: greetings at once as many as will greet, so that the TTS arenas are allocated.
    let stats = Arc::new(Mutex::new(Stats::default()));
    let (mi, mk) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let now = tokio::time::Instant::now();
    let warm: Vec<_> = (0..a.tts.max(1))
        .map(|i| {
            tokio::spawn(stream(
                100_000 + i,
                url(&greeting_bot),
                silence.clone(),
                now,
                now + Duration::from_secs(3600),
                now + Duration::from_secs(8),
                Arc::new(Mutex::new(Stats::default())),
                mi.clone(),
                mk.clone(),
            ))
        })
        .collect();
    for w in warm {
        w.await?;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let idle_rss = proc_rss_mb(pid);
    let (media_in, marks) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let ramp = Duration::from_millis((a.streams as u64 * 5).max(2000));
    let begin = tokio::time::Instant::now();
    let measure_from = begin + ramp + Duration::from_secs(8);
    let stop_at = measure_from + Duration::from_secs(a.secs);
    let mut tasks = Vec::new();
    for i in 0..a.streams {
        let start_at = begin + ramp.mul_f64(i as f64 / a.streams as f64);
        let (bot, caller) = if i < a.tts {
            (&greeting_bot, silence.clone())
        } else {
            (&quiet_bot, frames.clone())
        };
        tasks.push(tokio::spawn(stream(
            i,
            url(bot),
            caller,
            start_at,
            measure_from,
            stop_at,
            stats.clone(),
            media_in.clone(),
            marks.clone(),
        )));
    }
    tokio::time::sleep_until(measure_from).await;
    let w = voxgate_bench::measure(pid, stop_at).await;
    let wall = w.wall_secs;
    for t in tasks {
        let _ = t.await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);

    let s = stats.lock().unwrap();
    println!(
        "streams {} (greeting {}), window {:.0} s",
        a.streams,
        a.tts.min(a.streams),
        wall
    );
    voxgate_bench::print_usage("stream", a.streams, &w, idle_rss);
    println!(
        "greeting audio    p50 {:.0} ms  p99 {:.0} ms after `start` (n={})",
        percentile(&s.first_audio, 50.0),
        percentile(&s.first_audio, 99.0),
        s.first_audio.len()
    );
    println!(
        "bot media         {} messages, {} marks echoed",
        media_in.load(Ordering::Relaxed),
        marks.load(Ordering::Relaxed)
    );
    println!(
        "client lateness   p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(&s.lateness, 50.0),
        percentile(&s.lateness, 99.0),
        s.lateness.iter().cloned().fold(0.0, f64::max)
    );
    if !s.errors.is_empty() {
        println!(
            "errors            {} (first: {})",
            s.errors.len(),
            s.errors[0]
        );
    }
    Ok(())
}
