//! The `idguard` binary: the command line, dev mode, the gateway and the admin endpoints.

mod access;
mod admin;
mod entra;
mod listen;
mod metrics;
mod policy;
mod review;
mod scaffold;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// With `--features mimalloc`, mimalloc instead of the system allocator (off by default:
/// `benches/load/README.md` has the figures).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Policy author tools: validate, test, explain, diff, matrix, schema.
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
    /// Report every problem `serve` would refuse (file, IDGUARD_* environment, policy
    /// directory), each named as written.
    Check {
        /// The configuration file (default: `idguard.toml`).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a fresh token for a demo user or app from a running dev-mode server.
    Mint {
        /// Who: `alice` (Tools.Admin, MFA) or `bob` (Tools.Read) of tenant Contoso, the
        /// daemon app `reporter` (app-only, Tools.Read), or `carol` of tenant Fabrikam
        /// (dev mode accepts Contoso only: her token shows a wrong-tenant refusal).
        #[arg(long, visible_alias = "app")]
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
fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = Cli::parse();
    // Tools print their own results; only a server logs at info by default.
    init_tracing(match cli.command {
        Some(Command::Policy(_) | Command::Entra(_) | Command::Config(_) | Command::Token(_)) => {
            "idguard=warn"
        }
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
    // Colours only for a person at a terminal: not in files, pipes or log collectors.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    access::set_colour(colour);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(access::WithRequestId::default())
        .with_timer(access::UtcTime)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init();
}

/// Output piped into a reader that stopped (`idguard policy test | head`): end quietly
/// with the status a shell gives a process ended by `SIGPIPE` (128 + 13), as other
/// command-line tools do, rather than with a panic. Rust ignores `SIGPIPE`, so the write
/// fails, and `println!` panics on a failed write.
fn quiet_broken_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        previous(info);
    }));
}
