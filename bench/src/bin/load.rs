//! Load benchmark for `/call` (issue 2): N concurrent sessions on loopback, each streaming 20 ms
//! PCMU frames of real speech (LibriVox clips separated by 1.5 s pauses) in real time.
//!
//! Starts the server itself (so that it can read the server's CPU time and RSS from /proc),
//! ramps the sessions up, measures a steady window, and prints:
//! - server CPU per session (% of one core) and RSS per session (MB above the idle server);
//! - `speaking` latency p50/p99: event arrival − the speech start it reports (both epoch ms);
//! - end of speech → `asrFinal` latency p50/p99 (includes the endpointing silence);
//! - `tts` → first audio frame latency p50/p99 (for the sessions that send `tts`);
//! - client lateness p50/p99/max: how late the client sent frames against its 20 ms schedule
//!   (large values mean the client, not the server, is saturated and the figures are suspect).
//!
//! `cargo run --release -p voxgate-bench --bin load -- --sessions 50 --secs 30 [--asr N] [--tts N]`

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;
use voxgate_bench::{percentile, proc_rss_mb};
use voxgate_call::turns::{turn_end, TurnEnd};
use voxgate_media::codec::{AudioEncoder, Codec};
use voxgate_media::{AudioFrame, SampleRate};

#[derive(Parser)]
struct Args {
    /// Concurrent sessions.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Seconds each session streams in the measured window (after ramp-up).
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// How many of the sessions run ASR (the rest: VAD only).
    #[arg(long, default_value_t = 0)]
    asr: usize,
    /// How many sessions send one `tts` command during the window.
    #[arg(long, default_value_t = 5)]
    tts: usize,
    /// The voxgate binary to start.
    #[arg(long, default_value = "target/release/voxgate")]
    server: String,
    /// Models directory for the server.
    #[arg(long, default_value = "models")]
    models_dir: String,
    /// Port for the server.
    #[arg(long, default_value_t = 18181)]
    port: u16,
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

#[derive(Default)]
struct Stats {
    speaking: Vec<f64>,
    asr_final: Vec<f64>,
    /// The same latencies for finals whose transcript is a complete sentence (adaptive
    /// endpointing's 300 ms rule), and for the rest.
    asr_final_complete: Vec<f64>,
    asr_final_other: Vec<f64>,
    /// Every measured final: speech length (ms), latency (ms), how its transcript ends, text.
    finals_detail: Vec<(f64, f64, TurnEnd, String)>,
    tts_first_audio: Vec<f64>,
    lateness: Vec<f64>,
    errors: Vec<String>,
    finals: usize,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    i: usize,
    url: String,
    frames: Arc<Vec<Vec<u8>>>,
    start_at: tokio::time::Instant,
    measure_from: tokio::time::Instant,
    stop_at: tokio::time::Instant,
    asr: bool,
    tts: bool,
    stats: Arc<Mutex<Stats>>,
) {
    let (ws, _) = match tokio_tungstenite::connect_async(&url).await {
        Ok(x) => x,
        Err(e) => {
            stats.lock().unwrap().errors.push(format!("connect: {e}"));
            return;
        }
    };
    let (mut sink, mut stream) = ws.split();
    let mut option = if asr {
        serde_json::json!({"codec":"pcmu"})
    } else {
        serde_json::json!({"codec":"pcmu","asr":{"enabled":false}})
    };
    if tts {
        // The caller keeps talking; without this, barge-in would (rightly) cut the reply.
        option["bargeIn"] = false.into();
    }
    let _ = sink
        .send(Message::Text(
            serde_json::json!({"command":"invite","option":option})
                .to_string()
                .into(),
        ))
        .await;
    let tts_sent: Arc<Mutex<Option<f64>>> = Arc::new(Mutex::new(None));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (st, ts, m) = (stats.clone(), tts_sent.clone(), measuring.clone());
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let now = epoch_ms();
            match msg {
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    let measuring = m.load(std::sync::atomic::Ordering::Relaxed);
                    match v["event"].as_str() {
                        Some("speaking") if measuring => st
                            .lock()
                            .unwrap()
                            .speaking
                            .push(now - v["startTime"].as_f64().unwrap_or(now)),
                        Some("asrFinal") => {
                            let mut s = st.lock().unwrap();
                            s.finals += 1;
                            if measuring {
                                let ms = now - v["endTime"].as_f64().unwrap_or(now);
                                s.asr_final.push(ms);
                                let text = v["text"].as_str().unwrap_or("");
                                let speech = v["endTime"].as_f64().unwrap_or(0.0)
                                    - v["startTime"].as_f64().unwrap_or(0.0);
                                s.finals_detail
                                    .push((speech, ms, turn_end(text), text.into()));
                                if turn_end(text) == TurnEnd::Complete {
                                    s.asr_final_complete.push(ms);
                                } else {
                                    s.asr_final_other.push(ms);
                                }
                            }
                        }
                        Some("error") => st
                            .lock()
                            .unwrap()
                            .errors
                            .push(v["error"].as_str().unwrap_or("").to_string()),
                        _ => {}
                    }
                }
                Message::Binary(_) => {
                    if let Some(sent) = ts.lock().unwrap().take() {
                        st.lock().unwrap().tts_first_audio.push(now - sent);
                    }
                }
                _ => {}
            }
        }
    });
    // Each session starts at a different place in the speech so that onsets are spread out.
    let offset = (i * 37) % frames.len();
    tokio::time::sleep_until(start_at).await;
    let t0 = tokio::time::Instant::now();
    let mut k: u64 = 0;
    let mut tts_done = false;
    let mut late = Vec::new();
    loop {
        let due = t0 + Duration::from_millis(20 * k);
        if due >= stop_at {
            break;
        }
        tokio::time::sleep_until(due).await;
        let now = tokio::time::Instant::now();
        if now >= measure_from {
            measuring.store(true, std::sync::atomic::Ordering::Relaxed);
            late.push(now.saturating_duration_since(due).as_secs_f64() * 1000.0);
        }
        let f = &frames[(offset + k as usize) % frames.len()];
        if sink.send(Message::Binary(f.clone().into())).await.is_err() {
            break;
        }
        // TTS goes out in the settle period, while every session streams, so that the measured
        // window holds only the streaming load (VAD) and the TTS latency is taken under it.
        if tts
            && !tts_done
            && now + Duration::from_millis(2500 + 40 * (i as u64 % 50)) >= measure_from
        {
            tts_done = true;
            *tts_sent.lock().unwrap() = Some(epoch_ms());
            let _ = sink.send(Message::Text(r#"{"command":"tts","text":"Thank you, one moment please.","option":{"provider":"piper"}}"#.into())).await;
        }
        k += 1;
    }
    let _ = sink
        .send(Message::Text(r#"{"command":"hangup"}"#.into()))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    stats.lock().unwrap().lateness.extend(late);
}

/// One call that speaks (TTS) and is transcribed (ASR), to load every engine before measuring.
async fn warm_up(url: &str, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::Text(
        r#"{"command":"invite","option":{"codec":"pcmu","bargeIn":false}}"#.into(),
    ))
    .await?;
    sink.send(Message::Text(
        r#"{"command":"tts","text":"Warming up.","option":{"provider":"piper"}}"#.into(),
    ))
    .await?;
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for f in frames.iter().take(400) {
        tick.tick().await;
        sink.send(Message::Binary(f.clone().into())).await?;
    }
    sink.send(Message::Text(r#"{"command":"hangup"}"#.into()))
        .await?;
    let _ = tokio::time::timeout(Duration::from_secs(20), reader).await;
    Ok(())
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
    // Speech stream: each clip then 1.5 s of silence, 8 kHz PCMU in 20 ms frames.
    let pcm8 = voxgate_bench::speech_8k()?;
    let mut enc = AudioEncoder::new(Codec::Pcmu);
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        pcm8.chunks_exact(160)
            .map(|c| enc.encode(&AudioFrame::mono(SampleRate::HZ_8000, c.to_vec())))
            .collect(),
    );

    let data = std::env::temp_dir().join(format!("voxgate-bench-{}", std::process::id()));
    let mut cmd = std::process::Command::new(&a.server);
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{}", a.port),
        "--data-dir",
    ])
    .arg(&data)
    .args(["--models-dir", &a.models_dir])
    .env(
        "RUST_LOG",
        std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
    )
    .env("VOXGATE_CALL__DUMP_DEFAULT", "false");
    let mut child = voxgate_bench::start_server(cmd)?;
    let pid = child.id();
    // Warm up once (TTS and ASR allocate their arenas on first use), then take the idle RSS, so
    // that RSS per session counts what sessions cost, not one-time engine memory.
    // As many warm-up calls at once as sessions will send TTS, so that the TTS arenas are as large
    // as they will get.
    let warm: Vec<_> = (0..a.tts.max(1))
        .map(|_| {
            let url = format!("ws://127.0.0.1:{}/call?dump=false", a.port);
            let f = frames.clone();
            tokio::spawn(async move { warm_up(&url, &f).await })
        })
        .collect();
    for w in warm {
        w.await??;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = proc_rss_mb(pid);
    let url = format!("ws://127.0.0.1:{}/call?dump=false", a.port);
    let stats = Arc::new(Mutex::new(Stats::default()));
    // Ramp: sessions connect over 5 s (or 5 ms apart), then 5 s settle, then the measured window.
    let ramp = Duration::from_millis((a.sessions as u64 * 5).max(2000));
    let begin = tokio::time::Instant::now();
    let measure_from = begin + ramp + Duration::from_secs(5);
    let stop_at = measure_from + Duration::from_secs(a.secs);
    let mut tasks = Vec::new();
    for i in 0..a.sessions {
        let start_at = begin + ramp.mul_f64(i as f64 / a.sessions as f64);
        tasks.push(tokio::spawn(session(
            i,
            url.clone(),
            frames.clone(),
            start_at,
            measure_from,
            stop_at,
            i < a.asr,
            i < a.tts,
            stats.clone(),
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
        "sessions {} (asr on {}, tts {}), window {:.0} s",
        a.sessions,
        a.asr.min(a.sessions),
        a.tts.min(a.sessions),
        wall
    );
    voxgate_bench::print_usage("session", a.sessions, &w, idle_rss);
    println!(
        "speaking latency  p50 {:.0} ms  p99 {:.0} ms  (n={})",
        percentile(&s.speaking, 50.0),
        percentile(&s.speaking, 99.0),
        s.speaking.len()
    );
    println!(
        "speech end→final  p50 {:.0} ms  p99 {:.0} ms  (n={}, includes endpointing)",
        percentile(&s.asr_final, 50.0),
        percentile(&s.asr_final, 99.0),
        s.asr_final.len()
    );
    println!(
        "  complete sentence p50 {:.0} ms  p99 {:.0} ms  (n={}, 300 ms endpointing); other p50 {:.0} ms  p99 {:.0} ms  (n={}, 600 ms or 1,200 ms)",
        percentile(&s.asr_final_complete, 50.0),
        percentile(&s.asr_final_complete, 99.0),
        s.asr_final_complete.len(),
        percentile(&s.asr_final_other, 50.0),
        percentile(&s.asr_final_other, 99.0),
        s.asr_final_other.len()
    );
    // Issue 9's goal is stated for a 3 s utterance: finals of 2.5–3.5 s of speech.
    let three: Vec<f64> = s
        .finals_detail
        .iter()
        .filter(|d| (2500.0..=3500.0).contains(&d.0))
        .map(|d| d.1)
        .collect();
    println!(
        "  3 s utterances    p50 {:.0} ms  max {:.0} ms  (n={}, 2.5–3.5 s of speech)",
        percentile(&three, 50.0),
        percentile(&three, 100.0),
        three.len()
    );
    if a.sessions == 1 {
        for (speech, ms, end, text) in &s.finals_detail {
            let head: String = text.chars().take(48).collect();
            println!("    {speech:>5.0} ms speech → final {ms:>4.0} ms  {end:?}  {head:?}");
        }
    }
    println!(
        "tts→first audio   p50 {:.0} ms  p99 {:.0} ms  (n={})",
        percentile(&s.tts_first_audio, 50.0),
        percentile(&s.tts_first_audio, 99.0),
        s.tts_first_audio.len()
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
