//! The `oomguard` command line: argument parsing and dispatch only; the work lives in the
//! library modules ([`oomguard_cli::run`], [`oomguard_cli::pgcluster`]).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "oomguard",
    version,
    about = "Make PostgreSQL's malloc fail before the cgroup OOM killer strikes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run COMMAND with liboomguard.so preloaded (after validating OOM_GUARD_* settings).
    Run {
        /// The preload library [default: $OOM_GUARD_LIBRARY, next to this executable, its
        /// ../lib/oomguard/, /usr/lib/<multiarch>/oomguard/, /usr/lib/oomguard/].
        #[arg(long, value_name = "PATH")]
        library: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<OsString>,
    },
    /// Show the guard's limit, usage and denials (not implemented yet).
    Status,
    /// Demonstrate the guard on a throwaway PostgreSQL cluster (not implemented yet).
    Demo,
}

fn not_implemented(name: &str) -> ExitCode {
    eprintln!("oomguard {name}: not implemented yet");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run { library, command } => {
            let err = oomguard_cli::run::run(library.as_deref(), &command);
            eprintln!("oomguard run: {err}");
            // Like env(1) and nohup(1): 127 if the command was not found, 126 otherwise.
            match err {
                oomguard_cli::run::RunError::Exec { ref source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    ExitCode::from(127)
                }
                _ => ExitCode::from(126),
            }
        }
        Cmd::Status => not_implemented("status"),
        Cmd::Demo => not_implemented("demo"),
    }
}
