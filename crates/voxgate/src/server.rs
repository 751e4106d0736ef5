//! `voxgate serve`: load config and engines, open the store, serve HTTP, shut down gracefully.

use crate::api::{router, AppState};
use crate::config::Config;
use crate::engines::Engines;
use crate::store::sqlite::SqliteStore;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use voxgate_call::{CallContext, CallCore, CallSettings, Dialer};
use voxgate_media::vad::SegmenterConfig;

/// How long shutdown waits for transcripts still being computed after the calls ended.
const SHUTDOWN_WRITES: Duration = Duration::from_secs(120);

/// Runs the server until SIGINT/SIGTERM. Prints `voxgate listening on http://ADDR` on stdout
/// once it accepts connections (tests and scripts wait for that line).
///
/// # Errors
/// Start-up failures: engines, store, or the listening socket.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let started = std::time::Instant::now();
    let speech = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || Engines::load(&cfg)
    })
    .await?
    .map_err(|e| anyhow::anyhow!("speech engines failed to load:\n{e}"))?;
    tracing::info!(
        asr = speech.asr.as_ref().map(|a| a.name().to_string()).unwrap_or("none".into()),
        tts = ?speech.tts.keys().collect::<Vec<_>>(),
        vad = cfg.vad.engine,
        "speech engines loaded in {:.1}s",
        started.elapsed().as_secs_f32()
    );
    let store = Arc::new(
        SqliteStore::open(&cfg.database_url())
            .await
            .with_context(|| format!("opening store {}", cfg.database_url()))?,
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let media_dir = cfg
        .play
        .media_dir
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("media"));
    std::fs::create_dir_all(&media_dir)
        .with_context(|| format!("creating media directory {}", media_dir.display()))?;
    let media_dir = media_dir.canonicalize()?;
    let settings = CallSettings {
        barge_in_ms: cfg.call.barge_in_ms,
        vad_gate_dbfs: cfg.vad.gate_dbfs,
        segmenter: SegmenterConfig {
            threshold: cfg.vad.threshold,
            min_speech_ms: cfg.vad.min_speech_ms,
            min_silence_ms: cfg.vad.min_silence_ms,
        },
        partial_interval_ms: cfg.asr.partial_interval_ms,
        drain: Duration::from_secs(cfg.call.drain_secs),
        leg_close: Duration::from_secs(5),
    };
    let sip = if cfg.sip.enabled {
        let users: Arc<dyn crate::store::SipUserStore> = store.clone();
        match crate::sip::SipService::start(cfg.sip.clone(), http.clone(), Some(users)).await {
            Ok(svc) => {
                println!("voxgate sip listening on udp:{}", svc.local_addr);
                if let Some(t) = svc.tls_addr {
                    println!("voxgate sip listening on tls:{t}");
                }
                tracing::info!(
                    "SIP on {} (udp{})",
                    svc.local_addr,
                    if cfg.sip.tcp { ", tcp" } else { "" }
                );
                Some(svc)
            }
            // The default port may belong to a PBX on this machine: serve the rest and say so.
            Err(e) if cfg.sip.listen == crate::config::SipConfig::default().listen => {
                tracing::warn!(
                    "SIP disabled: {e:#}; set sip.listen (VOXGATE_SIP__LISTEN) to a free address"
                );
                None
            }
            Err(e) => return Err(e.context("starting SIP")),
        }
    } else {
        None
    };
    let speech = Arc::new(speech);
    let core = CallCore::new(CallContext {
        speech: speech.clone(),
        store: store.clone(),
        dialer: sip
            .clone()
            .map(|s| Arc::new(crate::sip::SipDialer(s)) as Arc<dyn Dialer>),
        loader: Arc::new(crate::audio_file::Loader {
            media_dir,
            allow_private: cfg.play.allow_private,
        }),
        settings,
    });
    let auth = crate::auth::Authenticator::new(&cfg.auth, store.clone())
        .await
        .context("reading API keys")?;
    let listen: std::net::SocketAddr = cfg.listen.parse().context("listen")?;
    if !listen.ip().is_loopback() && !auth.is_on().await {
        anyhow::bail!(
            "refusing to serve on non-loopback address {listen}: authentication is off. Create an API key first \
             (`voxgate keys create --user ID`), or set auth.enabled / auth.jwt_secret; then every request needs a key"
        );
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let config = Arc::new(cfg.clone());
    let llm = crate::llm::Llm::from_config(http.clone(), &cfg);
    tracing::info!("LLM: {}", llm.describe());
    let bots = crate::bots::BotService::new(
        store.clone(),
        core.clone(),
        config.clone(),
        http.clone(),
        llm.clone(),
    );
    let agents = crate::agent::AgentService::new(llm, store.clone(), cfg.agent.clone(), speech);
    let limits = crate::limits::Limits::new(cfg.limits.clone(), store.clone());
    let pbx = crate::api::pbx::Pbx::new(core.clone(), auth.clone(), limits.clone(), &cfg);
    if let Some(s) = &sip {
        s.add_router(Arc::new(crate::bots::BotRouter(bots.clone())));
        s.add_router(pbx.router());
    }
    let metrics = install_metrics()?;
    let state = AppState {
        metrics,
        public_url: cfg.public_url(Some(addr)),
        config,
        core: core.clone(),
        store,
        sip: sip.clone(),
        bots,
        auth,
        limits,
        pbx,
        agents,
    };
    println!("voxgate listening on http://{addr}");
    tracing::info!("listening on http://{addr}");
    let drain = Duration::from_secs(cfg.call.drain_secs);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Calls end (`server_shutdown`) and finish their transcripts up to the drain time;
            // transcripts still being computed then are finished and stored before we exit.
            core.shutdown(drain + Duration::from_secs(5), SHUTDOWN_WRITES)
                .await;
            if let Some(s) = &sip {
                s.stop(Duration::from_secs(3)).await;
            }
        })
        .await?;
    Ok(())
}

/// Installs the Prometheus recorder (histograms with buckets for latencies and RTP loss) and
/// keeps it drained; `/metrics` renders it.
fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("voxgate_rtp_loss_ratio".into()),
            &[0.0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let h = handle.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(5));
        loop {
            t.tick().await;
            h.run_upkeep();
        }
    });
    Ok(handle)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
