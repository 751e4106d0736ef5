//! Audio for the `play` command: fetch (http(s) URL, `file://` URL or server path) and decode
//! (WAV or MP3 through symphonia) to 16 kHz mono samples. [`Loader`] is the call core's
//! [`voxgate_call::AudioLoader`] port.

use std::io::Cursor;
use symphonia::core::audio::GenericAudioBufferRef;
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use voxgate_media::resample::resample_clip;
use voxgate_media::SampleRate;

/// Fetches what `play` names and decodes it on the blocking pool, within `[play]`'s limits:
/// local files only under `media_dir`, URLs only `http(s)` to public addresses unless
/// `allow_private`.
pub struct Loader {
    /// The directory local files are read from (canonical).
    pub media_dir: std::path::PathBuf,
    /// Allow URLs whose host is loopback, private, link-local, ...
    pub allow_private: bool,
}

#[async_trait::async_trait]
impl voxgate_call::AudioLoader for Loader {
    async fn load(&self, url: &str) -> Result<Vec<i16>, String> {
        let bytes = self.fetch(url).await?;
        let hint = url.to_string();
        tokio::task::spawn_blocking(move || decode_to_16k(bytes, &hint))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    }
}

/// Largest file or download `play` accepts, bytes.
pub const MAX_BYTES: usize = 100 * 1024 * 1024;

/// Whether `ip` is an address a server-side fetch must not reach by default: loopback,
/// unspecified, private (RFC 1918, RFC 4193), link-local, shared (RFC 6598), multicast,
/// broadcast, documentation, or an IPv4-mapped/compatible IPv6 form of those.
pub fn is_non_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_loopback()
                || v.is_unspecified()
                || v.is_private()
                || v.is_link_local()
                || v.is_multicast()
                || v.is_broadcast()
                || v.is_documentation()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
                || o[0] >= 240
        }
        IpAddr::V6(v) => {
            if let Some(m) = v.to_ipv4_mapped() {
                return is_non_public(IpAddr::V4(m));
            }
            let s = v.segments();
            v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0)
                || s[0] == 0x2001 && s[1] == 0x0db8
        }
    }
}

impl Loader {
    /// The bytes of `url`: an `http(s)://` URL, a `file://` URL or a path (relative to
    /// `media_dir`, or absolute inside it).
    ///
    /// # Errors
    /// A message for the `error` event: refused by the limits above, not found, HTTP status,
    /// larger than [`MAX_BYTES`].
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let bytes = if url.starts_with("http://") || url.starts_with("https://") {
            self.fetch_http(url).await?
        } else {
            let path = match url.strip_prefix("file://") {
                Some(p) => p.to_string(),
                None if url.contains("://") => {
                    return Err(format!(
                        "unsupported URL scheme in `{url}` (use http, https, file or a path)"
                    ))
                }
                None => url.to_string(),
            };
            let full = self.media_dir.join(&path);
            let canon = tokio::fs::canonicalize(&full)
                .await
                .map_err(|e| format!("{path}: {e}"))?;
            if !canon.starts_with(&self.media_dir) {
                return Err(format!(
                    "{path}: `play` reads files only under the media directory {} (play.media_dir)",
                    self.media_dir.display()
                ));
            }
            let meta = tokio::fs::metadata(&canon)
                .await
                .map_err(|e| format!("{path}: {e}"))?;
            if meta.len() as usize > MAX_BYTES {
                return Err(format!("{path} is larger than {MAX_BYTES} bytes"));
            }
            tokio::fs::read(&canon)
                .await
                .map_err(|e| format!("{path}: {e}"))?
        };
        if bytes.len() > MAX_BYTES {
            return Err(format!("{url} is larger than {MAX_BYTES} bytes"));
        }
        Ok(bytes)
    }

    async fn fetch_http(&self, url: &str) -> Result<Vec<u8>, String> {
        let u = url::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
        let port = u.port_or_known_default().unwrap_or(80);
        let (name, addrs): (Option<String>, Vec<std::net::SocketAddr>) = match u.host() {
            Some(url::Host::Ipv4(ip)) => (None, vec![(ip, port).into()]),
            Some(url::Host::Ipv6(ip)) => (None, vec![(ip, port).into()]),
            Some(url::Host::Domain(d)) => {
                let a = tokio::net::lookup_host((d, port))
                    .await
                    .map_err(|e| format!("fetching {url}: cannot resolve {d}: {e}"))?
                    .collect();
                (Some(d.to_string()), a)
            }
            None => return Err(format!("`{url}` has no host")),
        };
        let Some(first) = addrs.first().copied() else {
            return Err(format!("fetching {url}: its host has no address"));
        };
        if !self.allow_private {
            if let Some(bad) = addrs.iter().find(|a| is_non_public(a.ip())) {
                return Err(format!(
                    "refusing to fetch {url}: {} is not a public address (set play.allow_private = true to allow)",
                    bad.ip()
                ));
            }
        }
        // A client per fetch: the connection goes to the address just checked (no second lookup
        // that could answer differently), and redirects are not followed (they could point
        // anywhere).
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30));
        if let Some(d) = &name {
            b = b.resolve(d, first);
        }
        let client = b.build().map_err(|e| e.to_string())?;
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|l| l as usize > MAX_BYTES)
        {
            return Err(format!("{url} is larger than {MAX_BYTES} bytes"));
        }
        Ok(resp
            .bytes()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?
            .to_vec())
    }
}

