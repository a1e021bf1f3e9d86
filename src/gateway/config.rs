//! `[upstream]`: what the gateway's upstream receives to know who is calling. Checked
//! here; the `idguard` binary builds the [`UpstreamCredential`] with
//! [`UpstreamSettings::credential`].

use std::path::PathBuf;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{IdentityAssertion, UpstreamCredential};
use crate::error::ConfigProblem;

/// `[upstream]`: the credential the gateway sends upstream (never the caller's token).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `"none"` (default), `"obo"`, `"identity_assertion"` or `"static"`.
    pub credential: Option<String>,
    /// `obo`: the scopes of the upstream's own API, e.g. `["api://upstream-app/.default"]`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `identity_assertion`: the assertions' audience (the upstream).
    pub audience: Option<String>,
    /// `identity_assertion`: a PKCS#8 P-256 private key (PEM); default a key generated at
    /// each start.
    pub key_file: Option<PathBuf>,
    /// `static`: the header's name.
    pub header: Option<String>,
    /// `static`: a file holding the header's value (a secret).
    pub value_file: Option<PathBuf>,
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
        if !obo {
            unused("scopes", !self.scopes.is_empty(), problems);
        }
        if !ia {
            unused("audience", self.audience.is_some(), problems);
            unused("key_file", self.key_file.is_some(), problems);
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
                let key_pem = self.key_file.as_ref().and_then(|path| {
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
                });
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
            other => {
                problems.push(ConfigProblem::new(
                    "upstream.credential",
                    format!(
                        "`{other}` is not one of `none`, `obo`, `identity_assertion`, `static`"
                    ),
                ));
                UpstreamSettings::None
            }
        }
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
                credential: Some("passthrough".into()),
                ..Default::default()
            }),
            ["upstream.credential"]
        );
    }
}
