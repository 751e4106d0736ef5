//! `voxgate call`: a `/call` client for users and tests. Streams a WAV file in real time as 20 ms
//! frames in the chosen codec, prints every event as one JSON line on stdout, can send `tts`
//! text, saves the audio it receives as a WAV, and prints the final transcript.
//!
//! On `/call/sip` the audio travels over RTP: with `--callee` it dials (`invite`), otherwise it
//! waits for an inbound call (`incoming`) and accepts it; then it sends the `--tts` texts and
//! prints events until the call ends.

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use voxgate_media::codec::{AudioDecoder, AudioEncoder, Codec};
use voxgate_media::resample::resample_clip;
use voxgate_media::{AudioFrame, SampleRate};

/// Arguments of `voxgate call`.
#[derive(clap::Args, Debug)]
pub struct CallArgs {
    /// The endpoint, e.g. ws://127.0.0.1:8080/call (query `id`, `dump` allowed).
    pub url: String,
    /// WAV file to stream as the caller's voice (any rate, mono or stereo, 16-bit).
    #[arg(long)]
    pub wav: Option<PathBuf>,
    /// Audio codec: pcm, pcmu, pcma, g722.
    #[arg(long, default_value = "pcm")]
    pub codec: String,
    /// Sample rate for pcm, Hz (default 16000).
    #[arg(long)]
    pub sample_rate: Option<u32>,
    /// Text for the bot to speak (a `tts` command right after `answer`); repeatable.
    #[arg(long)]
    pub tts: Vec<String>,
    /// Save the audio received from voxgate to this WAV file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seconds to wait, once streaming is done, for the call to go quiet before hanging up.
    #[arg(long, default_value_t = 3.0)]
    pub wait: f64,
    /// On /call/sip: the number or sip: URI to dial; without it the client waits for a call.
    #[arg(long)]
    pub callee: Option<String>,
    /// On /call/sip: the caller id to dial with.
    #[arg(long)]
    pub caller: Option<String>,
}

enum Incoming {
    Event(serde_json::Value),
    Audio,
}

/// Runs the client.
///
/// # Errors
/// Connection failures, an unreadable WAV, or a call that is refused.
pub async fn call(a: CallArgs) -> anyhow::Result<()> {
    let codec = Codec::from_name(&a.codec, a.sample_rate)?;
    let (ws, _) = tokio_tungstenite::connect_async(&a.url)
        .await
        .with_context(|| format!("connecting to {}", a.url))?;
    let (mut sink, mut stream) = ws.split();
    let (ev_tx, mut ev_rx) = mpsc::channel::<Incoming>(1024);
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let rx_audio = received.clone();
    let reader = tokio::spawn(async move {
        let mut finals = Vec::new();
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Text(t) => {
                    println!("{t}");
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["event"] == "asrFinal" {
                        finals.push(v["text"].as_str().unwrap_or_default().to_string());
                    }
                    let _ = ev_tx.send(Incoming::Event(v)).await;
                }
                Message::Binary(b) => {
                    rx_audio.lock().expect("audio lock").extend_from_slice(&b);
                    let _ = ev_tx.try_send(Incoming::Audio);
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        finals
    });

    let sip = a
        .url
        .split('?')
        .next()
        .unwrap_or_default()
        .ends_with("/call/sip");
    if sip && a.wav.is_some() {
        bail!("--wav applies to /call: on /call/sip the caller's audio comes over RTP");
    }
    let mut option = serde_json::json!({ "codec": codec.name() });
    if let Codec::Pcm(r) = codec {
        option["sampleRate"] = r.hz().into();
    }
    if sip {
        if matches!(codec, Codec::Pcm(_)) {
            option = serde_json::json!({});
        }
        option["caller"] = a.caller.clone().into();
        option["callee"] = a.callee.clone().into();
    }
    if sip && a.callee.is_none() {
        eprintln!("waiting for an inbound SIP call...");
        let incoming = tokio::time::timeout(Duration::from_secs(600), async {
            while let Some(i) = ev_rx.recv().await {
                if let Incoming::Event(v) = i {
                    if v["event"] == "incoming" {
                        return Ok(());
                    }
                }
            }
            bail!("connection closed before a call came in")
        })
        .await;
        incoming.context("no inbound call within 10 minutes")??;
        option = serde_json::json!({});
    }
    let command = if sip && a.callee.is_none() {
        "accept"
    } else {
        "invite"
    };
    sink.send(Message::Text(
        serde_json::json!({ "command": command, "option": option })
            .to_string()
            .into(),
    ))
    .await?;
    let answered = tokio::time::timeout(Duration::from_secs(if sip { 120 } else { 30 }), async {
        while let Some(i) = ev_rx.recv().await {
            if let Incoming::Event(v) = i {
                match v["event"].as_str() {
                    Some("answer") => return Ok(()),
                    Some("error") | Some("hangup") => bail!("call refused: {v}"),
                    _ => {}
                }
            }
        }
        bail!("connection closed before answer")
    })
    .await;
    answered.context("no answer in time")??;

    for text in &a.tts {
        sink.send(Message::Text(
            serde_json::json!({ "command": "tts", "text": text })
                .to_string()
                .into(),
        ))
        .await?;
    }
    if let Some(wav) = &a.wav {
        let frames = wav_frames(wav, codec)?;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for f in frames {
            tick.tick().await;
            sink.send(Message::Binary(f.into())).await?;
        }
        // One second of silence lets the far end's endpointing close the last utterance.
        let mut enc = AudioEncoder::new(codec);
        for _ in 0..50 {
            tick.tick().await;
            let silence = enc.encode(&AudioFrame::silence(codec.sample_rate(), 20));
            sink.send(Message::Binary(silence.into())).await?;
        }
    }
    // Wait until nothing has arrived for `wait` seconds (bot audio counts as activity).
    let quiet = Duration::from_secs_f64(a.wait);
    if sip {
        // Events only (no audio on this socket): wait for the call to end, up to `wait` of quiet.
        eprintln!(
            "call up; waiting for it to end (or {} s without events)",
            a.wait
        );
    }
    let mut hung_up = false;
    while let Ok(Some(i)) = tokio::time::timeout(quiet, ev_rx.recv()).await {
        if let Incoming::Event(v) = i {
            if v["event"] == "hangup" {
                hung_up = true;
                break;
            }
        }
    }
    if !hung_up {
        sink.send(Message::Text(
            r#"{"command":"hangup","reason":"client_done","initiator":"user"}"#.into(),
        ))
        .await?;
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(i) = ev_rx.recv().await {
                if matches!(&i, Incoming::Event(v) if v["event"] == "hangup") {
                    break;
                }
            }
        })
        .await;
    }
    let _ = sink.close().await;
    let finals = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    if let Some(out) = &a.out {
        let bytes = received.lock().expect("audio lock").clone();
        let pcm = AudioDecoder::new(codec).decode(&bytes);
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: pcm.rate.hz(),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(out, spec)
            .with_context(|| format!("creating {}", out.display()))?;
        for s in &pcm.samples {
            w.write_sample(*s)?;
        }
        w.finalize()?;
        eprintln!(
            "saved {:.1} s of received audio to {}",
            pcm.duration().as_secs_f32(),
            out.display()
        );
    }
    if !finals.is_empty() {
        eprintln!("transcript: {}", finals.join(" "));
    }
    Ok(())
}

