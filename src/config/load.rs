//! Reading a configuration: the TOML file and the `IDGUARD_<SECTION>_<KEY>` environment,
//! with every unknown key (and a "did you mean") and every badly typed value reported at
//! once, each named as the operator wrote it.

use std::collections::BTreeMap;

use super::{IdGuardConfig, ServerConfig};
use crate::error::{ConfigError, ConfigProblem};
use crate::mcp::config::McpConfig;
use crate::oauth::config::OAuthConfig;
use crate::obo::config::OboConfig;
use crate::token::config::TokenConfig;

/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: [&str; 11] = [
    "audiences",
    "trusted_proxies",
    "session_keys",
    "allowed_hosts",
    "allowed_tenants",
    "required_scopes",
    "required_roles",
    "keys",
    "consent_scopes",
    "scopes",
    "allowed_redirect_hosts",
];

/// Sections of the configuration, as written in the file.
const SECTIONS: [&str; 7] = [
    "token", "server", "mcp", "obo", "oauth", "upstream", "store",
];

/// Where the keys of a configuration came from, so that problems name what the operator
/// wrote: the environment variable (`IDGUARD_MCP_DENIALS`) or the file's key
/// (`mcp.denials`).
#[derive(Clone, Debug, Default)]
pub struct Origins {
    /// `section.key` → the environment variable that set it.
    env: BTreeMap<String, String>,
}

impl Origins {
    /// `key` (`section.key`, or a deeper one such as `obo.apis.graph`) as the operator
    /// wrote it: the variable that set it, else the key itself.
    pub fn name(&self, key: &str) -> String {
        if let Some(var) = self.env.get(key) {
            return var.clone();
        }
        self.env
            .iter()
            .find(|(k, _)| {
                key.strip_prefix(k.as_str())
                    .is_some_and(|r| r.starts_with('.'))
            })
            .map_or_else(|| key.to_owned(), |(_, var)| var.clone())
    }

    /// The same problems, each under the name the operator wrote.
    pub fn rename(&self, problems: Vec<ConfigProblem>) -> Vec<ConfigProblem> {
        problems
            .into_iter()
            .map(|p| ConfigProblem::new(self.name(p.key()), p.message().to_owned()))
            .collect()
    }

    /// The configuration variables set in the environment.
    #[cfg(feature = "internals")]
    pub fn variables(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.env.values().map(String::as_str).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// A configuration as read, with what was wrong with it. Keys that could not be read
/// (unknown, or of the wrong type) are left out and their problems recorded, so the rest
/// can still be checked: every problem is reported at once.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub config: IdGuardConfig,
    pub origins: Origins,
    /// Problems by `section.key` (see [`Origins::rename`]).
    pub problems: Vec<ConfigProblem>,
}

/// Keys holding secrets: their type errors never quote the value.
const SECRET_KEYS: [&str; 4] = ["client_secret", "keys", "session_keys", "password"];

impl IdGuardConfig {
    /// Reads `path` (TOML; optional) and applies `IDGUARD_<SECTION>_<KEY>` environment
    /// overrides (`IDGUARD_TOKEN_CLIENT_ID` sets `token.client_id`; list keys take
    /// comma-separated values). `IDGUARD_LOG` is the log filter, not configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming every unknown key, unreadable file or badly typed value, each
    /// as the operator wrote it: the environment variable when one set it.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let loaded = Self::read(path, env)?;
        if loaded.problems.is_empty() {
            Ok(loaded.config)
        } else {
            Err(ConfigError::from_problems(
                loaded.origins.rename(loaded.problems),
            ))
        }
    }

