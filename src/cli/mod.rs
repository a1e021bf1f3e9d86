//! The `idguard` command line. Not a public API: the binary calls [`main`].

mod entra;
mod listen;
mod metrics;
mod policy;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Microsoft Entra ID identity and Cedar policies in front of MCP servers and APIs.
#[derive(Debug, Parser)]
#[command(
    name = "idguard",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command: `serve` with these options.
    #[command(flatten)]
    serve: serve::ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run idguard (the default). Without configuration: dev mode with a local Entra emulator.
    Serve(serve::ServeArgs),
    /// Policy author tools: validate, test, explain, schema.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Entra app registration: manifest, consent-url, doctor.
    #[command(subcommand)]
    Entra(entra::EntraCommand),
    /// Configuration: check.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Tokens (dev mode only): mint.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Report every problem of the configuration (file and IDGUARD_* environment), each
    /// with its key.
    Check {
        /// The configuration file (default: `idguard.toml`).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a fresh token for a demo user from a running dev-mode server.
    Mint {
        /// The demo user: alice, bob or carol.
        #[arg(long)]
        user: String,
        /// The dev-mode server.
        #[arg(long, default_value = "http://127.0.0.1:8400")]
        url: String,
        /// Lifetime in seconds (at most a day).
        #[arg(long, default_value_t = 3600)]
        lifetime: u64,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Tools print their own results; only a server logs at info by default.
    init_tracing(match cli.command {
        Some(Command::Policy(_) | Command::Entra(_) | Command::Config(_) | Command::Token(_)) => {
            "idguard=warn"
        }
        _ => "idguard=info,tower_http=info",
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
            Some(Command::Entra(command)) => entra::run(command).await,
            Some(Command::Config(ConfigCommand::Check { config })) => {
                Ok(entra::config_check(config))
            }
            Some(Command::Token(TokenCommand::Mint {
                user,
                url,
                lifetime,
            })) => entra::mint(&url, &user, lifetime).await,
            None => serve::run(cli.serve).await.map(|()| ExitCode::SUCCESS),
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
