//! The client against a scripted OpenAI-compatible server on loopback that replays the documented
//! streaming format (`data: {chat.completion.chunk}` events, tool-call deltas by `index`,
//! `data: [DONE]`).

use super::*;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// What the scripted server does on its Nth request.
#[derive(Clone)]
enum Script {
    /// 503 for the first `n` requests, then stream `events`.
    FailThenStream { fail: usize, events: Vec<Value> },
    /// Wait this long before answering.
    Slow(Duration),
    /// Stream `n` text pieces, one every `every`; note whether the client went away.
    Drip { n: usize, every: Duration },
}

struct Scripted {
    script: Script,
    requests: AtomicUsize,
    bodies: std::sync::Mutex<Vec<Value>>,
    client_gone: AtomicBool,
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn sse(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(format!("data: {e}\n\n").as_bytes());
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

async fn serve(script: Script) -> (String, Arc<Scripted>) {
    let st = Arc::new(Scripted {
        script,
        requests: AtomicUsize::new(0),
        bodies: Default::default(),
        client_gone: AtomicBool::new(false),
    });
    let s = st.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: axum::Json<Value>| {
            let s = s.clone();
            async move {
                let n = s.requests.fetch_add(1, Ordering::SeqCst);
                s.bodies.lock().unwrap().push(body.0);
                match s.script.clone() {
                    Script::FailThenStream { fail, .. } if n < fail => {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
                    }
                    Script::FailThenStream { events, .. } => Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from(sse(&events)))
                        .unwrap(),
                    Script::Slow(d) => {
                        tokio::time::sleep(d).await;
                        (StatusCode::OK, "late").into_response()
                    }
                    Script::Drip { n, every } => {
                        let (tx, rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
                        let s2 = s.clone();
                        tokio::spawn(async move {
                            for i in 0..n {
                                let e = chunk(json!({"content": format!("w{i} ")}), None);
                                if tx
                                    .send(Ok(format!("data: {e}\n\n").into_bytes()))
                                    .await
                                    .is_err()
                                {
                                    s2.client_gone.store(true, Ordering::SeqCst);
                                    return;
                                }
                                tokio::time::sleep(every).await;
                            }
                            let _ = tx.send(Ok(b"data: [DONE]\n\n".to_vec())).await;
                        });
                        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                            rx.recv().await.map(|x| (x, rx))
                        });
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(Body::from_stream(stream))
                            .unwrap()
                    }
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/v1"), st)
}

fn client(base: &str, timeout_ms: u64, retries: u32) -> LlmClient {
    LlmClient::new(
        reqwest::Client::new(),
        &LlmConfig {
            base_url: Some(base.into()),
            api_key: Some("sk-test".into()),
            model: "m".into(),
            timeout_ms,
            retries,
            ..LlmConfig::default()
        },
    )
}

fn ask(max_tokens: u32) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::System {
                content: "You are a phone agent.".into(),
            },
            Message::User {
                content: "Hello?".into(),
            },
        ],
        tools: vec![Tool {
            name: "end_call".into(),
            description: "Say goodbye and hang up".into(),
            parameters: json!({"type": "object", "properties": {"reason": {"type": "string"}}}),
        }],
        max_tokens,
        temperature: 0.0,
    }
}

#[test]
fn sse_events_split_anywhere() {
    let mut p = SseParser::default();
    let all = b": comment\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
    let mut out = Vec::new();
    for b in all.chunks(3) {
        out.extend(p.push(b));
    }
    assert_eq!(out, vec!["{\"a\":1}", "x\ny", "[DONE]"]);
}

#[tokio::test]
async fn text_and_a_tool_call_stream_after_a_retried_503() {
    let events = vec![
        chunk(json!({"role": "assistant", "content": ""}), None),
        chunk(json!({"content": "Good"}), None),
        chunk(json!({"content": "bye."}), None),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                     "function": {"name": "end_call", "arguments": ""}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"reason\":"}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"done\"}"}}]}),
            None,
        ),
        chunk(json!({}), Some("tool_calls")),
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
               "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}}),
    ];
    let (base, st) = serve(Script::FailThenStream { fail: 1, events }).await;
    let c = client(&base, 2000, 2);
    let mut s = c.chat(ask(100));
    let mut got = Vec::new();
    while let Some(d) = s.next().await {
        got.push(d.unwrap());
    }
    assert_eq!(
        got,
        vec![
            ChatDelta::Text("Good".into()),
            ChatDelta::Text("bye.".into()),
            ChatDelta::ToolCall {
                id: "call_9".into(),
                name: "end_call".into(),
                arguments: "{\"reason\":\"done\"}".into()
            },
            ChatDelta::Done {
                finish_reason: "tool_calls".into(),
                usage: Some(Usage {
                    prompt_tokens: 21,
                    completion_tokens: 7
                })
            },
        ]
    );
    assert_eq!(
        st.requests.load(Ordering::SeqCst),
        2,
        "one retry after the 503"
    );
    let body = st.bodies.lock().unwrap()[1].clone();
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 100);
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You are a phone agent."})
    );
    assert_eq!(body["tools"][0]["function"]["name"], "end_call");
}

