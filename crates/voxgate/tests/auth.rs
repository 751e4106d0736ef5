//! Issue 8: API keys, JWTs, tenant isolation and limits, against the real binary.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const NO_ASR: [(&str, &str); 1] = [("VOXGATE_ASR__ENGINE", "none")];

async fn get(server: &Server, path: &str, key: Option<&str>) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new().get(server.http(path));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn post(server: &Server, path: &str, key: Option<&str>, body: Value) -> reqwest::Response {
    let mut r = reqwest::Client::new().post(server.http(path)).json(&body);
    if let Some(k) = key {
        r = r.header("X-API-Key", k);
    }
    r.send().await.unwrap()
}

/// The HTTP status of a refused WebSocket upgrade; `None` when it was accepted.
async fn ws_refused(url: &str) -> Option<u16> {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => None,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Some(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_jwts_and_error_shapes() {
    let secret = "test-jwt-secret-0123456789";
    let server = Server::start_with_config(&NO_ASR, "");
    // Without any key, the server is open (loopback) and acts as the local admin.
    assert_eq!(get(&server, "/call/lists", None).await.0, StatusCode::OK);
    let alice = server.cli(&["keys", "create", "--user", "alice", "--label", "ci"]);
    assert!(alice.starts_with("vg_"), "{alice}");
    // From the first key on, every protected route needs one (the running server notices).
    for path in ["/call/lists", "/bots", "/iceservers"] {
        let (s, body) = get(&server, path, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["code"], "unauthorized", "{path}: {body}");
        assert!(body["message"].is_string());
        let (s, _) = get(&server, path, Some("vg_0123456789ab_wrong")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        let (s, _) = get(&server, path, Some(&alice)).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
    let r = post(&server, "/call/kill/x", None, json!({})).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Seed 003's envelope.
    let r = post(&server, "/pbx/call", None, json!({"phoneNumber": "0896"})).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 401, "{body}");
    assert_eq!(body["errors"], "Authentication token is required");
    assert_eq!(body["data"], Value::Null);
    let r = post(
        &server,
        "/pbx/hangup",
        Some("nope"),
        json!({"sessionId": "x"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Public routes.
    assert_eq!(get(&server, "/health", None).await.0, StatusCode::OK);
    // WebSocket upgrades: header or ?token=.
    assert_eq!(ws_refused(&server.ws_url("")).await, Some(401));
    assert_eq!(
        ws_refused(&server.ws_url("?token=vg_0123456789ab_x")).await,
        Some(401)
    );
    let c = Client::connect(&server.ws_url(&format!("?token={alice}&dump=false"))).await;
    c.close().await;
    // Revoked: refused at once by the running server.
    let id = &alice[3..15];
    server.cli(&["keys", "revoke", id]);
    let (s, _) = get(&server, "/call/lists", Some(&alice)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let listed = server.cli(&["keys", "list"]);
    assert!(
        listed.contains(id) && listed.contains("alice") && !listed.contains(&alice),
        "{listed}"
    );
    drop(server);

    // JWTs (HS256, `sub`, `exp`).
    let server =
        Server::start_with_config(&NO_ASR, &format!("[auth]\njwt_secret = \"{secret}\"\n"));
    let now = chrono::Utc::now().timestamp();
    let sign = |key: &str, exp: i64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "bob", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let good = sign(secret, now + 600);
    assert_eq!(get(&server, "/bots", Some(&good)).await.0, StatusCode::OK);
    let (s, body) = get(&server, "/bots", Some(&sign("other-secret", now + 600))).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (s, body) = get(&server, "/bots", Some(&sign(secret, now - 10))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert_eq!(
        get(&server, "/bots", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_only_their_own_calls_and_bots() {
    let server = Server::start_with_config(&NO_ASR, "");
    let alice = server.cli(&["keys", "create", "--user", "alice"]);
    let bob = server.cli(&["keys", "create", "--user", "bob"]);
    let admin = server.cli(&["keys", "create", "--user", "ops", "--admin"]);
    // A bot of alice's.
    let r = post(
        &server,
        "/bots",
        Some(&alice),
        json!({"goal": "test", "webhook": "http://127.0.0.1:9/hook"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let bot: Value = r.json().await.unwrap();
    let bot_id = bot["id"].as_str().unwrap().to_string();
    let (s, list) = get(&server, "/bots", Some(&bob)).await;
    assert_eq!((s, list.as_array().unwrap().len()), (StatusCode::OK, 0));
    let (s, body) = get(&server, &format!("/bots/{bot_id}"), Some(&bob)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let r = reqwest::Client::new()
        .delete(server.http(&format!("/bots/{bot_id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        get(&server, &format!("/bots/{bot_id}"), Some(&alice))
            .await
            .0,
        StatusCode::OK
    );
    let (_, all) = get(&server, "/bots", Some(&admin)).await;
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");

    // A call of alice's.
    let mut c =
        Client::connect(&server.ws_url(&format!("?token={alice}&id=alice-call&dump=false"))).await;
    c.send(json!({"command": "invite", "option": {"codec": "pcm"}}))
        .await;
    c.wait_event("answer", Duration::from_secs(10)).await;
    let ids = |v: &Value| -> Vec<String> {
        v["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, l) = get(&server, "/call/lists", Some(&alice)).await;
    assert_eq!(ids(&l), vec!["alice-call"]);
    let (_, l) = get(&server, "/call/lists", Some(&bob)).await;
    assert!(ids(&l).is_empty(), "{l}");
    let r = post(&server, "/call/kill/alice-call", Some(&bob), json!({})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (_, l) = get(&server, "/call/lists", Some(&admin)).await;
    assert_eq!(ids(&l), vec!["alice-call"]);
    assert_eq!(l["calls"][0]["user"], "alice");
    let r = post(&server, "/call/kill/alice-call", Some(&admin), json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = c.wait_event("hangup", Duration::from_secs(10)).await;
    assert_eq!(h["reason"], "killed");
    // The stored call belongs to alice.
    let store = voxgate::store::sqlite::SqliteStore::open(&server.db_url())
        .await
        .unwrap();
    let rec = voxgate::store::Store::call(&store, "alice-call")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.user_id.as_deref(), Some("alice"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_and_origination_limits_survive_a_restart() {
    // A trunk nobody answers: originations are counted, the calls fail on their own.
    let toml = "[[sip.trunks]]\nname = \"dead\"\nhost = \"127.0.0.1:9\"\n";
    let server = Server::start_with_config(&NO_ASR, toml);
    let alice = server.cli(&["keys", "create", "--user", "alice"]);
    // 3 concurrent streaming connections, the 4th refused.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect(&server.ws_url(&format!("?token={alice}&dump=false"))).await);
    }
    let url = server.ws_url(&format!("?token={alice}&dump=false"));
    assert_eq!(ws_refused(&url).await, Some(429));
    open.pop().unwrap().close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    open.push(Client::connect(&url).await);
    for c in open {
        c.close().await;
    }

    // Originations: 5 per minute. Stay inside one UTC minute.
    let sec = chrono::Timelike::second(&chrono::Utc::now());
    if sec > 40 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - sec))).await;
    }
    for i in 0..5 {
        let r = post(
            &server,
            "/pbx/call",
            Some(&alice),
            json!({"phoneNumber": "+15550100"}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "call {i}: {:?}", r.text().await);
    }
    let r = post(
        &server,
        "/pbx/call",
        Some(&alice),
        json!({"phoneNumber": "+15550100"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 429, "{body}");
    // The count is in the store: a restarted server still refuses.
    let dir = server.stop();
    let server = Server::start_in(dir, &NO_ASR, "");
    let r = post(
        &server,
        "/pbx/call",
        Some(&alice),
        json!({"phoneNumber": "+15550100"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Bad numbers are 400 in the seed's words.
    let r = post(
        &server,
        "/pbx/call",
        Some(&alice),
        json!({"phoneNumber": "call me"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"], "Invalid phone number format");
}

#[tokio::test(flavor = "multi_thread")]
async fn public_bind_needs_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env("VOXGATE_ASR__ENGINE", "none")
        .env("VOXGATE_SIP__ENABLED", "false")
        .arg("--models-dir")
        .arg(repo_root().join("models"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("non-loopback") && err.contains("keys create"),
        "{err}"
    );
}

/// `play` on defaults: no loopback/private URLs (SSRF), no files outside the media directory.
#[tokio::test(flavor = "multi_thread")]
async fn play_is_confined_by_default() {
    let server = Server::start_with_config(&NO_ASR, "");
    let media = server.data_dir.path().join("media");
    std::fs::copy(
        format!("{LIBRIVOX}/sense_and_sensibility_01_austen_64kb-0880.wav"),
        media.join("clip.wav"),
    )
    .unwrap();
    let mut c = Client::connect(&server.ws_url("?dump=false")).await;
    c.send(json!({"command": "invite", "option": {"codec": "pcm"}}))
        .await;
    c.wait_event("answer", Duration::from_secs(10)).await;
    let plays = [
        format!("http://{}/health", server.addr),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "/etc/passwd".to_string(),
        "../voxgate.db".to_string(),
    ];
    for (i, url) in plays.iter().enumerate() {
        c.send(json!({"command": "play", "url": url})).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let play_errors = |c: &Client| -> Vec<Value> {
            c.events_named("error")
                .into_iter()
                .filter(|e| e["sender"] == "play")
                .collect()
        };
        while play_errors(&c).len() <= i && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let errs = play_errors(&c);
        assert_eq!(errs.len(), i + 1, "{errs:#?}");
        let msg = errs[i]["error"].as_str().unwrap();
        assert!(
            msg.contains("not a public address") || msg.contains("media directory"),
            "{url}: {msg}"
        );
    }
    // A file in the media directory plays.
    c.send(json!({"command": "play", "url": "clip.wav", "playId": "ok"}))
        .await;
    c.wait_for("the clip", Duration::from_secs(10), |e| {
        e["event"] == "trackStart" && e["trackId"] == "ok"
    })
    .await;
}

/// Sum of a metric's samples whose line contains all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/metrics` is Prometheus text whose counters and latency histograms move when a call runs.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_when_a_call_runs() {
    let server = Server::start();
    let scrape = || async {
        let r = reqwest::get(server.http("/metrics")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        r.text().await.unwrap()
    };
    let before = scrape().await;
    let (wav, _) = librivox().into_iter().next().unwrap();
    let text = transcribe(&server, &wav).await;
    assert!(!text.is_empty());
    // A TTS reply too, for its first-audio latency.
    let mut c = Client::connect(&server.ws_url("?dump=false")).await;
    c.send(json!({"command": "invite", "option": {"codec": "pcm"}}))
        .await;
    c.wait_event("answer", Duration::from_secs(10)).await;
    c.send(json!({"command": "tts", "text": "Hello there.", "autoHangup": true}))
        .await;
    c.wait_event("hangup", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = scrape().await;
    let moved = |name: &str, labels: &[&str]| {
        let (a, b) = (metric(&before, name, labels), metric(&after, name, labels));
        assert!(b > a, "{name}{labels:?} did not move: {a} -> {b}\n{after}");
    };
    moved(
        "voxgate_calls_total",
        &["transport=\"websocket\"", "user=\"local\""],
    );
    moved("voxgate_call_setups_total", &["result=\"answered\""]);
    moved("voxgate_hangups_total", &[]);
    moved("voxgate_speaking_delay_seconds_count", &[]);
    moved("voxgate_asr_final_delay_seconds_count", &[]);
    moved("voxgate_asr_final_delay_seconds_bucket", &["le=\"10\""]);
    moved("voxgate_tts_first_audio_seconds_count", &[]);
    assert_eq!(metric(&after, "voxgate_calls_active", &[]), 0.0, "{after}");
    // With authentication on, only an admin key may scrape.
    let user = server.cli(&["keys", "create", "--user", "u"]);
    let admin = server.cli(&["keys", "create", "--user", "ops", "--admin"]);
    assert_eq!(
        get(&server, "/metrics", Some(&user)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&server, "/metrics", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let r = reqwest::Client::new()
        .get(server.http("/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// `/openapi.json` is OpenAPI 3.1 that schemathesis (PyPI) accepts, and fuzzing every documented
/// route with an admin key finds no 5xx, no undocumented status or content type and no body
/// that contradicts the document. Swagger UI is served at `/docs`.
#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_holds_under_schemathesis() {
    let st = repo_root().join(".venv-peers/bin/schemathesis");
    assert!(
        st.exists(),
        "schemathesis is missing: run `make test` (scripts/install-deps.sh test)"
    );
    // A trunk nobody answers: /pbx/call and /outbound-call place calls that fail on their own.
    let toml = "[[sip.trunks]]\nname = \"dead\"\nhost = \"127.0.0.1:9\"\nkeepalive_secs = 0\n";
    let server = Server::start_with_config(&NO_ASR, toml);
    let admin = server.cli(&["keys", "create", "--user", "ops", "--admin"]);
    let (s, doc) = get(&server, "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/call/lists",
        "/call/kill/{id}",
        "/iceservers",
        "/health",
        "/metrics",
        "/bots",
        "/bots/{id}",
        "/voice",
        "/voice/next",
        "/pbx/call",
        "/pbx/hangup",
        "/outbound-call",
        "/end-call",
        "/call-status",
        "/admin/keys",
        "/admin/keys/{id}",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    let r = reqwest::get(server.http("/docs/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("swagger"));
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(&st)
        .args(["run", &server.http("/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .args(["--checks", "all", "--max-examples", "40", "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing", "--seed", "8"])
        .args(["--generation-database", "none", "--no-color"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `log_format = "json"`: one JSON object per stderr line, call lines carrying the call id.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_call_id() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--models-dir")
        .arg(repo_root().join("models"))
        .env("VOXGATE_ASR__ENGINE", "none")
        .env("VOXGATE_SIP__ENABLED", "false")
        .env("VOXGATE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let addr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("voxgate listening on http://")
                .map(str::to_string)
        })
        .expect("listening");
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut c = Client::connect(&format!("ws://{addr}/call?id=json-log-call&dump=false")).await;
    c.send(json!({"command": "invite", "option": {"codec": "pcm"}}))
        .await;
    c.wait_event("answer", Duration::from_secs(10)).await;
    c.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.join().unwrap();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        parsed.iter().any(|v| v["call"] == "json-log-call"),
        "{lines:#?}"
    );
}