/// Decodes WAV or MP3 bytes to 16 kHz mono i16 samples. `hint` is a file name or URL whose
/// extension helps the probe.
///
/// # Errors
/// A message when the format is not recognised or decoding fails.
pub fn decode_to_16k(bytes: Vec<u8>, hint: &str) -> Result<Vec<i16>, String> {
    let mut h = Hint::new();
    if let Some(ext) = hint.rsplit('.').next().filter(|e| e.len() <= 4) {
        h.with_extension(&ext.to_ascii_lowercase());
    }
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(
            &h,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| format!("not a WAV or MP3 file: {e}"))?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or("no audio track")?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or("no audio codec parameters")?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| format!("unsupported codec: {e}"))?;
    let mut mono: Vec<f32> = Vec::new();
    let mut rate: Option<u32> = params.sample_rate;
    let mut tmp: Vec<f32> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => return Err(format!("reading audio: {e}")),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf: GenericAudioBufferRef = match decoder.decode(&packet) {
            Ok(b) => b,
            Err(e) => return Err(format!("decoding audio: {e}")),
        };
        rate = Some(buf.spec().rate());
        let ch = buf.spec().channels().count().max(1);
        tmp.clear();
        buf.copy_to_vec_interleaved(&mut tmp);
        mono.extend(
            tmp.chunks_exact(ch)
                .map(|c| c.iter().sum::<f32>() / ch as f32),
        );
        if mono.len() > 48_000 * 60 * 30 {
            return Err("audio longer than 30 minutes".into());
        }
    }
    let rate = rate.ok_or("unknown sample rate")?;
    let rate = SampleRate::new(rate).map_err(|e| e.to_string())?;
    let samples: Vec<i16> = mono
        .iter()
        .map(|&x| (x * 32767.0).clamp(-32768.0, 32767.0) as i16)
        .collect();
    resample_clip(&samples, rate, SampleRate::HZ_16000).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_non_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(!is_non_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn files_only_under_the_media_dir_and_no_private_urls() {
        let dir = tempfile::tempdir().unwrap();
        let media = dir.path().join("media");
        std::fs::create_dir_all(&media).unwrap();
        std::fs::write(media.join("a.wav"), b"RIFF").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"no").unwrap();
        let l = Loader {
            media_dir: media.canonicalize().unwrap(),
            allow_private: false,
        };
        assert_eq!(l.fetch("a.wav").await.unwrap(), b"RIFF");
        let abs = media.join("a.wav");
        assert!(l.fetch(abs.to_str().unwrap()).await.is_ok());
        for bad in [
            "../secret.txt".to_string(),
            dir.path().join("secret.txt").display().to_string(),
            format!("file://{}", dir.path().join("secret.txt").display()),
            "/etc/passwd".to_string(),
        ] {
            let e = l.fetch(&bad).await.unwrap_err();
            assert!(e.contains("media directory"), "{bad}: {e}");
        }
        for url in [
            "http://127.0.0.1:9/x.wav",
            "http://localhost:9/x.wav",
            "http://[::1]:9/x.wav",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/x.wav",
        ] {
            let e = l.fetch(url).await.unwrap_err();
            assert!(e.contains("not a public address"), "{url}: {e}");
        }
        assert!(l
            .fetch("gopher://x/y")
            .await
            .unwrap_err()
            .contains("scheme"));
    }
}
