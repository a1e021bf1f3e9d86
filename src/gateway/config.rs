//! `[upstream]`: what the gateway's upstream receives to know who is calling. Checked
//! here; the `idguard` binary builds the [`UpstreamCredential`] with
//! [`UpstreamSettings::credential`].

use std::path::PathBuf;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{IdentityAssertion, JWT_TOKEN_TYPE, TokenExchange, UpstreamCredential};
use crate::error::ConfigProblem;

/// `[upstream]`: the credential the gateway sends upstream (never the caller's token).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `"none"` (default), `"obo"`, `"identity_assertion"`, `"token_exchange"` or
    /// `"static"`.
    pub credential: Option<String>,
    /// `obo`: the scopes of the upstream's own API, e.g. `["api://upstream-app/.default"]`;
    /// `token_exchange`: the `scope` asked for (optional).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `identity_assertion`: the assertions' audience (the upstream); `token_exchange`: the
    /// `audience` asked for.
    pub audience: Option<String>,
    /// `identity_assertion`, and `token_exchange` with an actor token: a PKCS#8 P-256
    /// private key (PEM); default a key generated at each start.
    pub key_file: Option<PathBuf>,
    /// `token_exchange`: the upstream authorization server's token endpoint (https, or http
    /// on a loopback address).
    pub token_endpoint: Option<String>,
    /// `token_exchange`: the `resource` asked for (the upstream's URL).
    pub resource: Option<String>,
    /// `token_exchange`: idguard's client id at that authorization server.
    pub client_id: Option<String>,
    /// `token_exchange`: a file holding the client secret (HTTP Basic); without it
    /// `client_id` is sent as a public client's.
    pub client_secret_file: Option<PathBuf>,
    /// `token_exchange`: `"identity_assertion"` to send an `actor_token` naming idguard,
    /// signed with the `key_file` key (its JWKS at `/.well-known/idguard-jwks.json`).
    pub actor_token: Option<String>,
    /// `token_exchange`: the `actor_token_type` (default
    /// `urn:ietf:params:oauth:token-type:jwt`).
    pub actor_token_type: Option<String>,
    /// `static`: the header's name.
    pub header: Option<String>,
    /// `static`: a file holding the header's value (a secret).
    pub value_file: Option<PathBuf>,
    /// The upstream's name (`[a-z0-9-]`, at most 32 characters): required in `[[upstream]]`
    /// entries, where it prefixes the upstream's tool and prompt names
    /// (`<name>__<tool>`); optional for a single `[upstream]`, where it makes
    /// `Server::"<name>"` the parent of every item (names unchanged).
    pub name: Option<String>,
    /// `[[upstream]]` entries: the upstream's MCP endpoint URL (a single upstream's is
    /// `server.upstream`).
    pub url: Option<String>,
    /// `[[upstream]]` entries: as `server.upstream_connect_timeout`, for this upstream.
    pub connect_timeout: Option<String>,
    /// `[[upstream]]` entries: as `server.upstream_timeout`, for this upstream.
    pub timeout: Option<String>,
    /// `[[upstream]]` entries: as `server.upstream_idle_timeout`, for this upstream.
    pub idle_timeout: Option<String>,
}

/// `[upstream]`, checked.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum UpstreamSettings {
    /// `none`.
    #[default]
    None,
    /// `obo` with these scopes.
    Obo(Vec<String>),
    /// `identity_assertion` for this audience, with this key (PEM) or a generated one.
    IdentityAssertion {
        /// `upstream.audience`.
        audience: String,
        /// The content of `upstream.key_file`.
        key_pem: Option<crate::setting::Secret>,
    },
    /// `static`: this header.
    Static(UpstreamCredential),
    /// `token_exchange`: RFC 8693 at the upstream's authorization server.
    TokenExchange(ExchangeSettings),
}

/// `[upstream]` with `credential = "token_exchange"`, checked.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ExchangeSettings {
    /// `upstream.token_endpoint`.
    pub token_endpoint: reqwest::Url,
    /// `upstream.audience`.
    pub audience: Option<String>,
    /// `upstream.resource`.
    pub resource: Option<String>,
    /// `upstream.scopes`.
    pub scopes: Vec<String>,
    /// `upstream.client_id`.
    pub client_id: Option<String>,
    /// The content of `upstream.client_secret_file`.
    pub client_secret: Option<crate::setting::Secret>,
    /// `upstream.actor_token_type` when `upstream.actor_token` is set, with the content of
    /// `upstream.key_file`.
    pub actor: Option<(String, Option<crate::setting::Secret>)>,
}

