//! Test harness: starts the real `voxgate` binary on an ephemeral loopback port and talks to it as
//! a WebSocket client, recording every message in arrival order.
#![allow(dead_code)]

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxgate_media::codec::{AudioEncoder, Codec};
use voxgate_media::resample::resample_clip;
use voxgate_media::{AudioFrame, SampleRate};

pub mod pjsua;
pub mod sipp;

pub const LIBRIVOX: &str = "/usr/share/pocketsphinx/test/data/librivox";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A free loopback port that is even and has the next one free too (an RTP/RTCP pair), for UDP
/// *and* TCP (SIPp and PJSUA listen on both for SIP). It is taken below Linux's ephemeral range
/// (32768–60999): a port the kernel hands out to some other test's `bind(0)` or outgoing
/// connection can then never collide with it after it was checked (a SIPp over TCP once failed to
/// bind the number a UDP-only check had found free).
pub fn free_udp_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for _ in 0..200 {
        let n = seed
            .wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed))
            .wrapping_mul(2654435761);
        let p = 20_000 + ((n >> 8) % 6_000) as u16 * 2;
        let free = |port: u16| {
            std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        };
        if free(p) && free(p + 1) {
            return p;
        }
    }
    panic!("no free port pair below 32000");
}

/// A running server; killed on drop.
pub struct Server {
    child: Child,
    pub addr: String,
    /// The SIP UDP (and TCP) address, `127.0.0.1:PORT`.
    pub sip_addr: String,
    pub data_dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Server {
        Self::start_with_config(env, "")
    }

    /// Starts with `toml` as `voxgate.toml` in the server's working directory.
    pub fn start_with_config(env: &[(&str, &str)], toml: &str) -> Server {
        Self::start_in(tempfile::tempdir().unwrap(), env, toml)
    }

