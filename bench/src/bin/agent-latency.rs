//! Seed-001 agent latency (issue 9): how long after the caller stops speaking the agent's first
//! audio goes out, with its breakdown, for 1, 2 and 4 concurrent agent calls.
//!
//! For each size N it starts voxgate (release) with a trunk to SIPp, places N calls with
//! `POST /outbound-call`, and SIPp (the callees) streams LibriVox questions as PCMU: 4 s of silence
//! (the first message), then each clip followed by 9 s of silence (the reply), then hangs up. The
//! agent stores every turn with its timings from the caller's end of speech (the start of the
//! silence that ended the utterance); the benchmark reads them from the store and prints p50/p95
//! of each stage's arrival:
//! - endpointed: the `silence` event (VAD endpointing, `vad.min_silence_ms`);
//! - asrFinal: the final transcript;
//! - LLM first token;
//! - first audio: the first frame of the reply sent to the leg.
//!
//! `--llm scripted` answers from an OpenAI-compatible server inside this process whose first token
//! comes `--first-token-ms` (200) after the request, then a word every 30 ms (what a hosted or GPU
//! LLM gives: this isolates voxgate's own share). `--llm offline` uses the offline model
//! (Qwen2.5-0.5B when fetched, else SmolLM2-135M).
//!
//! `cargo build --release -p voxgate -p voxgate-bench && bench/run-agent-latency.sh`

use clap::Parser;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use voxgate::store::sqlite::SqliteStore;
use voxgate::store::{AgentStore, AgentTurnRecord};
use voxgate_bench::{librivox, percentile, start_server};
use voxgate_media::codec::{AudioEncoder, Codec};
use voxgate_media::{AudioFrame, SampleRate};

