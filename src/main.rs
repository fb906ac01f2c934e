//! The `tether` command line: parse, load, log, run; exit 2 on a bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod allocator;

#[global_allocator]
static ALLOC: allocator::Mimalloc = allocator::Mimalloc;

#[derive(Parser)]
#[command(name = "tether", version, about = "A sticky-session reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGTERM/SIGINT.
    Run {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and print the effective configuration.
    Check {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Start three demo backends and a proxy on https://localhost:8443.
    Demo,
    /// Print a new random secret (256 bits) for `[session] secret_file`.
    Secret,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tether::release::set(allocator::release);
    match cli.command {
        Command::Secret => match tether::keys::new_secret() {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tether: the OS random number generator failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match tether::config::load(&config) {
            Ok(c) => {
                print!("{}", c.effective_toml());
                eprintln!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => tether::server::run_file(&config),
        Command::Demo => {
            tether::log::init(false);
            let rt = match tether::server::runtime(0) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tether: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(tether::demo::run(tether::server::terminate_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tether demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
