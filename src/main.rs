//! The `distill` binary: a shim over the library (see `cli.rs`).

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    distill::cache::reader::install_panic_hook();
    match cli::run(cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            cli::report(&e);
            std::process::ExitCode::FAILURE
        }
    }
}