impl UpstreamSettings {
    /// The credential, for assertions issued by `issuer` (idguard's resource URL).
    ///
    /// # Errors
    ///
    /// The key could not be generated or read.
    pub fn credential(&self, issuer: &str) -> Result<UpstreamCredential, super::AssertionKeyError> {
        Ok(match self {
            Self::None => UpstreamCredential::none(),
            Self::Obo(scopes) => UpstreamCredential::obo(scopes.iter().cloned()),
            Self::IdentityAssertion { audience, key_pem } => {
                UpstreamCredential::identity_assertion(match key_pem {
                    Some(pem) => IdentityAssertion::from_pem(pem.expose(), issuer, audience)?,
                    None => IdentityAssertion::generate(issuer, audience)?,
                })
            }
            Self::Static(c) => c.clone(),
            Self::TokenExchange(x) => {
                let mut exchange = TokenExchange::from_url(x.token_endpoint.clone())
                    .with_scopes(x.scopes.iter().cloned());
                if let Some(a) = &x.audience {
                    exchange = exchange.with_audience(a);
                }
                if let Some(r) = &x.resource {
                    exchange = exchange.with_resource(r);
                }
                exchange = match (&x.client_id, &x.client_secret) {
                    (Some(id), Some(secret)) => exchange.with_client_secret(id, secret.clone()),
                    (Some(id), None) => exchange.with_client_id(id),
                    _ => exchange,
                };
                if let Some((kind, key_pem)) = &x.actor {
                    // The actor token is for the authorization server: its `aud`.
                    let aud = x.token_endpoint.as_str();
                    let signer = match key_pem {
                        Some(pem) => IdentityAssertion::from_pem(pem.expose(), issuer, aud)?,
                        None => IdentityAssertion::generate(issuer, aud)?,
                    };
                    exchange = exchange.with_actor_token(signer, kind);
                }
                UpstreamCredential::token_exchange(exchange)
            }
        })
    }
}

