//! Synthesises text to a 16-bit WAV: `cargo run -p voxgate-speech --example speak -- piper|flite OUT.wav TEXT`.
use voxgate_media::speech::Synthesizer;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let env =
        voxgate_speech::runtime::environment(std::path::Path::new("models/libonnxruntime.so"))
            .unwrap();
    let s: Box<dyn Synthesizer> = if a[1] == "piper" {
        Box::new(
            voxgate_speech::piper::Piper::load(
                env,
                std::path::Path::new("models/piper/en_US-joe-medium.onnx"),
                std::path::Path::new("espeak-ng"),
                1,
                2,
            )
            .unwrap(),
        )
    } else {
        Box::new(
            voxgate_speech::flite::Flite::new(std::path::Path::new("flite"), &std::env::temp_dir())
                .unwrap(),
        )
    };
    let t = std::time::Instant::now();
    let f = s.synthesize(&a[3], None).unwrap();
    eprintln!(
        "{:.3}s for {:.2}s of audio",
        t.elapsed().as_secs_f32(),
        f.duration().as_secs_f32()
    );
    let mut w = hound::WavWriter::create(
        &a[2],
        hound::WavSpec {
            channels: 1,
            sample_rate: f.rate.hz(),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
    )
    .unwrap();
    for x in f.samples {
        w.write_sample(x).unwrap();
    }
}
