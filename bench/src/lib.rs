//! Shared helpers for voxgate's benchmarks.

use std::path::Path;
use voxgate_media::{AudioFrame, Channels, SampleRate};

pub const LIBRIVOX: &str = "/usr/share/pocketsphinx/test/data/librivox";

/// LibriVox clips (16 kHz mono) with their reference transcripts.
pub fn librivox() -> anyhow::Result<Vec<(Vec<i16>, String)>> {
    let dir = Path::new(LIBRIVOX);
    let refs = std::fs::read_to_string(dir.join("transcription"))?;
    let mut out = Vec::new();
    for l in refs.lines() {
        let Some((text, id)) = l.rsplit_once(" (") else {
            continue;
        };
        let id = id.trim_end_matches(')');
        let r = hound::WavReader::open(dir.join(format!("{id}.wav")))?;
        let spec = r.spec();
        let s: Vec<i16> = r.into_samples::<i16>().collect::<Result<_, _>>()?;
        let f = AudioFrame {
            rate: SampleRate::new(spec.sample_rate)?,
            channels: if spec.channels == 2 {
                Channels::Stereo
            } else {
                Channels::Mono
            },
            samples: s,
        }
        .into_mono();
        let s = voxgate_media::resample::resample_clip(&f.samples, f.rate, SampleRate::HZ_16000)?;
        out.push((
            s,
            text.replace("<s>", "")
                .replace("</s>", "")
                .trim()
                .to_string(),
        ));
    }
    Ok(out)
}

/// The position in [`librivox`] of the clip whose id ends with `id` (e.g. `0880`).
///
/// # Errors
/// When the clips are missing or none has that id.
pub fn librivox_index(id: &str) -> anyhow::Result<usize> {
    let refs = std::fs::read_to_string(Path::new(LIBRIVOX).join("transcription"))?;
    refs.lines()
        .filter(|l| l.contains(" ("))
        .position(|l| l.trim_end().trim_end_matches(')').ends_with(id))
        .ok_or_else(|| anyhow::anyhow!("no LibriVox clip {id}"))
}

/// Lower-case words without punctuation (hyphens split words; `mr` → `mister`).
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
        .map(|w| {
            if w == "mr" {
                "mister".into()
            } else {
                w.to_string()
            }
        })
        .collect()
}

/// Word error rate.
pub fn wer(reference: &str, hyp: &str) -> f64 {
    let (r, h) = (words(reference), words(hyp));
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
    prev[h.len()] as f64 / r.len().max(1) as f64
}

/// Percentile (0..=100) of unsorted values; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((p / 100.0) * (s.len() - 1) as f64).round() as usize]
}

/// CPU time (user + system) a process has used, seconds (`/proc/PID/stat`, 100 ticks/s).
pub fn proc_cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Resident memory of a process, MB (`/proc/PID/status` VmRSS).
pub fn proc_rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Starts `voxgate serve` (the command as given, its stdout piped) and waits for its
/// `voxgate listening` line.
///
/// # Errors
/// When it cannot start or exits before listening.
pub fn start_server(mut cmd: std::process::Command) -> anyhow::Result<std::process::Child> {
    use std::io::BufRead;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let out = child.stdout.take().expect("piped stdout");
    let mut lines = std::io::BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("voxgate listening") => return Ok(child),
            Some(_) => {}
            None => anyhow::bail!("the server exited before listening"),
        }
    }
}

/// What the server used over a measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// CPU seconds (user + system).
    pub cpu_secs: f64,
    /// Wall-clock seconds.
    pub wall_secs: f64,
    /// Largest RSS seen (sampled every 500 ms), MB.
    pub peak_rss_mb: f64,
}

/// Measures process `pid` from now until `stop_at`.
pub async fn measure(pid: u32, stop_at: tokio::time::Instant) -> Window {
    let cpu0 = proc_cpu_secs(pid);
    let t0 = std::time::Instant::now();
    let mut peak: f64 = 0.0;
    while tokio::time::Instant::now() + std::time::Duration::from_millis(500) < stop_at {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        peak = peak.max(proc_rss_mb(pid));
    }
    Window {
        cpu_secs: proc_cpu_secs(pid) - cpu0,
        wall_secs: t0.elapsed().as_secs_f64(),
        peak_rss_mb: peak,
    }
}

/// The caller's speech of the load benchmarks: every LibriVox clip followed by 1.5 s of silence,
/// 8 kHz mono samples.
///
/// # Errors
/// When the clips cannot be read (pocketsphinx-testdata missing).
pub fn speech_8k() -> anyhow::Result<Vec<i16>> {
    let mut pcm = Vec::new();
    for (s, _) in librivox()? {
        pcm.extend(s);
        pcm.extend(vec![0i16; 24000]);
    }
    Ok(voxgate_media::resample::resample_clip(
        &pcm,
        SampleRate::HZ_16000,
        SampleRate::HZ_8000,
    )?)
}

/// Prints the server's CPU and RSS per `unit` (session, call, stream) over a window.
pub fn print_usage(unit: &str, n: usize, w: &Window, idle_rss_mb: f64) {
    let n = n.max(1) as f64;
    println!(
        "server CPU        {:.3} % of a core per {unit} ({:.1} % total)",
        w.cpu_secs / w.wall_secs / n * 100.0,
        w.cpu_secs / w.wall_secs * 100.0
    );
    println!(
        "server RSS        {:.3} MB per {unit} ({:.0} MB peak, {:.0} MB idle)",
        (w.peak_rss_mb - idle_rss_mb) / n,
        w.peak_rss_mb,
        idle_rss_mb
    );
}
