//! `coproc-bench`: the demo and the benchmarks of the shared coprocessor
//! framework. They drive the device classes in-process beside the daemon
//! (in-process baselines, simulated devices), so this binary links Unicorn
//! and Vulkan; the `coproc` tool links neither and runs this one for
//! `coproc demo` and `coproc bench`.

// Casts of the benchmarks' own sizes, counts and figures; no domain input.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod bench;
mod demo;
mod faults;
mod figures;
mod gpubench;
mod hostload;
mod isolation;
mod membench;
mod offender;
mod remote;
mod ring;
mod samples;
mod schedbench;
mod soak;
mod spawn;

use clap::{Parser, Subcommand};
use coproc_cli::output::{self, Format};

/// coproc-bench: the coproc demo and benchmarks (`coproc demo` and
/// `coproc bench` run this binary).
#[derive(Debug, Parser)]
#[command(name = "coproc-bench", version)]
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
    /// host reference.
    Demo(demo::Args),
    /// Run a benchmark and print its figures.
    Bench(bench::Args),
    /// Run one example domain's workload through the daemon (used by the
    /// demo and the tests).
    #[command(hide = true)]
    DomainRun(remote::DomainArgs),
    /// A client that opens vcoprocs with queues and keeps them busy until
    /// killed (the `kill` offender of `bench isolation`).
    #[command(hide = true)]
    IsolationChild(isolation::ChildArgs),
    /// Write every example firmware image into DIR: mcu ELF images as
    /// NAME.elf, GPU ones as NAME.wgsl or NAME.spv (for packages).
    #[command(hide = true)]
    ExportFirmware {
        /// Directory.
        dir: std::path::PathBuf,
    },
}

/// [`Command::ExportFirmware`].
fn export_firmware(dir: &std::path::Path) -> anyhow::Result<()> {
    use coproc_firmware::gpu::Source;
    std::fs::create_dir_all(dir)?;
    for f in coproc_firmware::ALL {
        std::fs::write(dir.join(format!("{}.elf", f.name)), f.elf)?;
    }
    for f in coproc_firmware::gpu::ALL {
        let ext = match f.source {
            Source::Wgsl => "wgsl",
            Source::Spirv => "spv",
        };
        std::fs::write(dir.join(format!("{}.{ext}", f.name)), f.image)?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("coproc-bench: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    // Before any thread exists (the environment is not safe to change
    // once others may read it).
    gpubench::lavapipe_threads_for_overhead(std::env::args());
    coproc_cli::init_logging();
    let cli = Cli::parse();
    let f = cli.output;
    let socket = || {
        cli.socket
            .clone()
            .unwrap_or_else(coproc_client::default_socket)
    };
    let ok = match cli.command {
        Command::Demo(args) => demo::run(&args, f)?,
        Command::Bench(args) => bench::run(&args, f)?,
        Command::DomainRun(args) => {
            remote::domain_run(coproc_client::Client::connect_to(&socket())?, &args, f)?
        }
        Command::IsolationChild(args) => isolation::child(&socket(), &args)?,
        Command::ExportFirmware { dir } => {
            export_firmware(&dir)?;
            true
        }
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
