//! Entry point: parse the command line, run, exit with the code the run chose (see `app`).
#![forbid(unsafe_code)]

use clap::Parser;
use clap::error::ErrorKind;

fn main() {
    let cli = match egress_warden::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => egress_warden::EXIT_OK,
                _ => egress_warden::EXIT_USAGE,
            };
            std::process::exit(code);
        }
    };
    std::process::exit(egress_warden::main_with(cli));
}
