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
    /// Configuration file (TOML); without it, /etc/coproc/coprocd.toml when
    /// that exists, else the built-in default.
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
    /// Write the man page, coprocd.8, into DIR and exit.
    #[arg(long, value_name = "DIR", hide = true)]
    man: Option<PathBuf>,
}

/// The system configuration, read when no `--config` is given and the
/// file exists.
const SYSTEM_CONFIG: &str = "/etc/coproc/coprocd.toml";

/// How much lower than the data path the control path's threads run (a
/// nice increment for the tokio threads that serve sessions).
const CONTROL_NICE: i32 = 5;

/// A writer whose errors are dropped: what cannot be logged is lost, and
/// nothing downstream reports the loss on the same broken stream.
struct Quiet<W>(W);

impl<W: std::io::Write> std::io::Write for Quiet<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Panic messages go through the log, rate-limited like every line a
/// domain can trigger: some panics are contained and come from a domain's
/// input (a library panicking on a hostile shader), and the default hook
/// would write each one to stderr in full.
fn log_panics() {
    let limit = coproc_core::ratelimit::RateLimit::default();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(suppressed) = limit.check() {
            let thread = std::thread::current();
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            tracing::error!(
                thread = thread.name().unwrap_or("?"),
                location,
                suppressed,
                "panic: {message}"
            );
        }
    }));
}

/// Raise the soft descriptor limit to the hard one: every mapping and
/// queue holds descriptors, and the default soft limit (1 024) is far below
/// what the per-uid limits allow together.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "cannot raise the descriptor limit");
        }
    }
    let l = getrlimit(Resource::Nofile);
    tracing::debug!(soft = ?l.current, hard = ?l.maximum, "descriptor limit");
}

/// Log lines go through a thread of their own with a bounded queue that
/// drops what does not fit: a slow or closed stderr (a pipe whose reader
/// stopped or exited) never blocks or panics a thread that serves domains.
/// The format: one JSON object per line with `COPROC_LOG_FORMAT=json`;
/// under systemd's journal (`JOURNAL_STREAM` set) no timestamps and no
/// colour, the journal adds its own; else text, coloured only on a
/// terminal.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(4096)
        .thread_name("coprocd-log")
        .finish(Quiet(std::io::stderr()));
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COPROC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .log_internal_errors(false)
        .with_writer(writer);
    if std::env::var("COPROC_LOG_FORMAT").is_ok_and(|f| f == "json") {
        log.json().with_current_span(false).init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        log.without_time().with_ansi(false).init();
    } else {
        log.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    guard
}

fn main() {
    coprocd::trim::without_thread_caches();
    coprocd::trim::limit_arenas();
    if let Err(e) = real_main() {
        // A closed stderr loses the message, never turns it into a panic.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "coprocd: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.man {
        use clap::CommandFactory;
        std::fs::create_dir_all(dir)?;
        let mut out = Vec::new();
        clap_mangen::Man::new(Args::command())
            .section("8")
            .render(&mut out)?;
        std::fs::write(dir.join("coprocd.8"), out)?;
        return Ok(());
    }
    if args.print_default_config {
        print!("{}", config::DEFAULT);
        return Ok(());
    }
    let _log_guard = init_logging();
    raise_fd_limit();
    log_panics();
    let system = std::path::Path::new(SYSTEM_CONFIG);
    let config = args
        .config
        .clone()
        .or_else(|| system.exists().then(|| system.to_path_buf()));
    let cfg = match &config {
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