    /// Stops the server and keeps its data directory (to start another on it).
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap())
    }

    /// Runs `voxgate ARGS --data-dir DIR` (e.g. `keys create`) in the server's directory and
    /// returns its stdout; panics when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_voxgate"))
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .current_dir(self.data_dir.path())
            .output()
            .expect("run voxgate");
        assert!(
            out.status.success(),
            "voxgate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts in `data_dir` (its store and `voxgate.toml` are kept).
    pub fn start_in(data_dir: tempfile::TempDir, env: &[(&str, &str)], toml: &str) -> Server {
        if !toml.is_empty() {
            std::fs::write(data_dir.path().join("voxgate.toml"), toml).unwrap();
        }
        let root = repo_root();
        assert!(
            root.join("models/libonnxruntime.so").exists(),
            "models are missing: run `make models` (scripts/fetch-models.sh)"
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxgate"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .arg("--models-dir")
            .arg(root.join("models"))
            .env("VOXGATE_ASR__INSTANCES", "1")
            .env("VOXGATE_SIP__LISTEN", "127.0.0.1:0")
            // No offline LLM unless a test asks for one (it takes a core while it loads).
            .env("VOXGATE_LLM__OFFLINE", "false")
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn,voxgate=info".into()),
            )
            .current_dir(data_dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn voxgate");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sip = String::new();
            while let Some(Ok(l)) = lines.next() {
                if let Some(a) = l.strip_prefix("voxgate sip listening on udp:") {
                    sip = a.to_string();
                }
                if let Some(a) = l.strip_prefix("voxgate listening on http://") {
                    let _ = tx.send((a.to_string(), sip.clone()));
                }
            }
        });
        let (addr, sip_addr) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("voxgate did not start within 120 s");
        Server {
            child,
            addr,
            sip_addr,
            data_dir,
        }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/call{query}", self.addr)
    }

    pub fn sip_ws_url(&self, query: &str) -> String {
        format!("ws://{}/call/sip{query}", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn db_url(&self) -> String {
        format!(
            "sqlite:{}",
            self.data_dir.path().join("voxgate.db").display()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One received message, in arrival order.
#[derive(Clone, Debug)]
pub enum Rx {
    Event(serde_json::Value, Instant),
    Audio(Vec<u8>, Instant),
    Closed,
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

pub struct Client {
    sink: Sink,
    pub log: Arc<Mutex<Vec<Rx>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let (sink, mut stream) = ws.split();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let reader = tokio::spawn(async move {
            while let Some(m) = stream.next().await {
                match m {
                    Ok(Message::Text(t)) => l.lock().unwrap().push(Rx::Event(
                        serde_json::from_str(t.as_str()).unwrap(),
                        Instant::now(),
                    )),
                    Ok(Message::Binary(b)) => l
                        .lock()
                        .unwrap()
                        .push(Rx::Audio(b.to_vec(), Instant::now())),
                    Ok(Message::Close(_)) | Err(_) => break,
                    _ => {}
                }
            }
            l.lock().unwrap().push(Rx::Closed);
        });
        Client { sink, log, reader }
    }

    /// Drops the TCP connection without a WebSocket close, like a crashed client.
    pub fn abort(self) {
        self.reader.abort();
        drop(self.sink);
    }

    pub async fn send(&mut self, v: serde_json::Value) {
        self.sink
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.sink
            .send(Message::Text(t.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.sink.send(Message::Binary(b.into())).await.unwrap();
    }

    /// Sends frames one per 20 ms, as a real caller would.
    pub async fn stream_realtime(&mut self, frames: &[Vec<u8>]) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for f in frames {
            tick.tick().await;
            self.sink
                .send(Message::Binary(f.clone().into()))
                .await
                .unwrap();
        }
    }

    pub async fn close(mut self) {
        let _ = self.sink.close().await;
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| {
                if let Rx::Event(v, _) = r {
                    Some(v.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    pub fn events_named(&self, name: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// Waits up to `timeout` for an event named `name`; `None` when none came.
    pub async fn try_wait_event(&self, name: &str, timeout: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| e["event"] == name) {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until an event satisfies `pred`; returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_event(&self, name: &str, timeout: Duration) -> serde_json::Value {
        self.wait_for(name, timeout, |e| e["event"] == name).await
    }

    /// Waits until the server has closed the WebSocket.
    pub async fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|r| matches!(r, Rx::Closed))
        {
            assert!(
                Instant::now() < deadline,
                "the server did not close the WebSocket"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn audio_bytes(&self) -> Vec<u8> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| {
                if let Rx::Audio(b, _) = r {
                    Some(b.clone())
                } else {
                    None
                }
            })
            .flatten()
            .collect()
    }
}

/// Reads a 16-bit WAV as mono samples at its rate.
pub fn read_wav(path: &Path) -> (Vec<i16>, SampleRate) {
    let r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    let s: Vec<i16> = r.into_samples::<i16>().map(|x| x.unwrap()).collect();
    let f = AudioFrame {
        rate: SampleRate::new(spec.sample_rate).unwrap(),
        channels: if spec.channels == 2 {
            voxgate_media::Channels::Stereo
        } else {
            voxgate_media::Channels::Mono
        },
        samples: s,
    };
    let m = f.into_mono();
    (m.samples, m.rate)
}

/// Encodes samples at `rate` into 20 ms frames of `codec` (resampling first).
pub fn encode_frames(samples: &[i16], rate: SampleRate, codec: Codec) -> Vec<Vec<u8>> {
    let target = codec.sample_rate();
    let pcm = resample_clip(samples, rate, target).unwrap();
    let n = target.samples_in_ms(20);
    let mut enc = AudioEncoder::new(codec);
    pcm.chunks(n)
        .map(|c| {
            let mut c = c.to_vec();
            c.resize(n, 0);
            enc.encode(&AudioFrame::mono(target, c))
        })
        .collect()
}

pub fn silence_frames(ms: u32, codec: Codec) -> Vec<Vec<u8>> {
    let mut enc = AudioEncoder::new(codec);
    (0..ms / 20)
        .map(|_| enc.encode(&AudioFrame::silence(codec.sample_rate(), 20)))
        .collect()
}

/// The LibriVox clips and their reference transcripts.
pub fn librivox() -> Vec<(PathBuf, String)> {
    let dir = Path::new(LIBRIVOX);
    let refs = std::fs::read_to_string(dir.join("transcription"))
        .expect("pocketsphinx-testdata is missing: run `make deps`");
    refs.lines()
        .filter_map(|l| {
            let (text, id) = l.rsplit_once(" (")?;
            let id = id.trim_end_matches(')');
            let text = text.replace("<s>", "").replace("</s>", "");
            Some((dir.join(format!("{id}.wav")), text.trim().to_string()))
        })
        .collect()
}

/// Words for WER: lower case, punctuation and hyphens as spaces, a few spoken forms expanded.
pub fn words(s: &str) -> Vec<String> {
    let s: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect();
    s.split_whitespace()
        .map(|w| match w {
            "mr" => "mister".to_string(),
            "mrs" => "missus".to_string(),
            other => other.to_string(),
        })
        .collect()
}

/// Word-level edit distance.
pub fn edit_distance(r: &[String], h: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()]
}

/// Word error rate of `hyp` against `reference`.
pub fn wer(reference: &str, hyp: &str) -> f64 {
    let r = words(reference);
    edit_distance(&r, &words(hyp)) as f64 / r.len().max(1) as f64
}

/// Word error rate of `reference` against the best-matching head of `hyp` (what follows the
/// reference in `hyp` is not counted): one deleted word costs one error, not two.
pub fn head_wer(reference: &str, hyp: &str) -> f64 {
    let r = words(reference);
    let h = words(hyp);
    (0..=h.len())
        .map(|k| edit_distance(&r, &h[..k]))
        .min()
        .unwrap_or(r.len()) as f64
        / r.len().max(1) as f64
}

/// How much of `sent` (8 kHz) arrived in `heard` (8 kHz, later by up to `max_lag` samples): the
/// 200 ms windows of `sent` with speech in them, and how many of those were found in `heard`
/// (normalised correlation ≥ 0.8 at some lag). The lag is searched in full for the first window
/// and within ±30 ms of the last one after that, so a receiver's jitter buffer that drops or
/// inserts a frame (a slip) is followed, while lost or garbled audio is not found.
pub fn delivered(sent: &[i16], heard: &[i16], max_lag: usize) -> (usize, usize) {
    const W: usize = 1600;
    const SLIP: usize = 240;
    let corr = |a: &[i16], b: &[i16]| {
        let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
        for (x, y) in a.iter().zip(b) {
            let (x, y) = (*x as f64, *y as f64);
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        ab / (aa.sqrt() * bb.sqrt() + 1.0)
    };
    let (mut voiced, mut found) = (0, 0);
    let mut last: Option<usize> = None;
    for start in (0..sent.len().saturating_sub(W)).step_by(W) {
        let w = &sent[start..start + W];
        let rms = (w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / W as f64).sqrt();
        if rms < 300.0 {
            continue;
        }
        voiced += 1;
        let lags = match last {
            None => 0..max_lag,
            Some(l) => l.saturating_sub(SLIP)..l + SLIP,
        };
        let best = lags
            .filter(|lag| start + lag + W <= heard.len())
            .map(|lag| (corr(w, &heard[start + lag..start + lag + W]), lag))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((c, lag)) = best {
            if c >= 0.8 {
                found += 1;
                last = Some(lag);
            }
        }
    }
    (voiced, found)
}

/// 16 kHz two-tone DTMF audio for `digits`: 120 ms tones, 120 ms gaps.
pub fn dtmf_audio(digits: &str) -> Vec<i16> {
    let rows = [697.0f32, 770.0, 852.0, 941.0];
    let cols = [1209.0f32, 1336.0, 1477.0, 1633.0];
    let keys = ["123A", "456B", "789C", "*0#D"];
    let mut out = vec![0i16; 3200];
    for d in digits.chars() {
        let (r, c) = keys
            .iter()
            .enumerate()
            .find_map(|(r, k)| k.find(d).map(|c| (r, c)))
            .unwrap();
        out.extend((0..1920).map(|i| {
            let t = i as f32 / 16000.0;
            (6000.0
                * ((2.0 * std::f32::consts::PI * rows[r] * t).sin()
                    + (2.0 * std::f32::consts::PI * cols[c] * t).sin())) as i16
        }));
        out.extend(std::iter::repeat_n(0i16, 1920));
    }
    out
}

/// Transcribes a WAV with voxgate's own ASR over `/call` (16 kHz PCM, sent 4× faster than real
/// time); the final transcripts joined.
pub async fn transcribe(server: &Server, wav: &Path) -> String {
    transcribe_as(server, wav, None).await
}

/// [`transcribe`] with an API key (`?token=`) on a server with authentication.
pub async fn transcribe_as(server: &Server, wav: &Path, key: Option<&str>) -> String {
    let (samples, rate) = read_wav(wav);
    transcribe_samples(server, &samples, rate, key).await
}

/// Transcribes mono samples through `/call`.
pub async fn transcribe_samples(
    server: &Server,
    samples: &[i16],
    rate: SampleRate,
    key: Option<&str>,
) -> String {
    let samples = samples.to_vec();
    let mut pcm = resample_clip(&samples, rate, SampleRate::HZ_16000).unwrap();
    pcm.extend(std::iter::repeat_n(0i16, 16000));
    let q = match key {
        Some(k) => format!("?dump=false&token={k}"),
        None => "?dump=false".to_string(),
    };
    let mut c = Client::connect(&server.ws_url(&q)).await;
    c.send(
        serde_json::json!({"command": "invite", "option": {"codec": "pcm", "sampleRate": 16000}}),
    )
    .await;
    c.wait_event("answer", Duration::from_secs(10)).await;
    let frames = encode_frames(&pcm, SampleRate::HZ_16000, Codec::Pcm(SampleRate::HZ_16000));
    for chunk in frames.chunks(4) {
        for f in chunk {
            c.send_binary(f.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.send(serde_json::json!({"command": "hangup"})).await;
    c.wait_event("hangup", Duration::from_secs(60)).await;
    c.events_named("asrFinal")
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}