#[derive(Parser)]
struct Args {
    /// Concurrent calls, comma-separated sizes.
    #[arg(long, default_value = "1,2,4")]
    calls: String,
    /// `scripted` or `offline`.
    #[arg(long, default_value = "scripted")]
    llm: String,
    /// The scripted LLM's time to its first token, ms.
    #[arg(long, default_value_t = 200)]
    first_token_ms: u64,
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

const FIRST: &str = "Hello, how can I help?";
const REPLY: &str = "Sure, I can help with that. Our office is open from nine to five on weekdays.";
/// LibriVox clips the callees say, in order (3.0, 3.3 and 5.3 s).
const CLIPS: [&str; 3] = ["0880", "0930", "0890"];
const LEAD_MS: usize = 4000;
const GAP_MS: usize = 9000;

/// The scripted LLM: the warm-up (`max_tokens` 1) at once; a reply's first token after `delay`.
async fn scripted(delay: Duration, axum::Json(req): axum::Json<Value>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let chunk = |delta: Value, finish: Option<&str>| {
        let v = json!({"id": "b", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {v}\n\n")
    };
    let warm = req["max_tokens"] == 1;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(8);
    tokio::spawn(async move {
        if warm {
            let _ = tx.send(Ok(chunk(json!({"content": "Hi"}), None))).await;
        } else {
            tokio::time::sleep(delay).await;
            for w in REPLY.split_inclusive(' ') {
                if tx
                    .send(Ok(chunk(json!({"content": w}), None)))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        let _ = tx.send(Ok(chunk(json!({}), Some("stop")))).await;
        let _ = tx.send(Ok("data: [DONE]\n\n".into())).await;
    });
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// The callees' audio as headerless 8 kHz µ-law; returns its length in ms.
fn write_audio(path: &Path) -> anyhow::Result<u64> {
    let clips = librivox()?;
    let mut pcm = vec![0i16; LEAD_MS * 16];
    for id in CLIPS {
        let i = voxgate_bench::librivox_index(id)?;
        pcm.extend(&clips[i].0);
        pcm.extend(vec![0i16; GAP_MS * 16]);
    }
    let mut enc = AudioEncoder::new(Codec::Pcmu);
    let pcm8 =
        voxgate_media::resample::resample_clip(&pcm, SampleRate::HZ_16000, SampleRate::HZ_8000)?;
    let mut bytes = Vec::new();
    for f in pcm8.chunks(160) {
        bytes.extend(enc.encode(&AudioFrame::mono(SampleRate::HZ_8000, f.to_vec())));
    }
    std::fs::write(path, &bytes)?;
    Ok(bytes.len() as u64 / 8)
}

fn write_scenario(dir: &Path, audio: &Path, media_ms: u64) -> anyhow::Result<PathBuf> {
    let xml = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="voxgate agent callee">
  <recv request="INVITE" rrs="true">
    <action><ereg regexp=".*" search_in="hdr" header="From:" assign_to="remote_from"/></action>
  </recv>
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
      m=audio [rtpstream_audio_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=ptime:20
    ]]>
  </send>
  <recv request="ACK"/>
  <nop><action><exec rtp_stream="@AUDIO@,1,0"/></action></nop>
  <pause milliseconds="@MS@"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:callee@[local_ip]:[local_port]>;tag=[pid]V[call_number]
      To:[$remote_from]
      Call-ID: [call_id]
      CSeq: 1 BYE
      Contact: <sip:[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#
    .replace("@AUDIO@", &audio.display().to_string())
    .replace("@MS@", &(media_ms + 1000).to_string());
    let p = dir.join("uas_agent.xml");
    std::fs::write(&p, xml)?;
    Ok(p)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(run(a))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let mut a = a;
    // The server runs in its data directory: absolute paths.
    a.server = std::fs::canonicalize(&a.server)?.display().to_string();
    a.models_dir = std::fs::canonicalize(&a.models_dir)?.display().to_string();
    let dir = std::env::temp_dir().join(format!("voxgate-agent-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let audio = dir.join("callee.ulaw");
    let media_ms = write_audio(&audio)?;
    let scenario = write_scenario(&dir, &audio, media_ms)?;
    let llm_toml = match a.llm.as_str() {
        "scripted" => {
            let delay = Duration::from_millis(a.first_token_ms);
            let app = axum::Router::new().route(
                "/v1/chat/completions",
                axum::routing::post(move |body| scripted(delay, body)),
            );
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}/v1", l.local_addr()?);
            tokio::spawn(async move { axum::serve(l, app).await });
            format!("[llm]\nbase_url = \"{url}\"\n")
        }
        "offline" => {
            let m = Path::new(&a.models_dir).join("llm");
            let qwen = m.join("qwen2.5-0.5b-instruct-q4_k_m.gguf");
            let model = if qwen.exists() {
                qwen
            } else {
                m.join("SmolLM2-135M-Instruct.Q4_1.gguf")
            };
            let model = std::fs::canonicalize(&model)?;
            println!("offline LLM: {}", model.display());
            format!(
                "[llm]\noffline = true\nmodel_path = \"{}\"\n",
                model.display()
            )
        }
        other => anyhow::bail!("--llm must be scripted or offline, not {other}"),
    };
    println!(
        "LLM: {}{}; callees say {} LibriVox clips each, 9 s apart",
        a.llm,
        if a.llm == "scripted" {
            format!(
                " (first token after {} ms, a word every 30 ms)",
                a.first_token_ms
            )
        } else {
            String::new()
        },
        CLIPS.len()
    );
    println!("n calls | turns | endpointed p50/p95 | asrFinal p50/p95 | LLM 1st token p50/p95 | first audio p50/p95 (ms after the caller stopped)");
    for n in a.calls.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let n: usize = n.parse()?;
        let turns = one_size(&a, &dir, &scenario, &llm_toml, n).await?;
        let col = |f: fn(&AgentTurnRecord) -> Option<i64>| {
            let v: Vec<f64> = turns.iter().filter_map(f).map(|x| x as f64).collect();
            format!(
                "{:>5.0} / {:>5.0}",
                percentile(&v, 50.0),
                percentile(&v, 95.0)
            )
        };
        println!(
            "{n:>7} | {:>5} | {} | {} | {} | {}",
            turns.len(),
            col(|t| t.endpoint_ms),
            col(|t| t.asr_ms),
            col(|t| t.llm_first_ms),
            col(|t| t.first_audio_ms)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One size: N calls at once; returns their answered turns (agent turns after a caller turn).
async fn one_size(
    a: &Args,
    dir: &Path,
    scenario: &Path,
    llm_toml: &str,
    n: usize,
) -> anyhow::Result<Vec<AgentTurnRecord>> {
    let data = dir.join(format!("data-{n}"));
    std::fs::create_dir_all(&data)?;
    std::fs::write(
        data.join("voxgate.toml"),
        format!(
            "[[sip.trunks]]\nname = \"sipp\"\nhost = \"127.0.0.1:{}\"\nkeepalive_secs = 0\n\n{llm_toml}\n[agent]\nhold_ms = 0\n",
            a.sipp_port
        ),
    )?;
    let mut cmd = std::process::Command::new(&a.server);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{}", a.port)])
        .arg("--data-dir")
        .arg(&data)
        .arg("--models-dir")
        .arg(&a.models_dir)
        .env("VOXGATE_SIP__LISTEN", format!("127.0.0.1:{}", a.sip_port))
        .env("VOXGATE_CALL__DUMP_DEFAULT", "false")
        .env(
            "RUST_LOG",
            std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .current_dir(&data);
    let mut server = start_server(cmd)?;
    let sipp_dir = dir.to_path_buf();
    let (scenario, sipp_port) = (scenario.to_path_buf(), a.sipp_port);
    let sipp = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sipp")
            .args(["-sf", &scenario.display().to_string()])
            .args([
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-p",
                &sipp_port.to_string(),
            ])
            .args(["-m", &n.to_string(), "-nostdin", "-timeout", "300s"])
            .current_dir(&sipp_dir)
            .stdout(std::process::Stdio::null())
            .status()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::new();
    let mut sids = Vec::new();
    for i in 0..n {
        let r: Value = http
            .post(format!("http://127.0.0.1:{}/outbound-call", a.port))
            .json(
                &json!({"user_id": format!("bench{i}"), "number": "+15550100",
                          "prompt": "You are the receptionist of an office. Answer briefly.",
                          "first_message": FIRST}),
            )
            .send()
            .await?
            .json()
            .await?;
        let sid = r["callSid"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("/outbound-call: {r}"))?;
        sids.push(sid.to_string());
    }
    let status = sipp.await??;
    if !status.success() {
        eprintln!("sipp exited with {status}");
    }
    // The last turns are written as the calls end.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let store = SqliteStore::open(&format!("sqlite:{}", data.join("voxgate.db").display())).await?;
    let mut out = Vec::new();
    for sid in &sids {
        let t = store.agent_turns(sid).await?;
        out.extend(
            t.into_iter()
                .filter(|x| x.role == "agent" && x.index > 0 && x.asr_ms.is_some()),
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    Ok(out)
}
