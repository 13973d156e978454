//! `cargo xtask bench`: filled in by the benchmark work (see BenchArgs).
use std::process::ExitCode;

use anyhow::Result;

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Small sizes, few runs: proves the bench works (the test command runs it).
    #[arg(long)]
    pub quick: bool,
}

impl BenchArgs {
    /// The options the test command uses.
    pub fn quick() -> Self {
        Self { quick: true }
    }
}

/// Runs the benchmarks.
pub fn run(_args: &BenchArgs) -> Result<ExitCode> {
    anyhow::bail!("cargo xtask bench is not written yet")
}