/// Reads a 16-bit WAV and returns it as encoded 20 ms frames of `codec`.
///
/// # Errors
/// Unreadable files, non-16-bit samples, or unsupported rates.
pub fn wav_frames(path: &std::path::Path, codec: Codec) -> anyhow::Result<Vec<Vec<u8>>> {
    let r = hound::WavReader::open(path).with_context(|| format!("reading {}", path.display()))?;
    let spec = r.spec();
    if spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        bail!(
            "{}: only 16-bit PCM WAV is supported (convert with sox IN -b 16 OUT.wav)",
            path.display()
        );
    }
    let samples: Vec<i16> = r.into_samples::<i16>().collect::<Result<_, _>>()?;
    let rate = SampleRate::new(spec.sample_rate)?;
    let frame = AudioFrame {
        rate,
        channels: if spec.channels == 2 {
            voxgate_media::Channels::Stereo
        } else {
            voxgate_media::Channels::Mono
        },
        samples,
    };
    let mono = frame.into_mono();
    let target = codec.sample_rate();
    let pcm = resample_clip(&mono.samples, rate, target)?;
    let per_frame = target.samples_in_ms(20);
    let mut enc = AudioEncoder::new(codec);
    Ok(pcm
        .chunks(per_frame)
        .map(|c| {
            let mut c = c.to_vec();
            c.resize(per_frame, 0);
            enc.encode(&AudioFrame::mono(target, c))
        })
        .collect())
}

/// `voxgate keys ...`.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCmd {
    /// Create a key for a user and print it (shown once; only its hash is stored).
    Create {
        /// The user (tenant) id the key acts as.
        #[arg(long)]
        user: String,
        /// A note to recognise the key by in `keys list`.
        #[arg(long)]
        label: Option<String>,
        /// The key sees and controls every user's calls and bots.
        #[arg(long)]
        admin: bool,
    },
    /// List keys (never the keys themselves): id, user, label, admin, created, revoked.
    List {
        /// Only this user's keys.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a key by its id (the 12 hex digits after `vg_`); refused at once by running servers.
    Revoke { id: String },
}