impl UpstreamConfig {
    /// Checks every key; problems name them (`upstream.scopes`, …).
    pub(crate) fn check(&self, problems: &mut Vec<ConfigProblem>) -> UpstreamSettings {
        let mode = self.credential.as_deref().unwrap_or("none");
        let unused = |key: &str, set: bool, problems: &mut Vec<ConfigProblem>| {
            if set {
                problems.push(ConfigProblem::new(
                    format!("upstream.{key}"),
                    format!("not used with `credential = \"{mode}\"`"),
                ));
            }
        };
        let obo = mode == "obo";
        let ia = mode == "identity_assertion";
        let st = mode == "static";
        let tx = mode == "token_exchange";
        if !obo && !tx {
            unused("scopes", !self.scopes.is_empty(), problems);
        }
        if !ia && !tx {
            unused("audience", self.audience.is_some(), problems);
        }
        let signs = ia || (tx && self.actor_token.is_some());
        if !signs {
            unused("key_file", self.key_file.is_some(), problems);
        }
        if !tx {
            for (key, set) in [
                ("token_endpoint", self.token_endpoint.is_some()),
                ("resource", self.resource.is_some()),
                ("client_id", self.client_id.is_some()),
                ("client_secret_file", self.client_secret_file.is_some()),
                ("actor_token", self.actor_token.is_some()),
                ("actor_token_type", self.actor_token_type.is_some()),
            ] {
                unused(key, set, problems);
            }
        }
        if !st {
            unused("header", self.header.is_some(), problems);
            unused("value_file", self.value_file.is_some(), problems);
        }
        match mode {
            "none" => UpstreamSettings::None,
            "obo" => {
                if self.scopes.is_empty() {
                    problems.push(ConfigProblem::new(
                        "upstream.scopes",
                        "required with `credential = \"obo\"`: the scopes of the upstream's own API, like `[\"api://upstream-app/.default\"]`",
                    ));
                }
                let resources: Vec<String> = self
                    .scopes
                    .iter()
                    .map(|s| crate::obo::resource_of(std::slice::from_ref(s)))
                    .collect();
                if resources.iter().any(|r| Some(r) != resources.first()) {
                    problems.push(ConfigProblem::new(
                        "upstream.scopes",
                        "must all belong to one resource (Entra issues a token for one API)",
                    ));
                }
                UpstreamSettings::Obo(self.scopes.clone())
            }
            "identity_assertion" => {
                let audience = self.audience.clone().unwrap_or_default();
                if audience.trim().is_empty() {
                    problems.push(ConfigProblem::new(
                        "upstream.audience",
                        "required with `credential = \"identity_assertion\"`: the upstream's identifier, the assertions' `aud`",
                    ));
                }
                let key_pem = self
                    .key_file
                    .as_ref()
                    .and_then(|path| read_key(path, problems));
                UpstreamSettings::IdentityAssertion { audience, key_pem }
            }
            "static" => {
                let name = match self.header.as_deref().map(HeaderName::try_from) {
                    Some(Ok(n)) if !FORBIDDEN.contains(&n.as_str()) => Some(n),
                    Some(Ok(_)) => {
                        problems.push(ConfigProblem::new(
                            "upstream.header",
                            "names a header idguard sets or forwards itself: choose another, like `X-Idguard-Key`",
                        ));
                        None
                    }
                    Some(Err(_)) => {
                        problems.push(ConfigProblem::new(
                            "upstream.header",
                            "is not a valid header name",
                        ));
                        None
                    }
                    None => {
                        problems.push(ConfigProblem::new(
                            "upstream.header",
                            "required with `credential = \"static\"`: the header's name",
                        ));
                        None
                    }
                };
                let value = match &self.value_file {
                    None => {
                        problems.push(ConfigProblem::new(
                            "upstream.value_file",
                            "required with `credential = \"static\"`: a file holding the header's value",
                        ));
                        None
                    }
                    Some(path) => match std::fs::read_to_string(path) {
                        Ok(text) => match HeaderValue::try_from(text.trim()) {
                            Ok(v) if !text.trim().is_empty() => Some(v),
                            _ => {
                                problems.push(ConfigProblem::new(
                                    "upstream.value_file",
                                    format!(
                                        "`{}` must hold one non-empty line of visible ASCII",
                                        path.display()
                                    ),
                                ));
                                None
                            }
                        },
                        Err(e) => {
                            problems.push(ConfigProblem::new(
                                "upstream.value_file",
                                format!("cannot read `{}`: {e}", path.display()),
                            ));
                            None
                        }
                    },
                };
                match (name, value) {
                    (Some(n), Some(v)) => {
                        UpstreamSettings::Static(UpstreamCredential::static_header(n, v))
                    }
                    _ => UpstreamSettings::None,
                }
            }
            "token_exchange" => self.check_exchange(problems),
            other => {
                problems.push(ConfigProblem::new(
                    "upstream.credential",
                    format!(
                        "`{other}` is not one of `none`, `obo`, `identity_assertion`, `token_exchange`, `static`"
                    ),
                ));
                UpstreamSettings::None
            }
        }
    }
}

impl UpstreamConfig {
    /// `credential = "token_exchange"`.
    fn check_exchange(&self, problems: &mut Vec<ConfigProblem>) -> UpstreamSettings {
        let mut problem = |key: &str, text: String| {
            problems.push(ConfigProblem::new(format!("upstream.{key}"), text));
        };
        let token_endpoint = match self.token_endpoint.as_deref() {
            None => {
                problem(
                    "token_endpoint",
                    "required with `credential = \"token_exchange\"`: the upstream authorization server's token endpoint".into(),
                );
                None
            }
            Some(url) => match TokenExchange::new(url) {
                Ok(_) => reqwest::Url::parse(url).ok(),
                Err(e) => {
                    problem("token_endpoint", format!("`{url}`: {e}"));
                    None
                }
            },
        };
        let blank = |v: &Option<String>| v.as_deref().is_none_or(|v| v.trim().is_empty());
        if blank(&self.audience) && blank(&self.resource) {
            problem(
                "audience",
                "`audience` or `resource` is required with `credential = \"token_exchange\"`: the upstream the token is for".into(),
            );
        }
        let client_secret = match (&self.client_secret_file, blank(&self.client_id)) {
            (Some(_), true) => {
                problem(
                    "client_id",
                    "required with `client_secret_file`: idguard's client id at the authorization server".into(),
                );
                None
            }
            (Some(path), false) => match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    Some(crate::setting::Secret::new(text.trim()))
                }
                Ok(_) => {
                    problem(
                        "client_secret_file",
                        format!("`{}` is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    problem(
                        "client_secret_file",
                        format!("cannot read `{}`: {e}", path.display()),
                    );
                    None
                }
            },
            (None, _) => None,
        };
        let actor = match self.actor_token.as_deref() {
            None => {
                if self.actor_token_type.is_some() {
                    problem(
                        "actor_token_type",
                        "not used without `actor_token = \"identity_assertion\"`".into(),
                    );
                }
                None
            }
            Some("identity_assertion") => {
                let key_pem = self
                    .key_file
                    .as_ref()
                    .and_then(|path| read_key(path, problems));
                let kind = self
                    .actor_token_type
                    .clone()
                    .unwrap_or_else(|| JWT_TOKEN_TYPE.to_owned());
                Some((kind, key_pem))
            }
            Some(other) => {
                problems.push(ConfigProblem::new(
                    "upstream.actor_token",
                    format!(
                        "`{other}` is not `identity_assertion` (the only actor token idguard makes)"
                    ),
                ));
                None
            }
        };
        match token_endpoint {
            Some(token_endpoint) => UpstreamSettings::TokenExchange(ExchangeSettings {
                token_endpoint,
                audience: self.audience.clone().filter(|v| !v.trim().is_empty()),
                resource: self.resource.clone().filter(|v| !v.trim().is_empty()),
                scopes: self.scopes.clone(),
                client_id: self.client_id.clone().filter(|v| !v.trim().is_empty()),
                client_secret,
                actor,
            }),
            None => UpstreamSettings::None,
        }
    }
}

