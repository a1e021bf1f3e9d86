//! `idguard entra …`, `idguard config check` and `idguard token mint`.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};

use crate::config::IdGuardConfig;
use crate::policy::PolicyEngine;

/// `idguard entra` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum EntraCommand {
    /// Print an app-registration fragment: app roles the policies use, the exposed scope,
    /// v2 tokens, the identifier URI.
    Manifest {
        /// Configuration file (for `token.client_id`, `identifier_uri`, `required_scopes`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The policy directory whose `Role::"…"` references become app roles.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
    },
    /// Print the admin-consent URL for this API in a tenant.
    ConsentUrl {
        /// Configuration file (for `token.authority`, `token.client_id`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The tenant whose admin consents (default: `token.tenant`).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Check the configuration against the tenant's discovery document and keys.
    Doctor {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn load(config: Option<&std::path::Path>) -> Result<IdGuardConfig, Box<dyn Error>> {
    let path = super::serve::config_path(config);
    Ok(IdGuardConfig::load(path.as_deref(), std::env::vars())?)
}

pub(crate) async fn run(command: EntraCommand) -> Result<ExitCode, Box<dyn Error>> {
    match command {
        EntraCommand::Manifest { config, policies } => {
            let config = load(config.as_deref())?;
            let engine = PolicyEngine::from_dir(&policies)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&manifest(&config, &engine.referenced_roles()))?
            );
            Ok(ExitCode::SUCCESS)
        }
        EntraCommand::ConsentUrl { config, tenant } => {
            let config = load(config.as_deref())?;
            let t = &config.token;
            let client_id = t
                .client_id
                .as_deref()
                .ok_or("`token.client_id` is required")?;
            let tenant = tenant
                .or_else(|| t.tenant.clone())
                .ok_or("give --tenant or set `token.tenant`")?;
            let authority = t
                .authority
                .clone()
                .unwrap_or_else(|| crate::DEFAULT_AUTHORITY.to_owned());
            println!("{}", consent_url(&authority, &tenant, client_id));
            Ok(ExitCode::SUCCESS)
        }
        EntraCommand::Doctor { config } => doctor(&load(config.as_deref())?).await,
    }
}

/// An Entra app-registration fragment for this API.
pub(crate) fn manifest(config: &IdGuardConfig, roles: &[String]) -> Value {
    let client_id = config
        .token
        .client_id
        .clone()
        .unwrap_or_else(|| "<client-id>".into());
    let identifier = config
        .token
        .identifier_uri
        .clone()
        .unwrap_or_else(|| format!("api://{client_id}"));
    let id = |kind: &str, value: &str| {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("{identifier}#{kind}:{value}").as_bytes(),
        )
        .to_string()
    };
    let oauth_scopes = config.oauth.as_ref().and_then(|o| o.scopes.clone());
    let scopes: Vec<String> = match oauth_scopes {
        Some(s) if !s.is_empty() => s,
        _ if config.token.required_scopes.is_empty() => vec!["mcp.tools".into()],
        _ => config.token.required_scopes.clone(),
    };
    let mut manifest = json!({
        "identifierUris": [identifier],
        "api": {
            "requestedAccessTokenVersion": 2,
            "oauth2PermissionScopes": scopes.iter().map(|s| json!({
                "id": id("scope", s),
                "value": s,
                "type": "User",
                "isEnabled": true,
                "adminConsentDisplayName": format!("Use the MCP server ({s})"),
                "adminConsentDescription": "Allows the app to call the MCP server on behalf of the signed-in user.",
                "userConsentDisplayName": format!("Use the MCP server ({s})"),
                "userConsentDescription": "Allows the app to call the MCP server on your behalf.",
            })).collect::<Vec<_>>(),
        },
        "appRoles": roles.iter().map(|r| json!({
            "id": id("role", r),
            "allowedMemberTypes": ["User", "Application"],
            "value": r,
            "displayName": r,
            "description": format!("Referenced by the idguard policies as Role::\"{r}\"."),
            "isEnabled": true,
        })).collect::<Vec<_>>(),
        "optionalClaims": {"accessToken": [
            {"name": "idtyp", "additionalProperties": ["include_user_token"]},
            {"name": "xms_cc"},
            {"name": "acrs"},
        ]},
        "groupMembershipClaims": "SecurityGroup",
    });
    // The OAuth proxy signs users in as this app: Entra must know its callback.
    if let Some(oauth) = &config.oauth {
        let issuer = oauth
            .issuer
            .clone()
            .or_else(|| {
                let resource = config.token.resource.as_deref()?;
                url::Url::parse(resource)
                    .ok()
                    .map(|u| u.origin().ascii_serialization())
            })
            .unwrap_or_else(|| "<issuer>".into());
        if let Some(m) = manifest.as_object_mut() {
            m.insert(
                "web".into(),
                json!({"redirectUris": [format!("{}/callback", issuer.trim_end_matches('/'))]}),
            );
        }
    }
    manifest
}

