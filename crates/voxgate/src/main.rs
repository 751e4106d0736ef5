//! The `voxgate` binary: `voxgate serve` and the `voxgate call` test client.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use voxgate::config::{Config, Overrides};

#[derive(Parser)]
#[command(name = "voxgate", version, about = "Programmable voice-call server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP/WebSocket APIs (default 127.0.0.1:8080).
    Serve {
        /// TOML configuration file (default: ./voxgate.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, e.g. 127.0.0.1:8080 (port 0 picks a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (store, dumps).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Models directory (scripts/fetch-models.sh).
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Print the effective configuration (secrets redacted) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Call a voxgate `/call` endpoint: stream a WAV in real time, print events, save replies.
    Call(voxgate::cli::CallArgs),
    /// Manage API keys (stored hashed in the server's store).
    Keys {
        /// TOML configuration file (default: ./voxgate.toml when present).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Data directory (store).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        cmd: voxgate::cli::KeysCmd,
    },
    /// Manage SIP device accounts (digest credentials; only HA1 values are stored).
    SipUsers {
        /// TOML configuration file (default: ./voxgate.toml when present).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Data directory (store).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        cmd: voxgate::cli::SipUsersCmd,
    },
}

/// The configuration of a command that works on the store (`keys`, `sip-users`); exit code 2
/// with the reason when it is invalid.
fn store_config(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> Result<Config, std::process::ExitCode> {
    Config::load(
        config.as_deref(),
        &Overrides {
            data_dir,
            ..Default::default()
        },
    )
    .map_err(|e| {
        eprintln!("voxgate: invalid configuration:\n{e}");
        std::process::ExitCode::from(2)
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `serve` logs as its configuration says (after loading it); the other commands as text.
    let init_logs = |json: bool| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,voxgate=info".into());
        let fmt = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        if json {
            fmt.json().flatten_event(true).init();
        } else {
            fmt.init();
        }
    };
    if !matches!(cli.cmd, Cmd::Serve { .. }) {
        init_logs(false);
    }
    // Two rustls crypto providers are linked (rsipstack's ring, reqwest's aws-lc-rs): pick one for
    // the whole process, or the first TLS connection panics (DEPENDENCIES.md).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = match cli.cmd {
        Cmd::Serve {
            config,
            listen,
            data_dir,
            models_dir,
            print_config,
        } => {
            let cfg = match Config::load(
                config.as_deref(),
                &Overrides {
                    listen,
                    data_dir,
                    models_dir,
                },
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("voxgate: invalid configuration:\n{e}");
                    return std::process::ExitCode::from(2);
                }
            };
            if print_config {
                print!("{}", cfg.to_redacted_toml());
                return std::process::ExitCode::SUCCESS;
            }
            init_logs(cfg.log_format == "json");
            rt.block_on(voxgate::server::serve(cfg))
        }
        Cmd::Call(args) => rt.block_on(voxgate::cli::call(args)),
        Cmd::Keys {
            config,
            data_dir,
            cmd,
        } => match store_config(config, data_dir) {
            Ok(cfg) => rt.block_on(voxgate::cli::keys(&cfg, cmd)),
            Err(code) => return code,
        },
        Cmd::SipUsers {
            config,
            data_dir,
            cmd,
        } => match store_config(config, data_dir) {
            Ok(cfg) => rt.block_on(voxgate::cli::sip_users(&cfg, cmd)),
            Err(code) => return code,
        },
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