/// `[upstream]` (one upstream, at `server.upstream`) or `[[upstream]]` entries (several
/// behind one endpoint, each with its `name` and `url`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Upstreams {
    /// A single `[upstream]` table.
    One(Box<UpstreamConfig>),
    /// `[[upstream]]` entries.
    Many(Vec<UpstreamConfig>),
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::One(Box::default())
    }
}

/// One `[[upstream]]` entry, checked.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NamedUpstream {
    /// `name`.
    pub name: String,
    /// `url`.
    pub url: url::Url,
    /// The credential keys.
    pub credential: UpstreamSettings,
    /// `connect_timeout`, when set.
    pub connect_timeout: Option<std::time::Duration>,
    /// `timeout`, when set.
    pub timeout: Option<std::time::Duration>,
    /// `idle_timeout`, when set.
    pub idle_timeout: Option<std::time::Duration>,
}

/// `[upstream]` or `[[upstream]]`, checked.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum UpstreamsSettings {
    /// `[upstream]`: its name, if any, and its credential.
    One(Option<String>, Box<UpstreamSettings>),
    /// `[[upstream]]` entries, in order.
    Many(Vec<NamedUpstream>),
}

impl Default for UpstreamsSettings {
    fn default() -> Self {
        Self::One(None, Box::new(UpstreamSettings::None))
    }
}

/// Longest upstream name.
const MAX_NAME: usize = 32;

