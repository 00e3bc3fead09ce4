//! `kairos-bench`: throughput, lateness, memory and restart time of the embedded default, or
//! of a local cluster (`--scenario cluster`). A separate binary: the product binary `kairos`
//! carries no benchmark code.

mod bench;
mod cluster;
mod disk;

use std::process::ExitCode;

use clap::Parser;

/// The allocator the product binary uses (`host/src/main.rs`), so the embedded scenarios
/// measure the node as it ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "kairos-bench", version, about)]
struct Cli {
    #[command(flatten)]
    args: bench::BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kairos::cli::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench::run(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
