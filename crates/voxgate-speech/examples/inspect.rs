//! Prints a model's inputs and outputs: `cargo run -p voxgate-speech --example inspect -- MODEL`.
fn main() {
    let path = std::env::args().nth(1).expect("model path");
    let env =
        voxgate_speech::runtime::environment(std::path::Path::new("models/libonnxruntime.so"))
            .unwrap();
    let s = voxgate_speech::runtime::load(env, std::path::Path::new(&path), 1).unwrap();
    for i in s.inputs() {
        println!("in  {} {:?}", i.name(), i.dtype());
    }
    for o in s.outputs() {
        println!("out {} {:?}", o.name(), o.dtype());
    }
}
