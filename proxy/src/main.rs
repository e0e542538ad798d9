//! Thin entry point of `writebehind-proxy`: parse the configuration, set up logging, run
//! until SIGTERM/SIGINT, exit 0 after draining.

use clap::Parser;
use std::io::IsTerminal;
use tokio::signal::unix::{signal, SignalKind};
use writebehind_proxy::config::{LogFormat, Settings};
use writebehind_proxy::event_loops::EventLoops;

/// mimalloc: the per-message allocations of the session path cost about half what glibc's
/// malloc takes (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let settings = Settings::parse();
    let config = match settings.merged().and_then(Settings::validate) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("writebehind-proxy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // RUST_LOG unset, empty or invalid: `info` (an empty filter would log nothing at all).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    // Every session stays on one event loop (a current-thread runtime: its sockets polled
    // and its replies sent by one thread, as PgBouncer does): this thread's and `threads - 1`
    // more, handed out in turn (docs/BENCHMARKS.md measures it against a work-stealing pool).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("writebehind-proxy: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let loops = match EventLoops::start(threads - 1) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("writebehind-proxy: cannot start the event-loop threads: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen).await?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        writebehind_proxy::signals::ignore_until_served();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: draining");
            let _ = tx.send(true);
        });
        writebehind_proxy::run(config, listener, loops, rx).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writebehind-proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