    /// [`load`](Self::load), keeping what could be read when some keys could not.
    ///
    /// # Errors
    ///
    /// Only a file that cannot be read or is not TOML.
    pub(crate) fn read(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut problems = Vec::new();
        let mut origins = Origins::default();
        let mut table = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => match text.parse::<toml::Table>() {
                    Ok(t) => t,
                    Err(e) => {
                        return Err(ConfigError::from_problems(vec![ConfigProblem::new(
                            p.display().to_string(),
                            e.to_string().trim().replace('\n', " "),
                        )]));
                    }
                },
                Err(e) => {
                    return Err(ConfigError::from_problems(vec![ConfigProblem::new(
                        p.display().to_string(),
                        format!("cannot read: {e}"),
                    )]));
                }
            },
            None => toml::Table::new(),
        };
        // Sections first: an unknown one, or one that is not a table, is left out whole.
        let names: Vec<String> = table.keys().cloned().collect();
        for name in names {
            if !SECTIONS.contains(&name.as_str()) {
                table.remove(&name);
                let hint = suggestion(&name, SECTIONS.iter().copied());
                problems.push(ConfigProblem::new(name, format!("unknown section{hint}")));
            } else if name == "upstream"
                && let Some(toml::Value::Array(entries)) = table.get(&name)
                && entries.iter().all(toml::Value::is_table)
            {
                // `[[upstream]]` entries: checked one by one below.
            } else if !table.get(&name).is_some_and(toml::Value::is_table) {
                table.remove(&name);
                let message = format!("must be a section: `[{name}]` and its keys");
                problems.push(ConfigProblem::new(name, message));
            }
        }
        // The environment wins over the file; each value remembers its variable.
        let mut raw_env: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("IDGUARD_") else {
                continue;
            };
            if rest == "LOG" {
                continue;
            }
            let lower = rest.to_ascii_lowercase();
            let Some((section, key)) = SECTIONS.iter().find_map(|s| {
                lower
                    .strip_prefix(s)
                    .and_then(|k| k.strip_prefix('_'))
                    .filter(|k| !k.is_empty())
                    .map(|k| (*s, k))
            }) else {
                problems.push(ConfigProblem::new(
                    name,
                    "not a configuration variable: idguard reads `IDGUARD_<SECTION>_<KEY>` (sections `token`, `server`, `mcp`, `obo`, `oauth`, `upstream`, `store`) and `IDGUARD_LOG`",
                ));
                continue;
            };
            let parsed = if LIST_KEYS.contains(&key) {
                toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.to_owned()))
                        .collect(),
                )
            } else if let Ok(b) = value.parse::<bool>() {
                toml::Value::Boolean(b)
            } else if let Ok(i) = value.parse::<i64>() {
                toml::Value::Integer(i)
            } else {
                toml::Value::String(value.clone())
            };
            let dotted = format!("{section}.{key}");
            origins.env.insert(dotted.clone(), name.clone());
            raw_env.insert(dotted, value);
            match table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                toml::Value::Table(sec) => {
                    sec.insert(key.to_owned(), parsed);
                }
                _ => problems.push(ConfigProblem::new(
                    name.clone(),
                    "cannot set a key of `[[upstream]]` entries: write it in the file's entry",
                )),
            }
        }
        // Then every key on its own: unknown keys and type errors are all reported, and
        // left out so that the rest can still be checked.
        let mut tables: Vec<(String, &mut toml::Table)> = Vec::new();
        for (section, value) in &mut table {
            match value {
                toml::Value::Table(keys) => tables.push((section.clone(), keys)),
                toml::Value::Array(entries) => {
                    for (i, entry) in entries.iter_mut().enumerate() {
                        if let toml::Value::Table(keys) = entry {
                            tables.push((format!("{section}[{i}]"), keys));
                        }
                    }
                }
                _ => {}
            }
        }
        for (section, keys) in tables {
            let section = section.as_str();
            let kind = section.split('[').next().unwrap_or(section);
            let names: Vec<String> = keys.keys().cloned().collect();
            for key in names {
                let dotted = format!("{section}.{key}");
                let Some(v) = keys.get(&key) else { continue };
                let Err(message) = check_key(kind, &key, v) else {
                    continue;
                };
                // A variable's value that read as a number or boolean may be a string.
                if let Some(raw) = raw_env.get(&dotted)
                    && !v.is_str()
                    && !v.is_array()
                {
                    let text = toml::Value::String(raw.clone());
                    if check_key(kind, &key, &text).is_ok() {
                        keys.insert(key, text);
                        continue;
                    }
                }
                keys.remove(&key);
                let message = if let Some(expected) = message.strip_prefix("unknown field `") {
                    let known = expected
                        .split('`')
                        .skip(2)
                        .step_by(2)
                        .filter(|k| !k.is_empty());
                    let hint = suggestion(&key, known);
                    if origins.env.contains_key(&dotted) {
                        format!(
                            "not a configuration variable: `[{section}]` has no key `{key}`{hint}"
                        )
                    } else {
                        format!("unknown key{hint}")
                    }
                } else if SECRET_KEYS.contains(&key.as_str()) {
                    if key == "client_secret" || key == "password" {
                        "must be a string in quotes".to_owned()
                    } else {
                        "must be a list of strings, like `[\"…\"]`".to_owned()
                    }
                } else {
                    type_problem(&key, &message)
                };
                problems.push(ConfigProblem::new(dotted, message));
            }
        }
        let config = match toml::Value::Table(table).try_into::<IdGuardConfig>() {
            Ok(c) => c,
            Err(e) => {
                problems.push(ConfigProblem::new(
                    "configuration",
                    e.message().trim().to_owned(),
                ));
                IdGuardConfig::default()
            }
        };
        Ok(Loaded {
            config,
            origins,
            problems,
        })
    }
}

