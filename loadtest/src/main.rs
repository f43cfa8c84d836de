//! carrier-loadtest: see the crate docs (`loadtest`) and `--help`.

use std::process::ExitCode;

use clap::Parser;
use loadtest::cli::Args;
use loadtest::run::{check, run, write_outputs};

/// The tool shares the machine with the server it measures: jemalloc
/// halves what glibc's malloc cost it (it was ~15 % of its CPU).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(why) = check(&args) {
        eprintln!("carrier-loadtest: {why}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("carrier-loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(result)) => {
            println!("{}", result.table());
            if let Err(e) = write_outputs(&args, &result) {
                eprintln!("carrier-loadtest: {e:#}");
                return ExitCode::from(2);
            }
            if result.clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("carrier-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
