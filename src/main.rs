//! The `distill` binary: a shim over the library (see `cli/`).

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    distill::cache::reader::install_panic_hook();
    // A write past a file-size limit (`ulimit -f`) would kill the process without a word;
    // ignored, the write fails with EFBIG and the message names the file.
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread starts has no
    // preconditions; no handler code runs.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    match cli::run(cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            cli::report(&e);
            std::process::ExitCode::FAILURE
        }
    }
}