#[tokio::test]
async fn errors_that_stay_are_reported_after_the_retries() {
    // Always 503: 1 + 2 retries, then the error.
    let (base, st) = serve(Script::FailThenStream {
        fail: 100,
        events: vec![],
    })
    .await;
    let t0 = std::time::Instant::now();
    let r = client(&base, 2000, 2).chat(ask(10)).collect().await;
    assert!(
        matches!(r, Err(LlmError::Http { status: 503, .. })),
        "{r:?}"
    );
    assert_eq!(st.requests.load(Ordering::SeqCst), 3);
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "backoff 200 + 400 ms"
    );
    // A server slower than the timeout: Timeout, after its retry.
    let (base, st) = serve(Script::Slow(Duration::from_secs(3))).await;
    let r = client(&base, 300, 1).chat(ask(10)).collect().await;
    assert_eq!(r, Err(LlmError::Timeout(300)));
    assert_eq!(st.requests.load(Ordering::SeqCst), 2);
    // Nothing configured.
    let c = LlmClient::new(reqwest::Client::new(), &LlmConfig::default());
    assert_eq!(
        c.chat(ask(10)).collect().await,
        Err(LlmError::NotConfigured)
    );
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_request() {
    let (base, st) = serve(Script::Drip {
        n: 100,
        every: Duration::from_millis(50),
    })
    .await;
    let mut s = client(&base, 2000, 0).chat(ask(1000));
    for _ in 0..2 {
        assert!(matches!(s.next().await, Some(Ok(ChatDelta::Text(_)))));
    }
    drop(s); // barge-in
    let t0 = std::time::Instant::now();
    while !st.client_gone.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        st.client_gone.load(Ordering::SeqCst),
        "the server kept generating for a dropped stream"
    );
    assert!(t0.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn the_token_budget_cuts_a_long_answer() {
    let (base, st) = serve(Script::Drip {
        n: 100,
        every: Duration::from_millis(5),
    })
    .await;
    let (text, calls, finish) = client(&base, 2000, 0).chat(ask(3)).collect().await.unwrap();
    assert_eq!(
        (text.as_str(), calls.len(), finish.as_str()),
        ("w0 w1 w2 ", 0, "budget")
    );
    let t0 = std::time::Instant::now();
    while !st.client_gone.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(st.client_gone.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_stream_that_stalls_times_out() {
    let (base, _st) = serve(Script::Drip {
        n: 3,
        every: Duration::from_secs(2),
    })
    .await;
    let mut s = client(&base, 400, 0).chat(ask(100));
    assert!(matches!(s.next().await, Some(Ok(ChatDelta::Text(_)))));
    assert_eq!(s.next().await, Some(Err(LlmError::Timeout(400))));
}

/// The supervised offline model (SmolLM2-135M through llama.cpp's server child) comes back after
/// its process is killed: the state goes Ready → Starting → Ready on a new port and the next
/// request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_model_restarts_after_its_process_is_killed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/llm/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.is_file(), "run scripts/fetch-models.sh");
    // A path no other test's child has on its command line: this test kills only its own.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("restart-under-test.gguf");
    std::os::unix::fs::symlink(std::fs::canonicalize(&model).unwrap(), &link).unwrap();
    let local = local::LocalLlm::start(local::LocalOptions {
        python: Config::default().llm_python(),
        model: link.clone(),
        threads: 1,
        context: 1024,
        parallel: 1,
        start_timeout: Duration::from_secs(60),
    });
    let first = local.url(Duration::from_secs(60)).await.expect("serving");
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", link.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(killed.success(), "no child to kill");
    // The supervisor notices and restarts it (1 s backoff).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let second = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "not restarted: {:?}",
            local.state()
        );
        match local.state() {
            local::LocalState::Ready(u) if u != first => break u,
            local::LocalState::Failed(e) => panic!("gave up: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (text, calls, finish) = client(&second, 30_000, 0)
        .chat(ask(8))
        .collect()
        .await
        .expect("the restarted model answers");
    assert!(
        ["stop", "length", "tool_calls"].contains(&finish.as_str()),
        "finish {finish:?}"
    );
    assert!(!text.is_empty() || !calls.is_empty(), "an empty answer");
}

/// The offline model's bounded queue: with 1 request decoding and 1 waiting, a third is refused at
/// once with `Busy` (the agent then apologises) and never reaches the server; the waiting one is
/// served after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let (base, st) = serve(Script::Drip {
        n: 5,
        every: Duration::from_millis(100),
    })
    .await;
    let mut c = client(&base, 5_000, 0);
    c.queue = Some(Arc::new(Queue {
        slots: Semaphore::new(1),
        waiting: AtomicU32::new(0),
        max_waiting: 1,
    }));
    let first = c.chat(ask(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = c.chat(ask(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = std::time::Instant::now();
    let third = c.chat(ask(10)).collect().await;
    assert_eq!(third, Err(LlmError::Busy(1)));
    assert!(t0.elapsed() < Duration::from_millis(100), "refused at once");
    assert!(first.collect().await.is_ok());
    assert!(second.collect().await.is_ok());
    assert_eq!(st.requests.load(Ordering::SeqCst), 2);
}
