//! SIPp (`sip-tester`) helpers: scenarios from tests/sipp with placeholders filled, SIPp as a UAS
//! or UAC on loopback, bounded by its own `-timeout`.
#![allow(dead_code)]

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn sipp_available() {
    assert!(
        Path::new("/usr/bin/sipp").exists(),
        "SIPp is missing: run `make test` (scripts/install-deps.sh test installs sip-tester)"
    );
}

/// Writes a scenario from tests/sipp with placeholders replaced.
pub fn scenario(dir: &Path, name: &str, vars: &[(&str, &str)]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name);
    let mut text = std::fs::read_to_string(&src).unwrap();
    for (k, v) in vars {
        text = text.replace(k, v);
    }
    let out = dir.join(name);
    std::fs::write(&out, text).unwrap();
    out
}

/// Runs SIPp to completion (bounded by `-timeout`); returns (exit code, stderr+stdout tail).
pub async fn run_sipp(args: Vec<String>, cwd: PathBuf) -> (i32, String) {
    run_sipp_on(free_udp_port(), args, cwd).await
}

/// SIPp as a UAS on `sip_port`, in the background.
pub fn spawn_sipp_uas(
    args: Vec<String>,
    cwd: PathBuf,
) -> (u16, tokio::task::JoinHandle<(i32, String)>) {
    let port = free_udp_port();
    (port, tokio::spawn(run_sipp_on(port, args, cwd)))
}

pub async fn run_sipp_on(sip_port: u16, args: Vec<String>, cwd: PathBuf) -> (i32, String) {
    run_sipp_on_m(sip_port, 1, args, cwd).await
}

/// SIPp on `sip_port` until `calls` calls (transactions with a new Call-ID) completed.
pub async fn run_sipp_on_m(
    sip_port: u16,
    calls: u32,
    args: Vec<String>,
    cwd: PathBuf,
) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let media_port = free_udp_port();
        let calls = calls.to_string();
        // A whole-run bound of 60 s unless the caller gives its own `-timeout`.
        let timeout = match args.iter().position(|a| a == "-timeout") {
            Some(i) => args.get(i + 1).cloned().unwrap_or_else(|| "60s".into()),
            None => "60s".into(),
        };
        let args: Vec<String> = match args.iter().position(|a| a == "-timeout") {
            Some(i) => args
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i && *j != i + 1)
                .map(|(_, a)| a.clone())
                .collect(),
            None => args,
        };
        let mut cmd = Command::new("sipp");
        cmd.args([
            "-i",
            "127.0.0.1",
            "-mi",
            "127.0.0.1",
            "-nostdin",
            "-m",
            &calls,
            "-timeout",
            &timeout,
            "-timeout_error",
        ])
        .args(["-p", &sip_port.to_string(), "-mp", &media_port.to_string()])
        .args(&args)
        .current_dir(&cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let out = cmd.output().expect("run sipp");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tail: String = text
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        (out.status.code().unwrap_or(-1), tail)
    })
    .await
    .unwrap()
}

/// SIPp as a UAC running `scen` against the server, calling `service` (the Request-URI user).
pub fn sipp_uac(
    server: &Server,
    scen: &Path,
    service: &str,
    dir: &Path,
    extra: &[&str],
) -> impl std::future::Future<Output = (i32, String)> + use<> {
    let mut args = vec![
        server.sip_addr.clone(),
        "-sf".into(),
        scen.display().to_string(),
        "-s".into(),
        service.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    run_sipp(args, dir.to_path_buf())
}
