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
    /// `[upstream]` or `[[upstream]]`, checked.
    pub upstream: crate::gateway::UpstreamsSettings,
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
        use crate::gateway::{UpstreamSettings, UpstreamsSettings};
        let (credentials, single): (Vec<(String, &UpstreamSettings)>, bool) = match &upstream {
            UpstreamsSettings::One(_, c) => (vec![("upstream.credential".into(), &**c)], true),
            UpstreamsSettings::Many(entries) => (
                entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (format!("upstream[{i}].credential"), &e.credential))
                    .collect(),
                false,
            ),
        };
        for (key, credential) in credentials {
            if matches!(credential, UpstreamSettings::Obo(_)) && config.obo.is_none() {
                problems.push(ConfigProblem::new(
                    key.clone(),
                    "`obo` exchanges the caller's token with idguard's own app: configure `[obo]` (its client secret or certificate)",
                ));
            }
            if single && !matches!(credential, UpstreamSettings::None) && server.upstream.is_none()
            {
                problems.push(ConfigProblem::new(
                    key,
                    "has no effect without `server.upstream` (gateway mode)",
                ));
            }
        }
    }
    if matches!(config.upstream, crate::gateway::Upstreams::Many(_)) && server.upstream.is_some() {
        problems.push(ConfigProblem::new(
            "server.upstream",
            "not used with `[[upstream]]` entries: each entry names its own `url`",
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml: &str, env: &[(&str, &str)]) -> Result<Checked, Vec<String>> {
        let path = std::env::temp_dir().join(format!("idguard-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, toml).unwrap();
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        let checked = check_binary(Some(&path), env, &Overrides::default(), true);
        let _ = std::fs::remove_file(&path);
        checked.map_err(|e| e.problems().iter().map(|p| p.key().to_owned()).collect())
    }

    #[test]
    fn upstream_entries_are_read_and_named_by_index() {
        let entries = r#"
            [[upstream]]
            name = "github"
            url = "http://127.0.0.1:9001/mcp"
            [[upstream]]
            name = "docs"
            url = "http://127.0.0.1:9002/mcp"
            idle_timeout = "1m"
        "#;
        let checked = problems(entries, &[]).unwrap();
        let crate::gateway::UpstreamsSettings::Many(named) = checked.upstream else {
            panic!("entries");
        };
        let names: Vec<&str> = named.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["github", "docs"]);

        let bad = format!(
            "[server]\nupstream = \"http://127.0.0.1:9/mcp\"\n{entries}\n[[upstream]]\nname = \"docs\"\nnme = \"x\"\n"
        );
        let keys = problems(&bad, &[("IDGUARD_UPSTREAM_TIMEOUT", "5s")]).unwrap_err();
        assert_eq!(
            keys,
            [
                "IDGUARD_UPSTREAM_TIMEOUT",
                "upstream[2].nme",
                "upstream[2].name",
                "upstream[2].url",
                "server.upstream"
            ]
        );

        // A single `[upstream]` table reads as before.
        let one = problems("[upstream]\ncredential = \"none\"\nname = \"solo\"\n", &[]).unwrap();
        assert!(matches!(
            one.upstream,
            crate::gateway::UpstreamsSettings::One(Some(ref n), ref c)
                if n == "solo" && matches!(**c, crate::gateway::UpstreamSettings::None)
        ));
    }
}