impl Upstreams {
    /// Checks every key (`upstream.scopes`, `upstream[1].name`, …).
    pub(crate) fn check(&self, problems: &mut Vec<ConfigProblem>) -> UpstreamsSettings {
        match self {
            Self::One(one) => {
                for (key, set) in [
                    ("url", one.url.is_some()),
                    ("connect_timeout", one.connect_timeout.is_some()),
                    ("timeout", one.timeout.is_some()),
                    ("idle_timeout", one.idle_timeout.is_some()),
                ] {
                    if set {
                        problems.push(ConfigProblem::new(
                            format!("upstream.{key}"),
                            format!("only in `[[upstream]]` entries: a single upstream's is `server.upstream{}`", if key == "url" { String::new() } else { format!("_{key}") }),
                        ));
                    }
                }
                let name = one.name.as_ref().map(|n| {
                    check_name("upstream.name", n, problems);
                    n.clone()
                });
                UpstreamsSettings::One(name, Box::new(one.check(problems)))
            }
            Self::Many(entries) => {
                if entries.is_empty() {
                    problems.push(ConfigProblem::new(
                        "upstream",
                        "has no entries: write `[[upstream]]` tables with `name` and `url`",
                    ));
                }
                let mut named = Vec::new();
                for (i, entry) in entries.iter().enumerate() {
                    let at = format!("upstream[{i}]");
                    let mut own = Vec::new();
                    let credential = entry.check(&mut own);
                    problems.extend(own.into_iter().map(|p| {
                        let key = p.key().replacen("upstream.", &format!("{at}."), 1);
                        ConfigProblem::new(key, p.message().to_owned())
                    }));
                    let name = match &entry.name {
                        None => {
                            problems.push(ConfigProblem::new(
                                format!("{at}.name"),
                                "required in `[[upstream]]` entries: a short name like `github` (it prefixes the upstream's tool and prompt names)",
                            ));
                            None
                        }
                        Some(n) => {
                            check_name(&format!("{at}.name"), n, problems);
                            if entries.iter().take(i).any(|e| e.name.as_ref() == Some(n)) {
                                problems.push(ConfigProblem::new(
                                    format!("{at}.name"),
                                    format!(
                                        "`{n}` names an earlier entry too: names must be unique"
                                    ),
                                ));
                            }
                            Some(n.clone())
                        }
                    };
                    let url = match &entry.url {
                        None => {
                            problems.push(ConfigProblem::new(
                                format!("{at}.url"),
                                "required in `[[upstream]]` entries: the upstream's MCP endpoint, e.g. `http://127.0.0.1:9000/mcp`",
                            ));
                            None
                        }
                        Some(text) => {
                            let url = upstream_url(text);
                            if url.is_none() {
                                problems.push(ConfigProblem::new(
                                    format!("{at}.url"),
                                    // Never quoted: a refused URL may hold a password.
                                    "must be an http or https URL with a host and no user or password, e.g. `http://127.0.0.1:9000/mcp`",
                                ));
                            }
                            url
                        }
                    };
                    let mut duration = |key: &str, value: &Option<String>| {
                        let text = value.as_ref()?;
                        match crate::setting::parse_duration(text) {
                            Ok(d) if !d.is_zero() => Some(d),
                            Ok(_) => {
                                problems.push(ConfigProblem::new(
                                    format!("{at}.{key}"),
                                    "must be more than zero",
                                ));
                                None
                            }
                            Err(m) => {
                                problems.push(ConfigProblem::new(format!("{at}.{key}"), m));
                                None
                            }
                        }
                    };
                    let connect_timeout = duration("connect_timeout", &entry.connect_timeout);
                    let timeout = duration("timeout", &entry.timeout);
                    let idle_timeout = duration("idle_timeout", &entry.idle_timeout);
                    if let (Some(name), Some(url)) = (name, url) {
                        named.push(NamedUpstream {
                            name,
                            url,
                            credential,
                            connect_timeout,
                            timeout,
                            idle_timeout,
                        });
                    }
                }
                UpstreamsSettings::Many(named)
            }
        }
    }
}

/// Reads `upstream.key_file`, a PKCS#8 P-256 private key.
fn read_key(
    path: &std::path::Path,
    problems: &mut Vec<ConfigProblem>,
) -> Option<crate::setting::Secret> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            if IdentityAssertion::from_pem(&pem, "", "").is_err() {
                problems.push(ConfigProblem::new(
                    "upstream.key_file",
                    format!(
                        "`{}` is not a PKCS#8 P-256 private key (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem`)",
                        path.display()
                    ),
                ));
            }
            Some(crate::setting::Secret::new(pem))
        }
        Err(e) => {
            problems.push(ConfigProblem::new(
                "upstream.key_file",
                format!("cannot read `{}`: {e}", path.display()),
            ));
            None
        }
    }
}

/// An upstream's MCP endpoint: http or https, with a host, no fragment or credentials.
pub(crate) fn upstream_url(text: &str) -> Option<url::Url> {
    url::Url::parse(text.trim()).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some_and(|h| !h.is_empty())
            && u.fragment().is_none()
            && u.username().is_empty()
            && u.password().is_none()
    })
}

fn check_name(key: &str, name: &str, problems: &mut Vec<ConfigProblem>) {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        problems.push(ConfigProblem::new(
            key,
            format!(
                "`{name}` must be 1 to {MAX_NAME} characters of `a-z`, `0-9` and `-`, like `github`"
            ),
        ));
    }
}

