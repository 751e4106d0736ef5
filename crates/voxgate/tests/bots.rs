//! Seed 004 end to end, against the real binary: `/bots`, TwiML `/voice` with Twilio's request
//! signatures, Twilio Media Streams played by `streamdouble` (a Twilio-side simulator from PyPI)
//! with real LibriVox speech, a real HTTP webhook server, SIPp dialling a bot's number, and the
//! webhook loop's rules (timeout, errors, retries, signatures, merging, limits).

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::*;
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use voxgate::store::sqlite::SqliteStore;
use voxgate::store::{BotStore, Store};
use voxgate_media::resample::resample_clip;
use voxgate_media::SampleRate;

const SECS: fn(u64) -> Duration = Duration::from_secs;

// ---- the webhook: a real HTTP server in the test ------------------------------------------

#[derive(Clone, Debug)]
struct HookRequest {
    headers: HeaderMap,
    raw: Vec<u8>,
    body: Value,
    at: Instant,
}

/// What the webhook does with its n-th request (from 0).
#[derive(Clone)]
enum HookReply {
    Json(Value),
    Status(u16),
    After(Duration, Box<HookReply>),
}

type Behavior = Arc<dyn Fn(usize, &Value) -> HookReply + Send + Sync>;
/// A webhook behaviour, the requests it should see, and the turn's stored error.
type Case = (
    &'static str,
    Box<dyn Fn(usize, &Value) -> HookReply + Send + Sync>,
    usize,
    Option<i64>,
);

#[derive(Clone)]
struct HookState {
    seen: Arc<Mutex<Vec<HookRequest>>>,
    behavior: Behavior,
}

struct Hook {
    url: String,
    seen: Arc<Mutex<Vec<HookRequest>>>,
}

