//! `[obo]`: the middle tier's credential and the downstream APIs it calls, checked into
//! [`OboSettings`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{
    ClientCredential, DEFAULT_GRAPH_URL, DEFAULT_OBO_CACHE_CAPACITY, DEFAULT_OBO_MAX_RETRIES,
    DEFAULT_OBO_SKEW, DEFAULT_OBO_TIMEOUT, GRAPH_API, OboSettings, resource_of,
};
use crate::entra::{is_guid, is_loopback_url};
use crate::error::ConfigProblem;
use crate::setting::{Secret, is_placeholder, parse_duration};

/// `[obo]`: the middle tier's credential and the downstream APIs it calls for its callers.
///
/// ```toml
/// [obo]
/// client_secret = "…"            # or certificate_file + private_key_file, or federated_token_file
/// skew = "5m"
/// [obo.apis]
/// graph = ["https://graph.microsoft.com/.default"]
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OboConfig {
    /// A client secret of this API's app registration.
    pub client_secret: Option<Secret>,
    /// A PEM certificate registered on the app (with `private_key_file`).
    pub certificate_file: Option<PathBuf>,
    /// The certificate's PKCS#8 RSA private key, PEM.
    pub private_key_file: Option<PathBuf>,
    /// A file holding a federated assertion (workload identity, or a managed identity token
    /// for `api://AzureADTokenExchange`), re-read when it changes.
    pub federated_token_file: Option<PathBuf>,
    /// Downstream APIs by name: the scopes (of one resource) to request, e.g.
    /// `graph = ["https://graph.microsoft.com/.default"]`.
    #[serde(default)]
    pub apis: BTreeMap<String, Vec<String>>,
    /// How long before expiry a cached token stops being used, default
    /// [`DEFAULT_OBO_SKEW`](crate::obo::DEFAULT_OBO_SKEW).
    pub skew: Option<String>,
    /// Cached downstream tokens, default
    /// [`DEFAULT_OBO_CACHE_CAPACITY`](crate::obo::DEFAULT_OBO_CACHE_CAPACITY).
    pub cache_capacity: Option<u64>,
    /// Budget of one exchange with retries, default
    /// [`DEFAULT_OBO_TIMEOUT`](crate::obo::DEFAULT_OBO_TIMEOUT).
    pub timeout: Option<String>,
    /// Retries of `5xx`/network failures, default
    /// [`DEFAULT_OBO_MAX_RETRIES`](crate::obo::DEFAULT_OBO_MAX_RETRIES).
    pub max_retries: Option<u32>,
    /// Microsoft Graph's base URL, default
    /// [`DEFAULT_GRAPH_URL`](crate::obo::DEFAULT_GRAPH_URL).
    pub graph_url: Option<String>,
    /// Resolve group membership through Graph for tokens with a groups overage, before
    /// policies see the caller (needs an API named `graph` with `GroupMember.Read.All`).
    #[serde(default)]
    pub resolve_group_overage: bool,
    /// With `resolve_group_overage`: the group ids policies reference, checked with
    /// `checkMemberGroups`; empty: the full transitive membership.
    #[serde(default)]
    pub overage_group_ids: Vec<String>,
}

