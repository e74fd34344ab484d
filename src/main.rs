//! `admp`: serve the hub, or talk to one.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let _ = dotenvy::dotenv();
    let cli = admp::client::cli::Cli::parse();
    admp::client::cli::run(cli)
}