/// Runs a `keys` subcommand against the configured store.
///
/// # Errors
/// The store cannot be opened, or the key does not exist (revoke).
pub async fn keys(cfg: &crate::config::Config, cmd: KeysCmd) -> anyhow::Result<()> {
    use crate::store::KeyStore;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let store = crate::store::sqlite::SqliteStore::open(&cfg.database_url())
        .await
        .with_context(|| format!("opening store {}", cfg.database_url()))?;
    let user_ok = |u: &str| {
        !u.is_empty()
            && u.len() <= 128
            && u.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    };
    match cmd {
        KeysCmd::Create { user, label, admin } => {
            if !user_ok(&user) {
                bail!("--user must be 1-128 characters of A-Z a-z 0-9 - _ . @");
            }
            let k = crate::auth::new_key(&user, label, admin).map_err(anyhow::Error::msg)?;
            store.key_create(&k.record).await?;
            eprintln!(
                "created key {} for user `{user}`{}; it is shown only now:",
                k.record.id,
                if admin { " (admin)" } else { "" }
            );
            println!("{}", k.key);
        }
        KeysCmd::List { user } => {
            println!(
                "{:<14} {:<20} {:<6} {:<26} {:<26} label",
                "id", "user", "admin", "created", "revoked"
            );
            for k in store.keys(user.as_deref()).await? {
                let t = |ms: i64| {
                    chrono::DateTime::from_timestamp_millis(ms)
                        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default()
                };
                println!(
                    "{:<14} {:<20} {:<6} {:<26} {:<26} {}",
                    k.id,
                    k.user_id,
                    k.admin,
                    t(k.created_at),
                    k.revoked_at.map(t).unwrap_or_else(|| "-".into()),
                    k.label.unwrap_or_default()
                );
            }
        }
        KeysCmd::Revoke { id } => {
            let id = id
                .strip_prefix("vg_")
                .map(|r| r.split('_').next().unwrap_or(r))
                .unwrap_or(&id)
                .to_string();
            if !store.key_revoke(&id, voxgate_call::now_ms()).await? {
                bail!("no active key with id `{id}`");
            }
            eprintln!("revoked key {id}");
        }
    }
    Ok(())
}

/// `voxgate sip-users ...` (issue 10 point 6): SIP devices that REGISTER and call in with digest
/// credentials, kept in the store beside `[[sip.users]]`.
#[derive(clap::Subcommand, Debug)]
pub enum SipUsersCmd {
    /// Create an account, or replace its password: only H(username:realm:password) in MD5 and
    /// SHA-256 is stored, for the configured `sip.realm`.
    Add {
        /// The digest username, also the name it is called by (`invite` callee).
        username: String,
        /// The password (or set VOXGATE_SIP_PASSWORD, which keeps it out of shell history).
        #[arg(long, env = "VOXGATE_SIP_PASSWORD", hide_env_values = true)]
        password: String,
        /// The tenant its calls belong to.
        #[arg(long, default_value = "local")]
        user: String,
    },
    /// List accounts: username, tenant, realm, created.
    List,
    /// Remove an account; a running server refuses it from its next request on.
    Remove { username: String },
}

/// Runs a `sip-users` subcommand against the configured store.
///
/// # Errors
/// The store cannot be opened, a username or password is unusable, or the account does not
/// exist (remove).
pub async fn sip_users(cfg: &crate::config::Config, cmd: SipUsersCmd) -> anyhow::Result<()> {
    use crate::store::{SipUserRecord, SipUserStore};
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let store = crate::store::sqlite::SqliteStore::open(&cfg.database_url())
        .await
        .with_context(|| format!("opening store {}", cfg.database_url()))?;
    match cmd {
        SipUsersCmd::Add {
            username,
            password,
            user,
        } => {
            // RFC 3261 §25.1 `user` characters that need no escaping, and no ':' (HA1 input).
            let ok = !username.is_empty()
                && username.len() <= 64
                && username
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c));
            if !ok {
                bail!("the username must be 1-64 of A-Z a-z 0-9 - _ . ! ~ * ' ( ) & = + $ , ; ? /");
            }
            if password.len() < 8 {
                bail!("the password must be at least 8 characters");
            }
            let realm = &cfg.sip.realm;
            let r = crate::sip::registrar::ha1;
            store
                .sip_user_put(&SipUserRecord {
                    username: username.clone(),
                    user_id: user,
                    realm: realm.clone(),
                    ha1_md5: r("MD5", &username, realm, &password),
                    ha1_sha256: r("SHA-256", &username, realm, &password),
                    created_at: voxgate_call::now_ms(),
                })
                .await?;
            eprintln!("SIP user `{username}` stored for realm `{realm}`");
        }
        SipUsersCmd::List => {
            println!("{:<24} {:<20} {:<16} created", "username", "user", "realm");
            for u in store.sip_users().await? {
                let created = chrono::DateTime::from_timestamp_millis(u.created_at)
                    .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<20} {:<16} {created}",
                    u.username, u.user_id, u.realm
                );
            }
        }
        SipUsersCmd::Remove { username } => {
            if !store.sip_user_delete(&username).await? {
                bail!("no SIP user `{username}`");
            }
            eprintln!("removed SIP user `{username}`");
        }
    }
    Ok(())
}