impl OboConfig {
    /// Checks `[obo]`, adding each problem under its key.
    pub(crate) fn check(self, problems: &mut Vec<ConfigProblem>) -> Option<OboSettings> {
        let o = self;
        let before = problems.len();
        let mut problem = |key: &str, msg: String| problems.push(ConfigProblem::new(key, msg));
        let certificate = o.certificate_file.is_some() || o.private_key_file.is_some();
        let given = usize::from(o.client_secret.is_some())
            + usize::from(certificate)
            + usize::from(o.federated_token_file.is_some());
        let credential = match (
            given,
            o.client_secret,
            o.certificate_file,
            o.private_key_file,
            o.federated_token_file,
        ) {
            (0, ..) => {
                problem(
                "obo",
                "a client credential is required: `client_secret`, `certificate_file` + `private_key_file`, or `federated_token_file`".into(),
            );
                None
            }
            (2.., ..) => {
                problem("obo.client_secret", "set only one client credential".into());
                None
            }
            (_, Some(secret), ..) if secret.expose().trim().is_empty() => {
                problem("obo.client_secret", "is empty".into());
                None
            }
            (_, Some(secret), ..) if is_placeholder(secret.expose()) => {
                problem(
                "obo.client_secret",
                "is an example's placeholder: a client secret of the app registration (prefer a certificate or a federated credential)".into(),
            );
                None
            }
            (_, Some(secret), ..) => Some(ClientCredential::secret(secret)),
            (_, _, Some(cert), Some(key), _) => {
                match ClientCredential::certificate_files(&cert, &key) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        problem("obo.certificate_file", e.to_string());
                        None
                    }
                }
            }
            (_, _, None, Some(_), _) => {
                problem(
                    "obo.certificate_file",
                    "required with `private_key_file`".into(),
                );
                None
            }
            (_, _, Some(_), None, _) => {
                problem(
                    "obo.private_key_file",
                    "required with `certificate_file`".into(),
                );
                None
            }
            (_, _, _, _, Some(file)) => Some(ClientCredential::federated_token_file(file)),
            _ => None,
        };
        let mut apis = BTreeMap::new();
        for (name, scopes) in o.apis {
            let key = format!("obo.apis.{name}");
            if scopes.is_empty()
                || scopes
                    .iter()
                    .any(|s| s.trim().is_empty() || s.contains(' '))
            {
                problem(
                    &key,
                    "needs scopes, each non-empty and without spaces".into(),
                );
                continue;
            }
            let resources: std::collections::BTreeSet<String> = scopes
                .iter()
                .filter(|s| !matches!(s.as_str(), "openid" | "profile" | "offline_access"))
                .map(|s| resource_of(std::slice::from_ref(s)))
                .collect();
            if resources.len() > 1 {
                problem(
                    &key,
                    "scopes must all be of one resource (one token per resource)".into(),
                );
                continue;
            }
            let mut scopes = scopes;
            scopes.sort();
            scopes.dedup();
            apis.insert(name, Arc::<[String]>::from(scopes));
        }
        let mut duration = |key: &str, value: Option<String>, default: Duration| match value {
            None => default,
            Some(v) => parse_duration(&v).unwrap_or_else(|msg| {
                problem(key, msg);
                default
            }),
        };
        let skew = duration("obo.skew", o.skew, DEFAULT_OBO_SKEW);
        let timeout = duration("obo.timeout", o.timeout, DEFAULT_OBO_TIMEOUT);
        if timeout.is_zero() {
            problem("obo.timeout", "must be more than zero".into());
        }
        let graph_url = o
            .graph_url
            .unwrap_or_else(|| DEFAULT_GRAPH_URL.to_owned())
            .trim_end_matches('/')
            .to_owned();
        if !(graph_url.starts_with("https://") || is_loopback_url(&graph_url)) {
            problem(
                "obo.graph_url",
                format!("`{graph_url}` must be an https URL (plain http only on loopback)"),
            );
        }
        if o.resolve_group_overage && !apis.contains_key(GRAPH_API) {
            problem(
                "obo.resolve_group_overage",
                "needs an api named `graph` in `obo.apis` (with `GroupMember.Read.All`)".into(),
            );
        }
        for id in &o.overage_group_ids {
            if !is_guid(id) {
                problem(
                    "obo.overage_group_ids",
                    format!("`{id}` is not a group id (a GUID)"),
                );
            }
        }
        if problems.len() > before {
            return None;
        }
        Some(OboSettings {
            credential: credential?,
            apis,
            skew,
            cache_capacity: o.cache_capacity.unwrap_or(DEFAULT_OBO_CACHE_CAPACITY),
            timeout,
            max_retries: o.max_retries.unwrap_or(DEFAULT_OBO_MAX_RETRIES),
            graph_url,
            overage: o.resolve_group_overage.then_some(o.overage_group_ids),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdGuardConfig;
    use crate::config::testing::valid;

    #[test]
    fn obo_problems_name_their_keys() {
        let obo = OboConfig {
            client_secret: Some(Secret::new("s")),
            federated_token_file: Some("/var/run/token".into()),
            apis: BTreeMap::from([(
                "mixed".to_owned(),
                vec![
                    "https://graph.microsoft.com/User.Read".to_owned(),
                    "api://other/x".to_owned(),
                ],
            )]),
            skew: Some("soon".into()),
            graph_url: Some("http://graph.example.com".into()),
            resolve_group_overage: true,
            ..OboConfig::default()
        };
        let err = IdGuardConfig {
            token: valid(),
            obo: Some(obo),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        let keys: Vec<_> = err.problems().iter().map(|p| p.key()).collect();
        assert_eq!(
            keys,
            [
                "obo.client_secret",
                "obo.apis.mixed",
                "obo.skew",
                "obo.graph_url",
                "obo.resolve_group_overage"
            ]
        );
        assert!(
            !err.to_string().contains("`s`"),
            "the secret is never echoed"
        );
    }

    #[test]
    fn obo_credential_problems() {
        let resolve = |obo: OboConfig| {
            IdGuardConfig {
                token: valid(),
                obo: Some(obo),
                ..Default::default()
            }
            .resolve()
            .unwrap_err()
            .problems()
            .iter()
            .map(|p| (p.key().to_owned(), p.message().to_owned()))
            .collect::<Vec<_>>()
        };
        let none = resolve(OboConfig::default());
        assert_eq!(none[0].0, "obo");
        let half = resolve(OboConfig {
            private_key_file: Some("/nonexistent/key.pem".into()),
            ..OboConfig::default()
        });
        assert_eq!(half[0].0, "obo.certificate_file");
        let missing = resolve(OboConfig {
            certificate_file: Some("/nonexistent/cert.pem".into()),
            private_key_file: Some("/nonexistent/key.pem".into()),
            ..OboConfig::default()
        });
        assert_eq!(missing[0].0, "obo.certificate_file");
        assert!(
            missing[0].1.contains("cannot read `/nonexistent/cert.pem`"),
            "{missing:?}"
        );
    }

    #[test]
    fn obo_section_from_toml() {
        let cfg: IdGuardConfig = toml::from_str(
            r#"
            [token]
            tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
            client_id = "8c1a5e6f-0000-4000-8000-000000000001"
            resource = "https://mcp.contoso.com/mcp"
            [obo]
            client_secret = "s3cr3t"
            skew = "2m"
            [obo.apis]
            graph = ["https://graph.microsoft.com/User.Read", "https://graph.microsoft.com/GroupMember.Read.All"]
            "#,
        )
        .unwrap();
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
        let r = cfg.resolve().unwrap();
        let obo = r.obo.unwrap();
        assert_eq!(obo.skew, Duration::from_secs(120));
        assert_eq!(
            obo.apis["graph"].as_ref(),
            [
                "https://graph.microsoft.com/GroupMember.Read.All",
                "https://graph.microsoft.com/User.Read"
            ]
        );
        let bad = toml::from_str::<IdGuardConfig>("[obo]\nclient_secret = \"x\"\nverify = false\n");
        assert!(bad.unwrap_err().to_string().contains("verify"));
    }
}
