//! What the `idguard` binary checks: `idguard serve` and `idguard config check` both run
//! [`check_binary`], so they accept the same configurations and report every problem at once.

use std::path::PathBuf;

use super::load::Loaded;
use super::{IdGuardConfig, Origins, ResolvedConfig, ServerSettings};
use crate::error::{ConfigError, ConfigProblem};
use crate::mcp::config::McpSettings;

/// What the `idguard` binary runs with, every key checked. `idguard serve` and `idguard
/// config check` both build it with [`check_binary`], so a configuration `config check`
/// accepts is one `serve` starts with.
#[derive(Debug)]
pub struct Checked {
    /// The configuration as read.
    pub config: IdGuardConfig,
    /// `None` in dev mode: the emulator stands in for `[token]`, `[obo]` and `[oauth]`.
    pub resolved: Option<ResolvedConfig>,
    /// `[server]`, checked.
    pub server: ServerSettings,
    /// `[mcp]`, checked.
    pub mcp: McpSettings,
    /// `[upstream]`, checked.
    pub upstream: crate::gateway::UpstreamSettings,
    /// Where each key came from.
    pub origins: Origins,
}

/// Command-line options that stand in for keys (`--port`, `--policies`, `--denials`,
/// `--unknown-methods`); problems with them are named by the option.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--port`.
    pub port: Option<u16>,
    /// `--policies`.
    pub policies: Option<PathBuf>,
    /// `--denials`.
    pub denials: Option<crate::mcp::Denials>,
    /// `--unknown-methods`.
    pub unknown_methods: Option<crate::mcp::UnknownMethods>,
}

/// Reads and checks everything the binary needs: the file and the `IDGUARD_*`
/// environment (unknown keys, types), `[server]` and `[mcp]`, the policy directory (it
/// must load), and outside dev mode [`IdGuardConfig::resolve`]. Every problem at once, each
/// named as the operator wrote it: `IDGUARD_MCP_DENIALS` when the environment set it,
/// `mcp.denials` when the file did, `--policies` for an option.
///
/// # Errors
///
/// A [`ConfigError`] with every problem.
pub fn check_binary(
    path: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
    dev: bool,
) -> Result<Checked, ConfigError> {
    let Loaded {
        config,
        origins,
        mut problems,
    } = IdGuardConfig::read(path, env)?;
    let mut server = config.server.check(&mut problems);
    let mut mcp = config.mcp.check(&mut problems);
    let upstream = config.upstream.check(&mut problems);
    if !dev {
        if matches!(upstream, crate::gateway::UpstreamSettings::Obo(_)) && config.obo.is_none() {
            problems.push(ConfigProblem::new(
                "upstream.credential",
                "`obo` exchanges the caller's token with idguard's own app: configure `[obo]` (its client secret or certificate)",
            ));
        }
        if !matches!(upstream, crate::gateway::UpstreamSettings::None) && server.upstream.is_none()
        {
            problems.push(ConfigProblem::new(
                "upstream.credential",
                "has no effect without `server.upstream` (gateway mode)",
            ));
        }
    }
    let resolved = if dev {
        None
    } else {
        match config.clone().resolve() {
            Ok(r) => Some(r),
            Err(e) => {
                // A key left out for its type shows once, not again as "required".
                let known: Vec<String> = problems.iter().map(|p| p.key().to_owned()).collect();
                for p in e.problems() {
                    if !known.iter().any(|k| k == p.key()) && !problems.contains(p) {
                        problems.push(p.clone());
                    }
                }
                None
            }
        }
    };
    if let Some(port) = overrides.port {
        server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    }
    let policies_key = if overrides.policies.is_some() {
        "--policies"
    } else {
        "server.policies"
    };
    if let Some(dir) = &overrides.policies {
        server.policies.clone_from(dir);
    }
    if let Some(d) = overrides.denials {
        mcp.denials = d;
    }
    if let Some(u) = overrides.unknown_methods {
        mcp.unknown_methods = u;
    }
    let dir = &server.policies;
    if !dir.as_os_str().is_empty() {
        if !dir.is_dir() {
            problems.push(ConfigProblem::new(
                policies_key,
                format!(
                    "`{}` is not a directory: the Cedar policies (`schema.cedarschema` and `*.cedar`; start from a copy of idguard's `policies/`)",
                    dir.display()
                ),
            ));
        } else if let Err(e) = crate::policy::PolicyEngine::from_dir(dir) {
            let mut message = format!(
                "the policies in `{}` do not load (`idguard policy validate {}` shows them):",
                dir.display(),
                dir.display()
            );
            for p in e.problems() {
                message.push_str(&format!("\n      {}/{p}", dir.display()));
            }
            problems.push(ConfigProblem::new(policies_key, message));
        }
    }
    if problems.is_empty() {
        Ok(Checked {
            config,
            resolved,
            server,
            mcp,
            upstream,
            origins,
        })
    } else {
        Err(ConfigError::from_problems(origins.rename(problems)))
    }
}