/// A type error in the operator's words: what the key takes, and what was found.
fn type_problem(key: &str, message: &str) -> String {
    let found = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.split(", expected").next())
        .map(|f| format!(" (found {f})"))
        .unwrap_or_default();
    let duration = ["leeway", "timeout", "interval", "lifetime", "skew", "grace"]
        .iter()
        .any(|d| key.contains(d));
    let wants = if message.contains("expected a string") && duration {
        "must be a duration in quotes, like `\"60s\"`, `\"5m\"` or `\"12h\"`"
    } else if message.contains("expected a string") {
        "must be a string in quotes"
    } else if message.contains("expected u64")
        || message.contains("expected u32")
        || message.contains("expected i64")
    {
        "must be a whole number"
    } else if message.contains("expected a boolean") {
        "must be `true` or `false`"
    } else if message.contains("expected a sequence") {
        "must be a list, like `[\"a\", \"b\"]`"
    } else if message.contains("expected a map") {
        "must be a table"
    } else {
        return message.to_owned();
    };
    format!("{wants}{found}")
}

/// Whether `value` alone deserializes as key `key` of section `section`; the problem if not.
fn check_key(section: &str, key: &str, value: &toml::Value) -> Result<(), String> {
    let mut one = toml::Table::new();
    one.insert(key.to_owned(), value.clone());
    let one = toml::Value::Table(one);
    let result = match section {
        "token" => one.try_into::<TokenConfig>().map(drop),
        "server" => one.try_into::<ServerConfig>().map(drop),
        "mcp" => one.try_into::<McpConfig>().map(drop),
        "obo" => one.try_into::<OboConfig>().map(drop),
        "oauth" => one.try_into::<OAuthConfig>().map(drop),
        "upstream" => one.try_into::<crate::gateway::UpstreamConfig>().map(drop),
        "store" => one.try_into::<crate::store::StoreConfig>().map(drop),
        _ => Ok(()),
    };
    result.map_err(|e| e.message().trim().replace('\n', " "))
}

