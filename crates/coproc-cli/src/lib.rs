//! What the `coproc` tool shares with `coproc-bench`: its output formats
//! and its logging set-up.

pub mod output;

/// Log to stderr, filtered by `COPROC_LOG` (nothing by default).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("COPROC_LOG"))
        .with_writer(std::io::stderr)
        .init();
}
