//! The `idguard` command line. Not a public API: the binary calls [`main`].

mod policy;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Microsoft Entra ID identity and Cedar policies in front of MCP servers and APIs.
#[derive(Debug, Parser)]
#[command(name = "idguard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run idguard (the default). Without configuration: dev mode with a local Entra emulator.
    Serve(serve::ServeArgs),
    /// Policy author tools: validate, test, explain, schema.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Tools print their own results; only a server logs at info by default.
    init_tracing(match cli.command {
        Some(Command::Policy(_)) => "idguard=warn",
        _ => "idguard=info",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Serve(args)) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
            Some(Command::Policy(command)) => policy::run(command).await,
            None => serve::run(serve::ServeArgs::default())
                .await
                .map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
