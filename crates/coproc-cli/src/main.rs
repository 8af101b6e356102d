//! `coproc`: the command-line tool of the shared coprocessor framework.

//!
//! It talks to the daemon and links no device code. `coproc demo` and
//! `coproc bench` run `coproc-bench`, the binary beside this one that
//! holds the demo and the benchmarks (and links the device classes).

mod events;
mod top;
mod verbs;

use clap::{Parser, Subcommand};
use coproc_cli::output::{self, Format};
use std::ffi::OsString;

/// coproc: share one coprocessor between many mutually distrusting domains.
#[derive(Debug, Parser)]
#[command(name = "coproc", version)]
struct Cli {
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Daemon socket (default: $COPROC_SOCKET, else the daemon's default).
    #[arg(long, global = true)]
    socket: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run several domains with different firmware on an mcu pcoproc (and a
    /// GPU one where Vulkan is present) and check every result against the
    /// host reference (runs `coproc-bench demo`; `coproc demo --help`).
    #[command(disable_help_flag = true)]
    Demo(Forwarded),
    /// Run a benchmark and print its figures (runs `coproc-bench bench`;
    /// `coproc bench --help` lists them).
    #[command(disable_help_flag = true)]
    Bench(Forwarded),
    /// List the pcoprocs this domain may use.
    List,
    /// List vcoprocs (admins: all; others: their own).
    VcoprocList {
        /// Only this domain (uid).
        #[arg(long)]
        domain: Option<u32>,
        /// Only this pcoproc.
        #[arg(long)]
        coproc: Option<String>,
    },
    /// List domains with sessions or vcoprocs.
    DomainList,
    /// Show a pcoproc's policy, parameters and vcoproc standings.
    SchedGet {
        /// Pcoproc.
        coproc: String,
    },
    /// Change a pcoproc's policy (admin) while its vcoprocs run:
    /// `coproc sched-set mcu0 credit slice_us=1000`. Policies and their
    /// parameters: docs/scheduling.md.
    SchedSet {
        /// Pcoproc.
        coproc: String,
        /// Policy.
        policy: String,
        /// key=value parameters.
        params: Vec<String>,
    },
    /// Change a vcoproc's scheduling parameters (admin), effective at the
    /// next decision.
    VcoprocSet(verbs::SetArgs),
    /// Reset a vcoproc to its loaded firmware.
    VcoprocReset {
        /// Vcoproc id.
        vcoproc: u32,
    },
    /// Destroy a vcoproc.
    VcoprocDestroy {
        /// Vcoproc id.
        vcoproc: u32,
    },
    /// List fault records.
    FaultList,
    /// Run a firmware image once in a new vcoproc.
    Run(verbs::RunArgs),
    /// List mappings (admins: all; others: their own), optionally of one
    /// vcoproc.
    MappingList {
        /// Vcoproc id.
        vcoproc: Option<u32>,
    },
    /// Revoke a mapping (own: any; admins: revocable ones of any domain).
    MappingRevoke {
        /// Vcoproc id.
        vcoproc: u32,
        /// Start of the mapping (decimal or 0x hex).
        #[arg(value_parser = verbs::parse_iova)]
        iova: u64,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell):
    /// `coproc completions bash > /usr/share/bash-completion/completions/coproc`.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (coproc.1 and coproc-VERB.1 for each verb) into
    /// DIR.
    #[command(hide = true)]
    Man {
        /// Directory.
        dir: std::path::PathBuf,
    },
    /// A live view of pcoprocs and vcoprocs: current share, state, faults,
    /// doorbell rates; keys sort, `q` quits; `--once` prints one frame.
    Top(top::TopArgs),
    /// Follow the daemon's events: vcoproc state changes, faults, revokes,
    /// policy and parameter changes (own domain's; admins: all); one line
    /// each, JSON lines with `-o json`.
    Events(events::EventsArgs),
    /// `coproc-bench domain-run`: one example domain's workload through the
    /// daemon (used by the demo and the tests).
    #[command(hide = true, disable_help_flag = true)]
    DomainRun(Forwarded),
}

/// The arguments of a verb `coproc-bench` carries out, passed on as given.
#[derive(Debug, clap::Args)]
struct Forwarded {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Replace this process with `coproc-bench VERB ARGS`, the global options
/// passed on first. `coproc-bench` is looked for beside this binary, then
/// on `PATH`.
fn forward(cli: &Cli, verb: &str, rest: &[OsString]) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name("coproc-bench"))
        .filter(|p| p.is_file());
    let bin = beside.unwrap_or_else(|| "coproc-bench".into());
    let mut c = std::process::Command::new(&bin);
    c.arg("-o").arg(match cli.output {
        Format::Table => "table",
        Format::Json => "json",
    });
    if let Some(s) = &cli.socket {
        c.arg("--socket").arg(s);
    }
    let e = c.arg(verb).args(rest).exec();
    anyhow::anyhow!(
        "cannot run {} for `coproc {verb}`: {e} (build it with `cargo build --release -p coproc-bench`)",
        bin.display()
    )
}

/// `coproc.1` and one page per visible verb, `coproc-VERB.1`, into `dir`.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let write = |name: &str, cmd: clap::Command| -> anyhow::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("coproc-{}", sub.get_name());
        write(&name, sub.clone().name(name.clone()))?;
    }
    write("coproc", cmd)
}

