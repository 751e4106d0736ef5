//! Transcribes 16 kHz mono WAV files: `cargo run -p voxgate-speech --example transcribe -- A.wav ...`.
use voxgate_media::speech::Transcriber;
fn main() {
    let env =
        voxgate_speech::runtime::environment(std::path::Path::new("models/libonnxruntime.so"))
            .unwrap();
    let m = voxgate_speech::moonshine::Moonshine::load(
        env,
        std::path::Path::new("models/moonshine-base"),
        1,
        std::env::var("THREADS").map_or(1, |t| t.parse().unwrap()),
    )
    .unwrap();
    for f in std::env::args().skip(1) {
        let r = hound::WavReader::open(&f).unwrap();
        let s: Vec<f32> = r
            .into_samples::<i16>()
            .map(|x| x.unwrap() as f32 / 32768.0)
            .collect();
        let t = std::time::Instant::now();
        let text = m.transcribe(&s).unwrap();
        println!(
            "{:.2}s for {:.2}s: {text}",
            t.elapsed().as_secs_f32(),
            s.len() as f32 / 16000.0
        );
    }
}
