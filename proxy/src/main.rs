//! Thin entry point of `writebehind-proxy`.
fn main() {
    eprintln!("writebehind-proxy: not built yet");
    std::process::exit(2);
}