/// Exit statuses (docs/cli.md): distinct for each kind of failure a
/// script may want to tell apart.
mod exit {
    /// Any other failure.
    pub const OTHER: u8 = 1;
    /// Usage: a malformed command line (clap's, and arguments the verbs
    /// check themselves).
    pub const USAGE: u8 = 2;
    /// The daemon cannot be reached (no socket, refused, connection lost).
    pub const UNREACHABLE: u8 = 3;
    /// A name or id names nothing (`not-found`).
    pub const NOT_FOUND: u8 = 4;
    /// Not allowed for this domain (`permission-denied`).
    pub const PERMISSION: u8 = 5;
    /// Waited too long.
    pub const TIMEOUT: u8 = 6;
    /// The vcoproc faulted (or stopped while waited for).
    pub const FAULT: u8 = 7;
    /// A quota would be exceeded (`quota`).
    pub const QUOTA: u8 = 8;
}

/// The exit status and error-code name of a failure: the protocol's
/// documented name for the daemon's refusals, the CLI's own otherwise.
fn classify(e: &anyhow::Error) -> (u8, String) {
    use coproc_client::{ClientError, ErrorCode};
    for cause in e.chain() {
        if let Some(v) = cause.downcast_ref::<verbs::VerbError>() {
            return match v {
                verbs::VerbError::NotFound(_) => (exit::NOT_FOUND, "not-found".into()),
                verbs::VerbError::Usage(_) => (exit::USAGE, "usage".into()),
                verbs::VerbError::Timeout { .. } => (exit::TIMEOUT, "timeout".into()),
                verbs::VerbError::Fault { .. } => (exit::FAULT, "fault".into()),
            };
        }
        // top's and events' errors carry the client's transparently.
        let client = cause
            .downcast_ref::<ClientError>()
            .or_else(|| match cause.downcast_ref::<top::TopError>() {
                Some(top::TopError::Client(c)) => Some(c),
                _ => None,
            })
            .or_else(|| match cause.downcast_ref::<events::EventsError>() {
                Some(events::EventsError::Client(c)) => Some(c),
                _ => None,
            });
        if let Some(c) = client {
            return match c {
                ClientError::Connect { .. } | ClientError::Transport(_) => {
                    (exit::UNREACHABLE, "unreachable".into())
                }
                ClientError::Refused(w) => (
                    match w.code {
                        ErrorCode::NotFound => exit::NOT_FOUND,
                        ErrorCode::PermissionDenied => exit::PERMISSION,
                        ErrorCode::Quota => exit::QUOTA,
                        _ => exit::OTHER,
                    },
                    w.code.name().into(),
                ),
                ClientError::Timeout(_) => (exit::TIMEOUT, "timeout".into()),
                ClientError::Stopped { .. } => (exit::FAULT, "fault".into()),
                _ => (exit::OTHER, "other".into()),
            };
        }
    }
    (exit::OTHER, "other".into())
}

fn main() {
    if let Err(e) = real_main() {
        let (status, name) = classify(&e);
        eprintln!("coproc: error[{name}]: {e:#}");
        std::process::exit(i32::from(status));
    }
}

fn real_main() -> anyhow::Result<()> {
    coproc_cli::init_logging();
    let cli = Cli::parse();
    let f = cli.output;
    let connect = || -> anyhow::Result<coproc_client::Client> {
        // The named socket, else the per-user daemon's and then the
        // system daemon's (coproc_client::socket_candidates).
        Ok(match &cli.socket {
            Some(path) => coproc_client::Client::connect_to(path)?,
            None => coproc_client::Client::connect()?,
        })
    };
    let ok = match cli.command {
        Command::Demo(ref a) => return Err(forward(&cli, "demo", &a.args)),
        Command::Bench(ref a) => return Err(forward(&cli, "bench", &a.args)),
        Command::DomainRun(ref a) => return Err(forward(&cli, "domain-run", &a.args)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "coproc", &mut std::io::stdout());
            true
        }
        Command::Man { ref dir } => {
            write_man_pages(dir)?;
            true
        }
        Command::List => verbs::list(&mut connect()?, f)?,
        Command::VcoprocList { domain, coproc } => {
            verbs::vcoproc_list(&mut connect()?, f, domain, coproc.as_deref())?
        }
        Command::DomainList => verbs::domain_list(&mut connect()?, f)?,
        Command::SchedGet { coproc } => verbs::sched_get(&mut connect()?, f, &coproc)?,
        Command::SchedSet {
            coproc,
            policy,
            params,
        } => verbs::sched_set(&mut connect()?, f, &coproc, &policy, &params)?,
        Command::VcoprocSet(args) => verbs::vcoproc_set(&mut connect()?, f, &args)?,
        Command::VcoprocReset { vcoproc } => {
            connect()?.reset(vcoproc)?;
            true
        }
        Command::VcoprocDestroy { vcoproc } => {
            connect()?.destroy(vcoproc)?;
            true
        }
        Command::FaultList => verbs::fault_list(&mut connect()?, f)?,
        Command::Run(args) => verbs::run(&mut connect()?, f, &args)?,
        Command::Top(a) => top::top(&mut connect()?, f, &a)?,
        Command::Events(a) => events::events(&mut connect()?, f, &a)?,
        Command::MappingList { vcoproc } => verbs::mapping_list(&mut connect()?, f, vcoproc)?,
        Command::MappingRevoke { vcoproc, iova } => {
            verbs::mapping_revoke(&mut connect()?, f, vcoproc, iova)?
        }
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
