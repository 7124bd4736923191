//! Logging: `tracing` events to stderr, as text or JSON lines, filtered by `RUST_LOG`
//! (or the configured filter when `RUST_LOG` is unset).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Returns false if one was already installed (e.g. by a
/// test harness), which is not an error.
pub fn init(format: LogFormat, default_filter: &str) -> bool {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(&env).unwrap_or_else(|e| {
            eprintln!("nymstr-node: RUST_LOG={env:?} is not a valid filter ({e}); using {default_filter:?}");
            EnvFilter::new(default_filter)
        }),
        _ => EnvFilter::new(default_filter),
    };
    // Colours only for a person at a terminal, never into journald or a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder.json().with_current_span(false).try_init().is_ok(),
    }
}
