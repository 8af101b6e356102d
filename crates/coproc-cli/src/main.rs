//! `coproc`: the command-line tool of the shared coprocessor framework.

mod bench;
mod demo;
mod output;

use clap::{Parser, Subcommand};
use output::Format;

/// coproc: share one coprocessor between many mutually distrusting domains.
#[derive(Debug, Parser)]
#[command(name = "coproc", version)]
struct Cli {
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run several domains with different firmware on one mcu pcoproc and
    /// check every result against the host reference.
    Demo(demo::Args),
    /// Run a benchmark and print its figures.
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("COPROC_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let ok = match cli.command {
        Command::Demo(args) => demo::run(&args, cli.output)?,
        Command::Bench(args) => bench::run(&args, cli.output)?,
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