/// ` (did you mean `x`?)` when one of `known` is one or two edits away from `name`.
fn suggestion<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance (names are short).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row.first().copied().unwrap_or(0);
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let above = row.get(j + 1).copied().unwrap_or(usize::MAX);
            let left = row.get(j).copied().unwrap_or(usize::MAX);
            let value = (prev + usize::from(ca != *cb))
                .min(above.saturating_add(1))
                .min(left.saturating_add(1));
            prev = above;
            if let Some(cell) = row.get_mut(j + 1) {
                *cell = value;
            }
        }
    }
    row.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::env;

    #[test]
    fn load_reports_every_unknown_key_and_applies_env() {
        let dir = std::env::temp_dir().join(format!("idguard-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("idguard.toml");
        std::fs::write(
            &path,
            "[token]\ntenant = \"organizations\"\nvalidate_signature = false\nskip_audience = true\n[sever]\nlisten = \"x\"\n",
        )
        .unwrap();
        let err = IdGuardConfig::load(Some(&path), []).unwrap_err();
        let keys: Vec<_> = err.problems().iter().map(ConfigProblem::key).collect();
        assert!(keys.contains(&"token.validate_signature"), "{keys:?}");
        assert!(keys.contains(&"token.skip_audience"), "{keys:?}");
        assert!(keys.contains(&"sever"), "{keys:?}");

        std::fs::write(&path, "[token]\ntenant = \"organizations\"\n").unwrap();
        let env = [
            (
                "IDGUARD_TOKEN_CLIENT_ID".to_owned(),
                "8c1a5e6f-0000-4000-8000-000000000001".to_owned(),
            ),
            (
                "IDGUARD_TOKEN_REQUIRED_SCOPES".to_owned(),
                "a, b".to_owned(),
            ),
            ("IDGUARD_TOKEN_ACCEPT_V1".to_owned(), "true".to_owned()),
            ("IDGUARD_LOG".to_owned(), "debug".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let config = IdGuardConfig::load(Some(&path), env).unwrap();
        assert_eq!(
            config.token.client_id.as_deref(),
            Some("8c1a5e6f-0000-4000-8000-000000000001")
        );
        assert_eq!(config.token.required_scopes, ["a", "b"]);
        assert!(config.token.accept_v1);
        let err = IdGuardConfig::load(Some(&path), [("IDGUARD_NOPE".to_owned(), "1".to_owned())])
            .unwrap_err();
        assert_eq!(err.problems()[0].key(), "IDGUARD_NOPE");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn problems_name_the_variable_that_set_a_key() {
        let err = IdGuardConfig::load(
            None,
            env(&[
                ("IDGUARD_MCP_URL", "http://127.0.0.1:8400/mcp"),
                ("IDGUARD_SERVER_MAX_CONNECTIONS", "many"),
                ("IDGUARD_TOKEN", "eyJ"),
            ]),
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(ConfigProblem::key).collect();
        assert_eq!(
            keys,
            [
                "IDGUARD_TOKEN",
                "IDGUARD_MCP_URL",
                "IDGUARD_SERVER_MAX_CONNECTIONS"
            ],
            "{err}"
        );
        assert!(!err.to_string().contains("mcp.url"), "{err}");
        assert!(
            !err.to_string().contains("eyJ"),
            "values are not echoed: {err}"
        );
        // Resolution problems too: the variable, not the file.
        let loaded =
            IdGuardConfig::read(None, env(&[("IDGUARD_TOKEN_TENANT", "contoso")])).unwrap();
        let err = loaded.config.resolve().unwrap_err();
        let named = loaded.origins.rename(err.problems().to_vec());
        assert!(
            named.iter().any(|p| p.key() == "IDGUARD_TOKEN_TENANT"),
            "{named:?}"
        );
    }

    #[test]
    fn a_variable_that_reads_as_a_number_may_be_a_string() {
        let config = IdGuardConfig::load(
            None,
            env(&[
                ("IDGUARD_OBO_CLIENT_SECRET", "12345"),
                ("IDGUARD_SERVER_MAX_CONNECTIONS", "64"),
                ("IDGUARD_TOKEN_ACCEPT_V1", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(config.obo.unwrap().client_secret.unwrap().expose(), "12345");
        assert_eq!(config.server.max_connections, Some(64));
    }

    #[test]
    fn every_type_error_and_unknown_key_is_reported_and_the_rest_still_read() {
        let dir = std::env::temp_dir().join(format!("idguard-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("idguard.toml");
        std::fs::write(
            &path,
            "[token]\ntenant = \"organizations\"\nleeway = 5\ncache_capacity = \"lots\"\n[server]\nmax_connections = \"many\"\n[mcp]\ndenyals = \"visible\"\n[oauth]\nkeys = [1]\n",
        )
        .unwrap();
        let loaded = IdGuardConfig::read(Some(&path), []).unwrap();
        let problems: Vec<(&str, &str)> = loaded
            .problems
            .iter()
            .map(|p| (p.key(), p.message()))
            .collect();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| *k).collect();
        for key in [
            "token.leeway",
            "token.cache_capacity",
            "server.max_connections",
            "mcp.denyals",
            "oauth.keys",
        ] {
            assert!(keys.contains(&key), "{key} in {problems:?}");
        }
        assert!(
            problems
                .iter()
                .any(|(k, m)| *k == "mcp.denyals" && m.contains("did you mean `denials`"))
        );
        assert!(
            problems
                .iter()
                .any(|(k, m)| *k == "token.leeway" && m.contains("duration in quotes"))
        );
        // What could be read was read.
        assert_eq!(loaded.config.token.tenant.as_deref(), Some("organizations"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn suggestions_are_close_names() {
        assert_eq!(edit_distance("denyals", "denials"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            suggestion("sever", SECTIONS.iter().copied()),
            " (did you mean `server`?)"
        );
        assert_eq!(suggestion("zzz", SECTIONS.iter().copied()), "");
    }
}
