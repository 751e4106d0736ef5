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

/// Fetches over HTTP(S) with the server's client, reads files, decodes on the blocking pool.
pub struct Loader {
    pub http: reqwest::Client,
}

#[async_trait::async_trait]
impl voxgate_call::AudioLoader for Loader {
    async fn load(&self, url: &str) -> Result<Vec<i16>, String> {
        let bytes = fetch(&self.http, url).await?;
        let hint = url.to_string();
        tokio::task::spawn_blocking(move || decode_to_16k(bytes, &hint))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    }
}

/// Largest file `play` accepts, bytes (about 10 minutes of 44.1 kHz stereo WAV).
pub const MAX_BYTES: usize = 100 * 1024 * 1024;

/// Fetches the bytes behind `url`.
///
/// # Errors
/// A message with the cause: bad URL, HTTP status, I/O error, or a file over [`MAX_BYTES`].
pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let bytes = if url.starts_with("http://") || url.starts_with("https://") {
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
        resp.bytes()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?
            .to_vec()
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
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        if meta.len() as usize > MAX_BYTES {
            return Err(format!("{path} is larger than {MAX_BYTES} bytes"));
        }
        tokio::fs::read(&path)
            .await
            .map_err(|e| format!("{path}: {e}"))?
    };
    if bytes.len() > MAX_BYTES {
        return Err(format!("{url} is larger than {MAX_BYTES} bytes"));
    }
    Ok(bytes)
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