impl Hook {
    fn requests(&self) -> Vec<HookRequest> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_requests(&self, n: usize, within: Duration) -> Vec<HookRequest> {
        let deadline = Instant::now() + within;
        loop {
            let r = self.requests();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook got {} requests, expected {n}: {:?}",
                r.len(),
                r.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn answer(reply: HookReply) -> axum::response::Response {
    match reply {
        HookReply::Json(v) => axum::Json(v).into_response(),
        HookReply::Status(s) => (
            StatusCode::from_u16(s).unwrap(),
            "webhook says no".to_string(),
        )
            .into_response(),
        HookReply::After(d, r) => {
            tokio::time::sleep(d).await;
            Box::pin(answer(*r)).await
        }
    }
}

async fn on_hook(
    State(st): State<HookState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = {
        let mut seen = st.seen.lock().unwrap();
        seen.push(HookRequest {
            headers,
            raw: body.to_vec(),
            body: v.clone(),
            at: Instant::now(),
        });
        seen.len() - 1
    };
    answer((st.behavior)(n, &v)).await
}

async fn hook(behavior: impl Fn(usize, &Value) -> HookReply + Send + Sync + 'static) -> Hook {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let st = HookState {
        seen: seen.clone(),
        behavior: Arc::new(behavior),
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(on_hook))
        .with_state(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Hook { url, seen }
}

fn says(text: &str) -> HookReply {
    HookReply::Json(json!({ "say": text, "action": "continue" }))
}

// ---- helpers ------------------------------------------------------------------------------

const NUMBERS: &str = r#"numbers = ["+15550001", "+15550002", "+15550003", "+15550004", "+15550005", "+15550006", "+15550007", "+15550008", "+15550009", "+15550010", "+15550011", "+15550012"]"#;

fn bots_server(extra: &str, env: &[(&str, &str)]) -> Server {
    Server::start_with_config(env, &format!("[bots]\n{NUMBERS}\n{extra}\n"))
}

async fn create_bot(server: &Server, body: Value) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(server.http("/bots"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
    (status, r.json().await.unwrap())
}

async fn new_bot(server: &Server, hook: &Hook) -> Value {
    let (s, b) = create_bot(
        server,
        json!({ "goal": "Take restaurant reservations", "webhook": hook.url, "context": "Open 5PM-10PM." }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

/// A LibriVox clip as an 8 kHz mono 16-bit WAV (what streamdouble sends as µ-law), and its
/// reference text.
fn clip_8k(dir: &Path, index: usize) -> (PathBuf, String) {
    let (wav, text) = librivox()[index].clone();
    let (s, rate) = read_wav(&wav);
    let pcm = resample_clip(&s, rate, SampleRate::HZ_8000).unwrap();
    let path = dir.join(format!("clip{index}.wav"));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for x in pcm {
        w.write_sample(x).unwrap();
    }
    w.finalize().unwrap();
    (path, text)
}

/// Runs a streamdouble scenario against `url`; returns its JSON report.
async fn streamdouble(dir: &Path, yaml: &str, url: &str, out: Option<&Path>) -> Value {
    streamdouble_with(dir, yaml, url, out, &[]).await
}

/// [`streamdouble`] with more command-line options (network impairments).
async fn streamdouble_with(
    dir: &Path,
    yaml: &str,
    url: &str,
    out: Option<&Path>,
    extra: &[&str],
) -> Value {
    let bin = repo_root().join(".venv-peers/bin/streamdouble");
    assert!(
        bin.exists(),
        "streamdouble is missing: run `make test` (scripts/install-deps.sh test installs it)"
    );
    let scen = dir.join(format!("s{}.yaml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&scen, yaml).unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("scenario")
        .arg(&scen)
        .arg(url)
        .arg("--json")
        .args(extra);
    if let Some(o) = out {
        cmd.arg("--out").arg(o);
    }
    let o = tokio::time::timeout(SECS(180), cmd.current_dir(dir).output())
        .await
        .expect("streamdouble finished within 3 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let start = stdout.find('{').unwrap_or_else(|| {
        panic!(
            "no JSON from streamdouble (exit {:?}):\n{stdout}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    serde_json::from_str(&stdout[start..]).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn stream_url(server: &Server, bot: &Value) -> String {
    format!(
        "ws://{}/stream/{}",
        server.addr,
        bot["id"].as_str().unwrap()
    )
}

/// The stored turns of the only call a bot has had.
async fn turns_of(server: &Server, call_id: &str) -> Vec<voxgate::store::TurnRecord> {
    let store = SqliteStore::open(&server.db_url()).await.unwrap();
    let deadline = Instant::now() + SECS(20);
    loop {
        let t = store.turns(call_id).await.unwrap();
        if !t.is_empty() || Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn one_turn(clip: &Path) -> String {
    format!(
        "name: one turn\nsteps:\n  - wait: 0.5\n  - say: {}\n  - wait_for: {{event: audio, timeout: 60}}\n  - wait_for: {{event: quiet, timeout: 60}}\n",
        clip.display()
    )
}

// ---- tests --------------------------------------------------------------------------------

/// `POST/GET/DELETE /bots`: numbers from the pool, released on delete; 400 naming the bad field,
/// 404, 429 past 10 bots, 503 when no number is free; cloud voices fall back to the offline one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_rest_numbers_validation_and_limits() {
    let server = bots_server("", &[("VOXGATE_ASR__ENGINE", "none")]);
    let http = reqwest::Client::new();
    let (s, b) = create_bot(
        &server,
        json!({"goal": "Book dentist", "webhook": "https://clinic.example/api/callbot", "context": "Dr. Smith, Mon-Fri 9-5", "voice": "elevenlabs:emma"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (b["number"].as_str(), b["status"].as_str()),
        (Some("+15550001"), Some("active"))
    );
    assert_eq!(b["voice"], "elevenlabs:emma");
    assert_eq!(
        b["effective_voice"], "piper:joe",
        "no ElevenLabs account: the offline voice speaks"
    );
    assert!(b["secret"].as_str().unwrap().starts_with("whsec_"));
    assert!(b["created_at"].as_str().unwrap().ends_with('Z'));
    let id = b["id"].as_str().unwrap().to_string();

    let got: Value = http
        .get(server.http(&format!("/bots/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["webhook"], "https://clinic.example/api/callbot");
    assert_eq!(got["context"], "Dr. Smith, Mon-Fri 9-5");
    assert!(got.get("secret").is_none(), "the secret is shown once");
    let list: Value = http
        .get(server.http("/bots"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list,
        json!([{"id": id, "number": "+15550001", "goal": "Book dentist", "status": "active", "calls_today": 0}])
    );

    for (body, field) in [
        (json!({"webhook": "https://x.example/h"}), "`goal`"),
        (json!({"goal": "g"}), "`webhook`"),
        (
            json!({"goal": "g", "webhook": "ftp://x.example/h"}),
            "`webhook`",
        ),
        (json!({"goal": "g", "webhook": "not a url"}), "`webhook`"),
        (
            json!({"goal": 5, "webhook": "https://x.example/h"}),
            "`goal`",
        ),
        (
            json!({"goal": "g", "webhook": "https://x.example/h", "voice": "acme:bob"}),
            "`voice`",
        ),
        (
            json!({"goal": "g", "webhook": "https://x.example/h", "voice": "piper:amy"}),
            "`voice`",
        ),
        (
            json!({"goal": "g", "webhook": "https://x.example/h", "transfer_to": "my desk"}),
            "`transfer_to`",
        ),
    ] {
        let (s, e) = create_bot(&server, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {e}");
        assert_eq!(e["code"], "bad_request");
        assert!(
            e["message"].as_str().unwrap().contains(field),
            "{body}: {e}"
        );
    }
    let r = http
        .post(server.http("/bots"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "bad_request");

    // Ten bots per user, then 429.
    for _ in 1..10 {
        let (s, b) = create_bot(
            &server,
            json!({"goal": "g", "webhook": "https://x.example/h", "voice": "flite:slt"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["effective_voice"], "flite:slt");
    }
    let (s, e) = create_bot(
        &server,
        json!({"goal": "g", "webhook": "https://x.example/h"}),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{e}");
    assert_eq!(e["code"], "rate_limited");

    // Deleting frees the number for the next bot.
    let r = http
        .delete(server.http(&format!("/bots/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "Bot deleted"})
    );
    let r = http
        .delete(server.http(&format!("/bots/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let r = http.get(server.http("/bots/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let (s, b) = create_bot(
        &server,
        json!({"goal": "again", "webhook": "https://x.example/h"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["number"], "+15550001");
}

/// A pool with fewer numbers than bots: 503 once every number is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_without_a_free_number_get_503() {
    let server = Server::start_with_config(
        &[("VOXGATE_ASR__ENGINE", "none")],
        "[bots]\nnumbers = [\"+15559990\"]\n",
    );
    let (s, _) = create_bot(
        &server,
        json!({"goal": "g", "webhook": "http://127.0.0.1:9/h"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = create_bot(
        &server,
        json!({"goal": "g", "webhook": "http://127.0.0.1:9/h"}),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert_eq!(e["code"], "no_numbers");
}

/// An `application/x-www-form-urlencoded` body, as Twilio posts.
fn form(params: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

fn twilio_signature_python(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    // An independent implementation of Twilio's documented scheme.
    let script = "import sys,hmac,hashlib,base64,json\nt,u,p=sys.argv[1],sys.argv[2],json.loads(sys.argv[3])\ns=u+''.join(k+p[k] for k in sorted(p))\nprint(base64.b64encode(hmac.new(t.encode(),s.encode(),hashlib.sha1).digest()).decode())";
    let p: serde_json::Map<String, Value> = params
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let o = std::process::Command::new("python3")
        .args(["-c", script, token, url, &Value::Object(p).to_string()])
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// `POST /voice?bot_id=` returns TwiML connecting the call to `/stream/{id}` at the public URL;
/// with an auth token configured, only requests signed as Twilio signs them are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twiml_voice_with_twilio_signatures() {
    let token = "twilio-test-token";
    let server = bots_server(
        &format!("[twilio]\nauth_token = \"{token}\"\n"),
        &[
            ("VOXGATE_ASR__ENGINE", "none"),
            ("VOXGATE_PUBLIC_URL", "https://voxgate.example.com"),
        ],
    );
    let (_, bot) = create_bot(
        &server,
        json!({"goal": "g", "webhook": "http://127.0.0.1:9/h"}),
    )
    .await;
    let id = bot["id"].as_str().unwrap();
    let params = [
        ("CallSid", "CA0123456789abcdef0123456789abcdef"),
        ("From", "+14155550100"),
        ("To", "+15550001"),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("CallStatus", "ringing"),
    ];
    let post = |path: String, sig: Option<String>| {
        let mut r = reqwest::Client::new()
            .post(server.http(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&params));
        if let Some(s) = sig {
            r = r.header("X-Twilio-Signature", s);
        }
        r.send()
    };
    let path = format!("/voice?bot_id={id}");
    let sig = twilio_signature_python(
        token,
        &format!("https://voxgate.example.com{path}"),
        &params,
    );
    let r = post(path.clone(), Some(sig.clone())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/xml"));
    let xml = r.text().await.unwrap();
    assert!(
        xml.contains(&format!(
            "<Connect><Stream url=\"wss://voxgate.example.com/stream/{id}\">"
        )),
        "{xml}"
    );
    assert!(
        xml.contains("<Redirect method=\"POST\">https://voxgate.example.com/voice/next"),
        "{xml}"
    );

    let r = post(path.clone(), None).await.unwrap();
    assert_eq!(r.status(), 403, "no signature");
    let mut tampered = params.to_vec();
    tampered[2] = ("To", "+15559999");
    let other_params = twilio_signature_python(
        token,
        &format!("https://voxgate.example.com{path}"),
        &tampered,
    );
    let r = post(path.clone(), Some(other_params)).await.unwrap();
    assert_eq!(r.status(), 403, "a signature of other parameters");
    let other_url =
        twilio_signature_python(token, &format!("https://evil.example.com{path}"), &params);
    assert_eq!(
        post(path.clone(), Some(other_url)).await.unwrap().status(),
        403,
        "another URL"
    );
    let wrong_token = twilio_signature_python(
        "other",
        &format!("https://voxgate.example.com{path}"),
        &params,
    );
    assert_eq!(post(path, Some(wrong_token)).await.unwrap().status(), 403);

    // An unknown bot: TwiML that says so and hangs up.
    let path = "/voice?bot_id=nope".to_string();
    let sig = twilio_signature_python(
        token,
        &format!("https://voxgate.example.com{path}"),
        &params,
    );
    let xml = post(path, Some(sig)).await.unwrap().text().await.unwrap();
    assert!(xml.contains("<Say>") && xml.contains("<Hangup/>"), "{xml}");
    // After the stream: no transfer was asked for, so Twilio hangs up.
    let path = "/voice/next?bot_id=x".to_string();
    let sig = twilio_signature_python(
        token,
        &format!("https://voxgate.example.com{path}"),
        &params,
    );
    let xml = post(path, Some(sig)).await.unwrap().text().await.unwrap();
    assert!(xml.contains("<Hangup/>"), "{xml}");
}

/// The whole seed-004 flow over a Twilio Media Stream: LibriVox speech → the webhook gets the
/// utterance (WER ≤ 10 %), signed, with an idempotency key → the bot speaks the reply, which
/// voxgate's own ASR transcribes back from streamdouble's recording; turn, call and transcript
/// are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_stream_call_runs_the_webhook_loop() {
    let server = bots_server("", &[]);
    let reply = "Your table for four is booked for seven o'clock tonight.";
    let hook = hook(move |_, _| says(reply)).await;
    let bot = new_bot(&server, &hook).await;
    let dir = tempfile::tempdir().unwrap();
    let (clip, reference) = clip_8k(dir.path(), 0);
    let out = dir.path().join("reply.wav");
    let report = streamdouble(
        dir.path(),
        &one_turn(&clip),
        &stream_url(&server, &bot),
        Some(&out),
    )
    .await;
    assert_eq!(report["violations"], json!([]), "{report:#}");
    assert!(
        report["time_to_first_audio_ms"].as_f64().is_some(),
        "{report:#}"
    );
    assert!(
        report["marks_echoed"].as_u64().unwrap() > 0,
        "playout marks: {report:#}"
    );

    let reqs = hook.wait_requests(1, SECS(10)).await;
    let r = &reqs[0];
    assert_eq!(r.body["bot_id"], bot["id"]);
    assert_eq!(r.body["history"], json!([]));
    assert_eq!(r.body["llm_suggestion"], Value::Null, "no [llm] configured");
    assert!(r.body["timestamp"].as_str().unwrap().ends_with('Z'));
    let heard = r.body["user_text"].as_str().unwrap();
    let w = wer(&reference, heard);
    eprintln!("the webhook heard {heard:?} (WER {:.1} %)", w * 100.0);
    assert!(w <= 0.10, "WER {:.1} %: {heard}", w * 100.0);
    // The signature: HMAC-SHA256 of "TIMESTAMP.BODY" with the bot's secret.
    let ts = r.headers["x-voxgate-timestamp"].to_str().unwrap();
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(bot["secret"].as_str().unwrap().as_bytes())
            .unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&r.raw);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(r.headers["x-voxgate-signature"].to_str().unwrap(), want);
    let call_id = r.body["call_id"].as_str().unwrap().to_string();
    assert_eq!(
        r.headers["idempotency-key"].to_str().unwrap(),
        format!("{call_id}-1")
    );

    let back = transcribe(&server, &out).await;
    let w = wer(reply, &back);
    eprintln!(
        "streamdouble recorded the bot saying {back:?} (WER {:.1} %)",
        w * 100.0
    );
    assert!(w <= 0.25, "the reply came back as {back:?}");

    let turns = turns_of(&server, &call_id).await;
    assert_eq!(turns.len(), 1, "{turns:?}");
    assert_eq!(turns[0].user_text, heard);
    assert_eq!(turns[0].reply.as_deref(), Some(reply));
    assert_eq!(turns[0].action.as_deref(), Some("continue"));
    assert!(turns[0].webhook_ms.is_some() && turns[0].error_code.is_none());
    let store = SqliteStore::open(&server.db_url()).await.unwrap();
    let call = store
        .call(&call_id)
        .await
        .unwrap()
        .expect("the call is stored");
    assert_eq!(call.transport, "twilio");
    assert_eq!(call.callee.as_deref(), Some("+15550001"));
    assert_eq!(store.transcript(&call_id).await.unwrap().len(), 1);
    let list: Value = reqwest::get(server.http("/bots"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["calls_today"], 1);
}

/// The caller talks over a long reply: the bot stops and sends `clear`, and the interrupting
/// speech becomes the next turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_on_a_media_stream_sends_clear() {
    let server = bots_server("", &[]);
    let long = "Thank you for calling the restaurant. We are open from five in the evening until ten at night, every day of the week. We have tables for two, four and six people. Please tell me the day, the time and the number of guests, and I will check what we have for you.";
    let hook = hook(move |_, _| says(long)).await;
    let bot = new_bot(&server, &hook).await;
    let dir = tempfile::tempdir().unwrap();
    let (clip1, _) = clip_8k(dir.path(), 1);
    let (clip2, reference2) = clip_8k(dir.path(), 2);
    let yaml = format!(
        "name: barge in\nsteps:\n  - say: {}\n  - wait_for: {{event: audio, timeout: 60}}\n  - wait: 1.5\n  - say: {}\n  - expect: clear\n  - wait: 4\n",
        clip1.display(),
        clip2.display()
    );
    let report = streamdouble(dir.path(), &yaml, &stream_url(&server, &bot), None).await;
    assert!(
        report["clears_received"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    assert_eq!(report["violations"], json!([]), "{report:#}");
    let expectations = report["expectations"].as_array().unwrap();
    assert!(
        expectations.iter().all(|e| e["passed"] == true),
        "{report:#}"
    );
    let reqs = hook.wait_requests(2, SECS(30)).await;
    let second = reqs[1].body["user_text"].as_str().unwrap();
    assert!(
        wer(&reference2, second) <= 0.25,
        "the interrupting speech: {second}"
    );
    assert_eq!(reqs[1].body["history"][0]["role"], "user");
    assert_eq!(reqs[1].body["history"][1]["role"], "bot");
}

/// `action: hangup`: the bot says goodbye, then sends `stop` and closes the stream. The caller's
/// line loses 5 % of its audio (streamdouble shows it as jumps in `media.timestamp`): voxgate fills
/// the gaps with silence and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hangup_action_ends_the_stream_with_stop() {
    let server = bots_server("", &[]);
    let hook =
        hook(|_, _| HookReply::Json(json!({"say": "Thank you, goodbye.", "action": "hangup"})))
            .await;
    let bot = new_bot(&server, &hook).await;
    let dir = tempfile::tempdir().unwrap();
    let (clip, _) = clip_8k(dir.path(), 1);
    let yaml = format!(
        "name: hang up\nsteps:\n  - say: {}\n  - wait_for: {{event: audio, timeout: 60}}\n  - wait: 20\n",
        clip.display()
    );
    let out = dir.path().join("bye.wav");
    let report = streamdouble_with(
        dir.path(),
        &yaml,
        &stream_url(&server, &bot),
        Some(&out),
        &["--packet-loss", "0.05", "--chaos-seed", "7"],
    )
    .await;
    assert_eq!(report["closed_by"], "agent", "{report:#}");
    assert!(report["closed_early"] == true, "{report:#}");
    assert!(
        report["unknown_events"]
            .as_array()
            .unwrap()
            .contains(&json!("stop")),
        "seed 004's `stop` before the close: {report:#}"
    );
    assert!(
        report["audio_received_ms"].as_f64().unwrap() > 500.0,
        "the goodbye was sent first"
    );
    let reqs = hook.requests();
    let call_id = reqs[0].body["call_id"].as_str().unwrap();
    let store = SqliteStore::open(&server.db_url()).await.unwrap();
    let deadline = Instant::now() + SECS(10);
    let call = loop {
        let c = store.call(call_id).await.unwrap().unwrap();
        if c.ended_at.is_some() || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        call.hangup_reason.as_deref(),
        Some("autohangup"),
        "{call:?}"
    );
    assert_eq!(
        turns_of(&server, call_id).await[0].action.as_deref(),
        Some("hangup")
    );
}

/// `action: transfer` on a Twilio stream: the bot says its line, closes the stream, and Twilio's
/// `<Redirect>` to `/voice/next` gets `<Dial>` to the target. The webhook's `llm_suggestion` comes
/// from the configured OpenAI-compatible endpoint (a double speaking the chat-completions format).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_on_a_stream_and_an_llm_suggestion() {
    // The chat-completions endpoint.
    let seen_llm: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = seen_llm.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |axum::Json(req): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(req);
                axum::Json(json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "Offer to connect them to a person."}}]
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let llm = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let server = bots_server(
        &format!("[llm]\nbase_url = \"{llm}\"\nmodel = \"test-model\"\napi_key = \"sk-test\"\n"),
        &[],
    );
    let hook = hook(|_, _| {
        HookReply::Json(json!({"say": "Let me put you through.", "action": "transfer", "transfer_to": "+15550100"}))
    })
    .await;
    let bot = new_bot(&server, &hook).await;
    let dir = tempfile::tempdir().unwrap();
    let (clip, _) = clip_8k(dir.path(), 1);
    let yaml = format!(
        "name: transfer\nsteps:\n  - say: {}\n  - wait_for: {{event: audio, timeout: 60}}\n  - wait: 15\n",
        clip.display()
    );
    let report = streamdouble(dir.path(), &yaml, &stream_url(&server, &bot), None).await;
    assert_eq!(report["closed_by"], "agent", "{report:#}");
    let reqs = hook.requests();
    assert_eq!(
        reqs[0].body["llm_suggestion"],
        "Offer to connect them to a person."
    );
    let llm_req = seen_llm.lock().unwrap()[0].clone();
    assert_eq!(llm_req["model"], "test-model");
    assert!(llm_req["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("Take restaurant reservations"));
    let call_id = reqs[0].body["call_id"].as_str().unwrap();
    let xml = reqwest::Client::new()
        .post(server.http("/voice/next?bot_id=x"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("CallSid", call_id)]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(xml.contains("<Dial>+15550100</Dial>"), "{xml}");
    let t = turns_of(&server, call_id).await;
    assert_eq!(t[0].action.as_deref(), Some("transfer"));
    assert_eq!(
        t[0].llm_suggestion.as_deref(),
        Some("Offer to connect them to a person.")
    );
    let store = SqliteStore::open(&server.db_url()).await.unwrap();
    let deadline = Instant::now() + SECS(10);
    loop {
        let c = store.call(call_id).await.unwrap().unwrap();
        if let Some(r) = c.hangup_reason {
            assert_eq!(r, "transferred");
            break;
        }
        assert!(Instant::now() < deadline, "the call did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A webhook that takes 5 s: after 3 s the bot apologises, the turn is stored with error 408,
/// and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_gets_an_apology_and_a_408_turn() {
    let server = bots_server("apology = \"Sorry, one moment please.\"", &[]);
    let hook = hook(|_, _| HookReply::After(SECS(5), Box::new(says("Too late.")))).await;
    let bot = new_bot(&server, &hook).await;
    let dir = tempfile::tempdir().unwrap();
    let (clip, _) = clip_8k(dir.path(), 1);
    let out = dir.path().join("apology.wav");
    let report = streamdouble(
        dir.path(),
        &one_turn(&clip),
        &stream_url(&server, &bot),
        Some(&out),
    )
    .await;
    assert!(
        report["time_to_first_audio_ms"].as_f64().is_some(),
        "{report:#}"
    );
    let reqs = hook.wait_requests(1, SECS(5)).await;
    let call_id = reqs[0].body["call_id"].as_str().unwrap();
    let t = turns_of(&server, call_id).await;
    assert_eq!(t[0].error_code, Some(408), "{t:?}");
    assert_eq!(t[0].reply.as_deref(), Some("Sorry, one moment please."));
    let ms = t[0].webhook_ms.unwrap();
    assert!((2900..4500).contains(&ms), "the webhook had 3 s: {ms} ms");
    let heard = transcribe(&server, &out).await;
    assert!(wer("Sorry, one moment please.", &heard) <= 0.4, "{heard}");
}

/// Failing webhooks: a 500 is retried with the same Idempotency-Key and then apologised for;
/// an answer without `say` is an error too; a 503 followed by a good answer is spoken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_errors_retries_and_idempotency() {
    let server = bots_server("", &[("VOXGATE_BOTS__WEBHOOK_TIMEOUT_MS", "3000")]);
    let dir = tempfile::tempdir().unwrap();
    let (clip, _) = clip_8k(dir.path(), 1);
    let cases: Vec<Case> = vec![
        (
            "always 500",
            Box::new(|_, _| HookReply::Status(500)),
            3,
            Some(500),
        ),
        (
            "no say",
            Box::new(|_, _| HookReply::Json(json!({"action": "continue"}))),
            1,
            Some(502),
        ),
        (
            "503 then ok",
            Box::new(|n, _| {
                if n == 0 {
                    HookReply::Status(503)
                } else {
                    says("Second time lucky.")
                }
            }),
            2,
            None,
        ),
        ("404", Box::new(|_, _| HookReply::Status(404)), 1, Some(404)),
    ];
    for (name, behavior, attempts, error) in cases {
        let hook = hook(behavior).await;
        let bot = new_bot(&server, &hook).await;
        streamdouble(
            dir.path(),
            &one_turn(&clip),
            &stream_url(&server, &bot),
            None,
        )
        .await;
        let reqs = hook.wait_requests(attempts, SECS(10)).await;
        assert_eq!(reqs.len(), attempts, "{name}");
        let keys: Vec<&str> = reqs
            .iter()
            .map(|r| r.headers["idempotency-key"].to_str().unwrap())
            .collect();
        assert!(
            keys.iter().all(|k| *k == keys[0]),
            "{name}: retries carry one key: {keys:?}"
        );
        assert!(
            reqs.iter().all(|r| r.raw == reqs[0].raw),
            "{name}: retries repeat the body"
        );
        let call_id = reqs[0].body["call_id"].as_str().unwrap();
        let t = turns_of(&server, call_id).await;
        assert_eq!(t[0].error_code, error, "{name}: {t:?}");
        if error.is_some() {
            assert!(
                t[0].error.is_some() && t[0].reply.is_some(),
                "{name}: apology spoken: {t:?}"
            );
        } else {
            assert_eq!(t[0].reply.as_deref(), Some("Second time lucky."));
        }
    }
}

/// Utterances that come while a webhook request is in flight are merged, in order, into the
/// next turn; none is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utterances_during_a_request_are_merged_into_one_turn() {
    let server = bots_server("webhook_timeout_ms = 20000", &[]);
    let hook = hook(|n, _| {
        if n == 0 {
            HookReply::After(SECS(13), Box::new(says("Okay.")))
        } else {
            says("Noted.")
        }
    })
    .await;
    let bot = new_bot(&server, &hook).await;
    let dir = tempfile::tempdir().unwrap();
    let clips: Vec<(PathBuf, String)> = [1, 2, 4].iter().map(|&i| clip_8k(dir.path(), i)).collect();
    let yaml = format!(
        "name: three utterances\nsteps:\n  - say: {}\n  - wait: 2.5\n  - say: {}\n  - wait: 1.2\n  - say: {}\n  - wait: 2\n  - wait_for: {{event: audio, timeout: 60}}\n  - wait: 3\n",
        clips[0].0.display(),
        clips[1].0.display(),
        clips[2].0.display()
    );
    streamdouble(dir.path(), &yaml, &stream_url(&server, &bot), None).await;
    let reqs = hook.wait_requests(2, SECS(30)).await;
    assert_eq!(
        reqs.len(),
        2,
        "{:?}",
        reqs.iter()
            .map(|r| r.body["user_text"].clone())
            .collect::<Vec<_>>()
    );
    assert!(wer(&clips[0].1, reqs[0].body["user_text"].as_str().unwrap()) <= 0.2);
    let merged = reqs[1].body["user_text"].as_str().unwrap();
    let want = format!("{} {}", clips[1].1, clips[2].1);
    assert!(
        wer(&want, merged) <= 0.2,
        "merged turn {merged:?} vs {want:?}"
    );
    assert!(reqs[1].at.duration_since(reqs[0].at) >= SECS(13));
}

/// `bots.calls_per_day`: the next call is refused: the stream's upgrade gets 429 with
/// Retry-After, TwiML says the refusal and hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_call_limit() {
    let server = bots_server("calls_per_day = 1", &[("VOXGATE_ASR__ENGINE", "none")]);
    let hook = hook(|_, _| says("Hi.")).await;
    let bot = new_bot(&server, &hook).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: quiet\nsteps:\n  - wait: 1\n";
    let report = streamdouble(dir.path(), yaml, &stream_url(&server, &bot), None).await;
    assert_eq!(report["violations"], json!([]), "{report:#}");
    let e = tokio_tungstenite::connect_async(stream_url(&server, &bot))
        .await
        .unwrap_err();
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status(), 429);
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=86_400).contains(&retry));
        }
        other => panic!("expected 429, got {other}"),
    }
    let xml = reqwest::Client::new()
        .post(server.http(&format!("/voice?bot_id={}", bot["id"].as_str().unwrap())))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("CallSid", "CA1")]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        xml.contains("limit of calls for today") && xml.contains("<Hangup/>"),
        "{xml}"
    );
    let list: Value = reqwest::get(server.http("/bots"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list[0]["calls_today"].as_i64().unwrap() >= 1);
}

/// A bot works from any SIP phone: SIPp dials the bot's number and plays recorded speech; the
/// webhook gets the utterance, the reply is spoken, the turn is stored with the SIP call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_dials_a_bots_number() {
    assert!(
        Path::new("/usr/bin/sipp").exists(),
        "SIPp is missing: run `make test`"
    );
    let server = bots_server("", &[]);
    let hook = hook(|_, _| says("Thanks, I heard you.")).await;
    let bot = new_bot(&server, &hook).await;
    let dir = tempfile::tempdir().unwrap();
    let scen = dir.path().join("uac.xml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/uac_audio.xml"),
    )
    .unwrap()
    .replace("@SPEECH@", "/usr/share/sip-tester/g711a.pcap")
    .replace("@DTMF1@", "/usr/share/sip-tester/dtmf_2833_1.pcap")
    .replace("@DTMF2@", "/usr/share/sip-tester/dtmf_2833_pound.pcap");
    std::fs::write(&scen, text).unwrap();
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let number = bot["number"].as_str().unwrap().to_string();
    let sip = server.sip_addr.clone();
    let sipp = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sipp")
            .args([&sip, "-sf"])
            .arg(&scen)
            .args([
                "-s",
                &number,
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-nostdin",
                "-m",
                "1",
            ])
            .args(["-timeout", "60s", "-timeout_error", "-p", &port.to_string()])
            .current_dir(scen.parent().unwrap())
            .output()
            .unwrap()
    });
    let reqs = hook.wait_requests(1, SECS(60)).await;
    let heard = reqs[0].body["user_text"].as_str().unwrap().to_string();
    assert!(heard.split_whitespace().count() >= 3, "{heard}");
    let out = sipp.await.unwrap();
    assert!(
        out.status.success(),
        "SIPp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let call_id = reqs[0].body["call_id"].as_str().unwrap().to_string();
    let t = turns_of(&server, &call_id).await;
    assert_eq!(t[0].reply.as_deref(), Some("Thanks, I heard you."));
    let store = SqliteStore::open(&server.db_url()).await.unwrap();
    let call = store.call(&call_id).await.unwrap().unwrap();
    assert_eq!(call.transport, "sip");
    assert_eq!(call.callee.as_deref(), Some("+15550001"));
}

/// The README's bot flow: voxgate's own client dials the bot's number over SIP and speaks a line;
/// the webhook hears it and the client hears the bot's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_bot_flow_with_the_cli() {
    let server = bots_server("", &[]);
    let hook = hook(|_, v| {
        if v["user_text"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("table")
        {
            says("For how many people?")
        } else {
            says("Sorry, I didn't get that.")
        }
    })
    .await;
    let bot = new_bot(&server, &hook).await;
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .args([
            "call",
            &server.sip_ws_url(""),
            "--callee",
            &format!(
                "sip:{}@{}",
                bot["number"].as_str().unwrap(),
                server.sip_addr
            ),
            "--tts",
            "Hello, I would like a table for four at seven tonight.",
            "--wait",
            "8",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let reqs = hook.wait_requests(1, SECS(5)).await;
    let heard = reqs[0].body["user_text"].as_str().unwrap();
    assert!(
        wer(
            "Hello, I would like a table for four at seven tonight.",
            heard
        ) <= 0.25,
        "{heard}"
    );
    let transcript = stderr
        .lines()
        .find_map(|l| l.strip_prefix("transcript: "))
        .unwrap_or_else(|| panic!("no transcript line:\n{stdout}\n{stderr}"));
    assert!(
        wer("For how many people?", transcript) <= 0.25,
        "the client heard {transcript:?}"
    );
}
