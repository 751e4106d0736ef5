//! The PJSUA2 phone of the end-to-end tests (tests/peers/pjsua_peer.py): the far end of SIP calls
//! through a trunk, playing LibriVox speech and recording what it hears.

use super::{free_udp_port, librivox, repo_root};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use voxgate_media::SampleRate;

pub fn venv_python() -> PathBuf {
    let p = repo_root().join(".venv-peers/bin/python");
    assert!(
        p.exists(),
        "the test peers are missing: run `make test` (scripts/install-deps.sh test)"
    );
    p
}

pub fn peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

pub fn clip(n: &str) -> (PathBuf, String) {
    librivox()
        .into_iter()
        .find(|(p, _)| p.to_string_lossy().contains(n))
        .unwrap()
}

/// The phone's SIP port, its process and the lines it printed (complete once it exited).
pub type Phone = (
    u16,
    tokio::process::Child,
    tokio::task::JoinHandle<Vec<String>>,
);

/// A PJSUA2 phone (tests/peers/pjsua_peer.py), started and READY.
pub async fn phone(
    mode: &str,
    play: &Path,
    record: &Path,
    send: &str,
    target: Option<&str>,
) -> Phone {
    phone_with(mode, play, record, send, target, &[]).await
}

/// [`phone`] with environment variables (`PJ_RING_SECS`, `PJ_PLAY_AFTER`).
pub async fn phone_with(
    mode: &str,
    play: &Path,
    record: &Path,
    send: &str,
    target: Option<&str>,
    env: &[(&str, &str)],
) -> Phone {
    let (sip, rtp) = (free_udp_port(), free_udp_port());
    let mut cmd = tokio::process::Command::new(venv_python());
    cmd.arg(peers().join("pjsua_peer.py"))
        .arg(mode)
        .arg(sip.to_string())
        .arg(rtp.to_string())
        .arg(play)
        .arg(record)
        .arg(send)
        .arg("3.0")
        .arg("90");
    if let Some(t) = target {
        cmd.arg(t);
    }
    cmd.envs(env.iter().copied());
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("run PJSUA2");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let lines = tokio::spawn(async move {
        let mut r = BufReader::new(out).lines();
        let mut all = Vec::new();
        let mut tx = Some(tx);
        while let Ok(Some(l)) = r.next_line().await {
            if l == "READY" {
                if let Some(t) = tx.take() {
                    let _ = t.send(());
                }
            }
            all.push(l);
        }
        all
    });
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("PJSUA2 ready")
        .unwrap();
    (sip, child, lines)
}

/// A WAV written by PJSUA's recorder, which leaves the sizes at 0 when the process exits
/// without destroying it: 16-bit mono, the rate from the header, every byte after `data`.
pub fn read_recording(path: &Path) -> (Vec<i16>, SampleRate) {
    let b = std::fs::read(path).unwrap();
    assert!(
        b.len() > 44 && &b[..4] == b"RIFF",
        "{} is not a WAV",
        path.display()
    );
    let rate = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    let data = b.windows(4).position(|w| w == b"data").unwrap() + 8;
    let pcm = b[data..]
        .chunks_exact(2)
        .map(|x| i16::from_le_bytes([x[0], x[1]]))
        .collect();
    (pcm, SampleRate::new(rate).unwrap())
}
