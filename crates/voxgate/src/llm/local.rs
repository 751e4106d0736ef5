//! The offline LLM (SPEECH.md "LLM"): llama.cpp's server, embedded in the `xllamacpp` wheel, run
//! by voxgate as a supervised child process that serves `/v1/chat/completions` on 127.0.0.1 with
//! an ephemeral port. voxgate talks to it through the same [`super::LlmClient`] as to any
//! OpenAI-compatible server.
//!
//! - The child is `python -c <server.py> --model M --ctx N --threads T --parallel P`; it prints
//!   `{"url": "http://127.0.0.1:PORT/v1"}` once the model is loaded (or `{"error": ...}` and
//!   exits 2 when the model cannot be loaded) and exits when its stdin closes, so it never
//!   outlives voxgate, even after a `SIGKILL`.
//! - Supervision: a child that exits is restarted after 1, 2, 4 ... 30 s; one that could not load
//!   its model, or whose Python or model file is missing, is not (the state says why, and
//!   requests fail at once with that reason).
//! - Its log (llama.cpp's, on stderr) goes to tracing at `debug` under `voxgate::llm::local`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The child's program, run with `python -c`.
const SERVER_PY: &str = include_str!("server.py");

/// Where the offline model is.
#[derive(Debug, Clone, PartialEq)]
pub enum LocalState {
    Starting,
    /// Serving; the base URL (`http://127.0.0.1:PORT/v1`).
    Ready(String),
    /// Not serving and not being restarted: the reason.
    Failed(String),
}

/// How to run the offline model.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub python: PathBuf,
    pub model: PathBuf,
    pub threads: u32,
    /// Context per slot, tokens.
    pub context: u32,
    pub parallel: u32,
    /// How long loading may take.
    pub start_timeout: Duration,
}

/// The supervised offline model. Dropping it stops the child.
pub struct LocalLlm {
    state: watch::Receiver<LocalState>,
    model: PathBuf,
    _stop: DropGuard,
}

impl std::fmt::Debug for LocalLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLlm")
            .field("model", &self.model)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl LocalLlm {
    /// Starts the child (in the background) and supervises it.
    pub fn start(opts: LocalOptions) -> Arc<LocalLlm> {
        let (tx, rx) = watch::channel(LocalState::Starting);
        let stop = CancellationToken::new();
        let model = opts.model.clone();
        tokio::spawn(supervise(opts, tx, stop.clone()));
        Arc::new(LocalLlm {
            state: rx,
            model,
            _stop: stop.drop_guard(),
        })
    }

    /// The model file.
    pub fn model(&self) -> &std::path::Path {
        &self.model
    }

    /// The current state.
    pub fn state(&self) -> LocalState {
        self.state.borrow().clone()
    }

    /// The base URL once serving, waiting up to `wait` while it starts.
    ///
    /// # Errors
    /// Why it is not serving: still starting after `wait`, or failed.
    pub async fn url(&self, wait: Duration) -> Result<String, String> {
        let mut rx = self.state.clone();
        let res = tokio::time::timeout(wait, async {
            loop {
                match &*rx.borrow_and_update() {
                    LocalState::Ready(u) => return Ok(u.clone()),
                    LocalState::Failed(e) => return Err(e.clone()),
                    LocalState::Starting => {}
                }
                if rx.changed().await.is_err() {
                    return Err("the offline LLM's supervisor stopped".to_string());
                }
            }
        })
        .await;
        res.unwrap_or_else(|_| {
            Err(format!(
                "the offline LLM ({}) is still loading",
                self.model.display()
            ))
        })
    }
}

async fn supervise(opts: LocalOptions, tx: watch::Sender<LocalState>, stop: CancellationToken) {
    if !opts.model.is_file() {
        let _ = tx.send(LocalState::Failed(format!(
            "the offline LLM's model {} is missing: run `scripts/fetch-models.sh run` (or set [llm] model_path, or [llm] base_url for a server)",
            opts.model.display()
        )));
        return;
    }
    if !opts.python.is_file() {
        let _ = tx.send(LocalState::Failed(format!(
            "the offline LLM's runtime {} is missing: run `scripts/install-deps.sh run` (or set [llm] python)",
            opts.python.display()
        )));
        return;
    }
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            o = run_child(&opts, &tx) => o,
            _ = stop.cancelled() => return,
        };
        match outcome {
            Err(Fatal(e)) => {
                tracing::error!("offline LLM: {e}");
                let _ = tx.send(LocalState::Failed(e));
                return;
            }
            Ok(why) => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!("offline LLM stopped ({why}); restarting in {backoff:?}");
                let _ = tx.send(LocalState::Starting);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A failure that a restart would not mend.
struct Fatal(String);

/// Runs the child until it exits; `Ok` carries why it stopped (it will be restarted).
async fn run_child(opts: &LocalOptions, tx: &watch::Sender<LocalState>) -> Result<String, Fatal> {
    let mut child = tokio::process::Command::new(&opts.python)
        .arg("-c")
        .arg(SERVER_PY)
        .arg("--model")
        .arg(&opts.model)
        .args(["--ctx", &opts.context.to_string()])
        .args(["--threads", &opts.threads.to_string()])
        .args(["--parallel", &opts.parallel.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Fatal(format!("cannot start {}: {e}", opts.python.display())))?;
    // Kept open for the child's life: it exits when this closes (voxgate exited).
    let _stdin = child.stdin.take();
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::debug!(target: "voxgate::llm::local", "{l}");
            }
        });
    }
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let t0 = Instant::now();
    let first = tokio::time::timeout(opts.start_timeout, lines.next_line()).await;
    let line = match first {
        Err(_) => {
            return Ok(format!(
                "the model did not load within {:?}",
                opts.start_timeout
            ))
        }
        Ok(Ok(Some(l))) => l,
        Ok(_) => {
            let status = child.wait().await.ok();
            return Ok(format!("it exited while loading ({status:?})"));
        }
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    if let Some(e) = v["error"].as_str() {
        return Err(Fatal(format!(
            "cannot load the model {}: {e}",
            opts.model.display()
        )));
    }
    let Some(url) = v["url"].as_str() else {
        return Err(Fatal(format!(
            "the offline LLM runtime said `{line}`, not its address"
        )));
    };
    tracing::info!(
        "offline LLM {} loaded in {:.1} s, serving on {url}",
        opts.model.display(),
        t0.elapsed().as_secs_f64()
    );
    let _ = tx.send(LocalState::Ready(url.to_string()));
    let status = child.wait().await;
    Ok(format!("it exited: {status:?}"))
}