/// Headers a `static` credential may not replace.
const FORBIDDEN: [&str; 12] = [
    "host",
    "content-type",
    "content-length",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "x-forwarded-for",
    "x-forwarded-host",
    "forwarded",
    "transfer-encoding",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: UpstreamConfig) -> Vec<String> {
        let mut p = Vec::new();
        c.check(&mut p);
        p.iter().map(|p| p.key().to_owned()).collect()
    }

    fn many(toml: &str) -> (Vec<String>, UpstreamsSettings) {
        #[derive(Deserialize)]
        struct File {
            upstream: Upstreams,
        }
        let file: File = toml::from_str(toml).unwrap();
        let mut p = Vec::new();
        let settings = file.upstream.check(&mut p);
        (p.iter().map(|p| p.key().to_owned()).collect(), settings)
    }

    #[test]
    fn upstream_entries_are_checked_by_index() {
        let (problems, settings) = many(
            r#"
            [[upstream]]
            name = "github"
            url = "http://127.0.0.1:9001/mcp"
            timeout = "30s"
            [[upstream]]
            name = "docs"
            url = "http://127.0.0.1:9002/mcp"
            credential = "obo"
            scopes = ["api://docs/.default"]
            "#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let UpstreamsSettings::Many(entries) = settings else {
            panic!("entries")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, "github");
        assert_eq!(entries[0].timeout, Some(std::time::Duration::from_secs(30)));
        assert!(matches!(entries[1].credential, UpstreamSettings::Obo(_)));

        let (problems, _) = many(
            r#"
            [[upstream]]
            name = "GitHub"
            url = "ftp://x"
            [[upstream]]
            url = "http://127.0.0.1:9/mcp"
            credential = "obo"
            timeout = "soon"
            [[upstream]]
            name = "docs"
            url = "http://127.0.0.1:9/mcp"
            [[upstream]]
            name = "docs"
            url = "http://127.0.0.1:9/mcp"
            "#,
        );
        assert_eq!(
            problems,
            [
                "upstream[0].name",
                "upstream[0].url",
                "upstream[1].scopes",
                "upstream[1].name",
                "upstream[1].timeout",
                "upstream[3].name",
            ]
        );
        // A single table keeps today's keys; entry-only keys are named.
        let (problems, settings) = many("[upstream]\nname = \"solo\"\nurl = \"http://x/mcp\"\n");
        assert_eq!(problems, ["upstream.url"]);
        assert!(matches!(settings, UpstreamsSettings::One(Some(n), _) if n == "solo"));
    }

    #[test]
    fn each_mode_names_its_missing_and_stray_keys() {
        assert!(keys(UpstreamConfig::default()).is_empty());
        assert_eq!(
            keys(UpstreamConfig {
                credential: Some("obo".into()),
                audience: Some("x".into()),
                ..Default::default()
            }),
            ["upstream.audience", "upstream.scopes"]
        );
        assert_eq!(
            keys(UpstreamConfig {
                credential: Some("identity_assertion".into()),
                ..Default::default()
            }),
            ["upstream.audience"]
        );
        assert_eq!(
            keys(UpstreamConfig {
                credential: Some("static".into()),
                header: Some("Host".into()),
                ..Default::default()
            }),
            ["upstream.header", "upstream.value_file"]
        );
        assert_eq!(
            keys(UpstreamConfig {
                credential: Some("token_exchange".into()),
                token_endpoint: Some("http://as.example.com/token".into()),
                client_secret_file: Some("/nonexistent".into()),
                actor_token_type: Some("x".into()),
                header: Some("X-A".into()),
                ..Default::default()
            }),
            [
                "upstream.header",
                "upstream.token_endpoint",
                "upstream.audience",
                "upstream.client_id",
                "upstream.actor_token_type"
            ]
        );
        let mut p = Vec::new();
        let ok = UpstreamConfig {
            credential: Some("token_exchange".into()),
            token_endpoint: Some("http://127.0.0.1:9/token".into()),
            resource: Some("https://up.example.com/mcp".into()),
            actor_token: Some("identity_assertion".into()),
            ..Default::default()
        }
        .check(&mut p);
        assert!(p.is_empty(), "{p:?}");
        let cred = ok.credential("https://idg/mcp").unwrap();
        assert_eq!(
            cred.assertion().unwrap().audience(),
            "http://127.0.0.1:9/token"
        );
        assert_eq!(
            keys(UpstreamConfig {
                credential: Some("obo".into()),
                scopes: vec!["api://x/.default".into()],
                token_endpoint: Some("https://as/token".into()),
                ..Default::default()
            }),
            ["upstream.token_endpoint"]
        );
        assert_eq!(
            keys(UpstreamConfig {
                credential: Some("passthrough".into()),
                ..Default::default()
            }),
            ["upstream.credential"]
        );
    }
}