/// The v2 admin-consent URL for `client_id` in `tenant` (`.default`: everything the app
/// registration requires).
pub(crate) fn consent_url(authority: &str, tenant: &str, client_id: &str) -> String {
    let authority = authority.trim_end_matches('/');
    let scope = "https%3A%2F%2Fgraph.microsoft.com%2F.default";
    format!("{authority}/{tenant}/v2.0/adminconsent?client_id={client_id}&scope={scope}")
}

async fn doctor(config: &IdGuardConfig) -> Result<ExitCode, Box<dyn Error>> {
    let mut failures = 0;
    let mut report = |ok: bool, what: String| {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failures += 1;
        }
    };
    let resolved = match config.clone().resolve() {
        Ok(r) => r,
        Err(e) => {
            for p in e.problems() {
                report(false, format!("`{}`: {}", p.key(), p.message()));
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    report(true, "configuration resolves".into());
    let segment = resolved.tenant().discovery_segment().to_owned();
    let url = format!(
        "{}/{segment}/v2.0/.well-known/openid-configuration",
        resolved.authority()
    );
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let doc: Option<Value> = match http.get(&url).send().await {
        Ok(res) if res.status().is_success() => res.json().await.ok(),
        Ok(res) => {
            report(
                false,
                format!("discovery `{url}` answered {}", res.status()),
            );
            None
        }
        Err(e) => {
            report(
                false,
                format!(
                    "discovery `{url}` unreachable: {}",
                    crate::entra::without_url(&e)
                ),
            );
            None
        }
    };
    if let Some(doc) = doc {
        report(true, format!("discovery document at {url}"));
        let issuer = doc
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let expect_template = !matches!(resolved.tenant(), crate::TenantMode::Single(_));
        report(
            if expect_template {
                issuer.to_ascii_lowercase().contains("{tenantid}")
            } else {
                issuer.contains(segment.as_str())
            },
            format!("issuer `{issuer}` fits tenant `{segment}`"),
        );
        match doc.get("jwks_uri").and_then(Value::as_str) {
            Some(jwks) => match http.get(jwks).send().await {
                Ok(res) if res.status().is_success() => {
                    let keys: Value = res.json().await.unwrap_or_default();
                    let n = keys
                        .get("keys")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    report(n > 0, format!("{n} signing keys at {jwks}"));
                }
                _ => report(false, format!("signing keys at `{jwks}` unreachable")),
            },
            None => report(false, "discovery document has no `jwks_uri`".into()),
        }
    }
    let resource = resolved.resource();
    report(
        resource.starts_with("https://") || crate::entra::is_loopback_url(resource),
        format!("resource `{resource}` is https (or loopback)"),
    );
    report(
        !resource.ends_with('/'),
        "resource has no trailing slash (Entra rejects identifier URIs ending in `/`)".into(),
    );
    println!("{failures} problem(s)");
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `idguard config check`: every problem of a configuration, each with its key.
pub(crate) fn config_check(config: Option<PathBuf>) -> ExitCode {
    let path = super::serve::config_path(config.as_deref());
    let loaded = IdGuardConfig::load(path.as_deref(), std::env::vars());
    let problems = match loaded {
        Err(e) => e.problems().to_vec(),
        Ok(c) => match c.resolve() {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().to_vec(),
        },
    };
    let name = path.map_or_else(|| "(environment)".to_owned(), |p| p.display().to_string());
    for p in &problems {
        println!("{name}: `{}`: {}", p.key(), p.message());
    }
    if problems.is_empty() {
        println!("ok: {name}");
        ExitCode::SUCCESS
    } else {
        println!("{} problem(s)", problems.len());
        ExitCode::FAILURE
    }
}

/// `idguard token mint`: a fresh token from a running dev-mode server.
pub(crate) async fn mint(
    url: &str,
    user: &str,
    lifetime_secs: u64,
) -> Result<ExitCode, Box<dyn Error>> {
    let res = reqwest::Client::new()
        .get(format!(
            "{}/dev/token?user={user}&lifetime_secs={lifetime_secs}",
            url.trim_end_matches('/')
        ))
        .send()
        .await
        .map_err(|e| {
            format!(
                "is `idguard` running in dev mode at {url}? {}",
                crate::entra::without_url(&e)
            )
        })?;
    let status = res.status();
    let text = res.text().await?;
    if status.is_success() {
        println!("{text}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: {status}: {text}");
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_url_is_v2_adminconsent_with_default_scope() {
        assert_eq!(
            consent_url(
                "https://login.microsoftonline.com/",
                "contoso.example",
                "abc"
            ),
            "https://login.microsoftonline.com/contoso.example/v2.0/adminconsent?client_id=abc&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
        );
    }

    #[test]
    fn the_proxy_callback_is_a_web_redirect_uri() {
        let mut config = IdGuardConfig::default();
        config.token.resource = Some("https://mcp.contoso.com/mcp".into());
        assert!(manifest(&config, &[]).get("web").is_none());
        config.oauth = Some(crate::OAuthConfig::default());
        assert_eq!(
            manifest(&config, &[])["web"]["redirectUris"],
            json!(["https://mcp.contoso.com/callback"])
        );
    }
}
