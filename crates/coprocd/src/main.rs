//! `coprocd`: serves vcoprocs on the configured pcoprocs to local processes
//! over a Unix socket. See `docs/protocol.md` and `docs/daemon.md`.

use clap::Parser;
use coprocd::{config, daemon, server};
use std::path::PathBuf;
use std::sync::Arc;

/// coprocd: the coproc daemon.
#[derive(Debug, Parser)]
#[command(name = "coprocd", version)]
struct Args {
    /// Configuration file (TOML); without it the built-in default is used.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Socket path (overrides the configuration).
    #[arg(short, long)]
    socket: Option<PathBuf>,
    /// Print the built-in configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

/// How much lower than the data path the control path's threads run (a
/// nice increment for the tokio threads that serve sessions).
const CONTROL_NICE: i32 = 5;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("coprocd: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", config::DEFAULT);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COPROC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            config::Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => config::Config::default_config(),
    };
    if args.check {
        println!(
            "configuration ok: {} pcoprocs, {} domain rules",
            cfg.pcoprocs.len(),
            cfg.domains.len()
        );
        return Ok(());
    }
    let uid = rustix::process::getuid().as_raw();
    let socket = args
        .socket
        .or_else(|| cfg.daemon.socket.clone())
        .unwrap_or_else(|| coproc_proto::default_socket(uid));
    let daemon = Arc::new(daemon::Daemon::start(cfg)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The control path (sessions, their blocking requests) yields the
        // CPU to the data path (runner threads, completion writers) when
        // they compete: one domain's flood of requests costs the others'
        // round trips as little as the host allows. Raising a thread's nice
        // value needs no privilege; a failure only leaves it as it was.
        .on_thread_start(|| {
            let _ = rustix::process::nice(CONTROL_NICE);
        })
        .build()?;
    rt.block_on(server::run(daemon, socket))
}
