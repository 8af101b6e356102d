//! What the `coproc` tool shares with `coproc-bench`: its output formats.

pub mod output;
