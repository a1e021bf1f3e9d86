//! `idguard entra …`, `idguard config check` and `idguard token mint`.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};

use idguard::IdGuardConfig;
use idguard::policy::PolicyEngine;

/// `idguard entra` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum EntraCommand {
    /// Print an app-registration fragment: app roles the policies use, the exposed scope,
    /// v2 tokens, the identifier URIs, redirect URIs, pre-authorized clients.
    Manifest {
        /// Configuration file (for `token.client_id`, `identifier_uri`, `required_scopes`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The policy directory whose `Role::"…"` references become app roles.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// A client application whose users get the API's scopes without a consent prompt
        /// (`api.preAuthorizedApplications`): an application id, or `vscode` (Visual
        /// Studio Code, aebc6443-996d-45c2-90f0-388ff96faa56). Repeat for more.
        #[arg(long = "pre-authorize", value_name = "APP_ID")]
        pre_authorize: Vec<String>,
    },
    /// Print the admin-consent URL for this API in a tenant.
    ConsentUrl {
        /// Configuration file (for `token.authority`, `token.client_id`, `[obo.apis]`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The tenant whose admin consents (default: `token.tenant`).
        #[arg(long)]
        tenant: Option<String>,
        /// Where Entra sends the administrator afterwards; it must be a redirect URI of the
        /// app registration. Default: `{origin of token.resource}/admin-consent`, which
        /// `idguard entra manifest` registers and `idguard serve` answers.
        #[arg(long)]
        redirect_uri: Option<String>,
        /// A permission to consent to (repeat for more). Default: the `[obo.apis]` and
        /// `oauth.consent_scopes` scopes; without any, `https://graph.microsoft.com/.default`
        /// (every permission the registration lists).
        #[arg(long = "scope")]
        scopes: Vec<String>,
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
        EntraCommand::Manifest {
            config,
            policies,
            pre_authorize,
        } => {
            let config = load(config.as_deref())?;
            let engine = PolicyEngine::from_dir(&policies).map_err(|e| {
                format!("cannot load the policies in `{}`: {e}", policies.display())
            })?;
            let clients = pre_authorize
                .iter()
                .map(|c| pre_authorized_app(c))
                .collect::<Result<Vec<_>, _>>()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&manifest(
                    &config,
                    &engine.referenced_roles(),
                    &clients
                ))?
            );
            Ok(ExitCode::SUCCESS)
        }
        EntraCommand::ConsentUrl {
            config,
            tenant,
            redirect_uri,
            scopes,
        } => {
            let config = load(config.as_deref())?;
            let t = &config.token;
            let client_id = t
                .client_id
                .as_deref()
                .ok_or("`token.client_id` is required (or IDGUARD_TOKEN_CLIENT_ID)")?;
            let tenant = tenant
                .or_else(|| t.tenant.clone())
                .ok_or("give --tenant or set `token.tenant`")?;
            if tenant.eq_ignore_ascii_case("common") {
                return Err(
                    "admin consent needs a tenant id, a domain or `organizations`, not `common`"
                        .into(),
                );
            }
            let authority = t
                .authority
                .clone()
                .unwrap_or_else(|| idguard::DEFAULT_AUTHORITY.to_owned());
            let redirect_uri = match redirect_uri {
                Some(uri) => uri,
                None => format!(
                    "{}/admin-consent",
                    origin_of(t.resource.as_deref()).ok_or(
                        "give --redirect-uri, or set `token.resource` (its origin serves /admin-consent)"
                    )?
                ),
            };
            let scopes = if scopes.is_empty() {
                consent_scopes(&config)
            } else {
                scopes
            };
            let state = idguard::internals::random_token(16).ok_or("no randomness for `state`")?;
            println!(
                "{}",
                consent_url(&ConsentRequest {
                    authority: &authority,
                    tenant: &tenant,
                    client_id,
                    scopes: &scopes,
                    redirect_uri: &redirect_uri,
                    state: &state,
                })
            );
            eprintln!(
                "An administrator of the tenant opens this URL and approves: {}. Entra then sends them to {redirect_uri}, which must be a redirect URI of the app registration (`idguard entra manifest` lists it under web.redirectUris).",
                scopes.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        EntraCommand::Doctor { config } => doctor(&load(config.as_deref())?).await,
    }
}

/// Visual Studio Code's application id, which pre-authorizing `vscode` names.
const VSCODE_APP_ID: &str = "aebc6443-996d-45c2-90f0-388ff96faa56";

/// A `--pre-authorize` value as an application id.
fn pre_authorized_app(name: &str) -> Result<String, String> {
    if name.eq_ignore_ascii_case("vscode") {
        Ok(VSCODE_APP_ID.to_owned())
    } else if idguard::internals::is_guid(name) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!(
            "--pre-authorize `{name}`: an application (client) id, or `vscode`"
        ))
    }
}

/// The origin (`https://host[:port]`) of a URL.
fn origin_of(url: Option<&str>) -> Option<String> {
    url::Url::parse(url?)
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
}

/// The permissions an administrator consents to for this API: the downstream scopes of
/// `[obo.apis]` and `oauth.consent_scopes`. Entra refuses `.default` mixed with named
/// scopes, so one `.default` makes every resource `.default`. Without any: Graph's
/// `.default` (every permission the registration lists).
fn consent_scopes(config: &IdGuardConfig) -> Vec<String> {
    let mut scopes: Vec<String> = config
        .obo
        .iter()
        .flat_map(|o| o.apis.values().flatten())
        .chain(
            config
                .oauth
                .iter()
                .flat_map(|o| o.consent_scopes.iter().flatten()),
        )
        .filter(|s| {
            !matches!(
                s.as_str(),
                "openid" | "profile" | "offline_access" | "email"
            )
        })
        .cloned()
        .collect();
    scopes.sort();
    scopes.dedup();
    if scopes.iter().any(|s| s.ends_with("/.default")) {
        let mut resources: Vec<String> = scopes
            .iter()
            .map(|s| {
                format!(
                    "{}/.default",
                    idguard::internals::resource_of(std::slice::from_ref(s))
                )
            })
            .collect();
        resources.sort();
        resources.dedup();
        return resources;
    }
    if scopes.is_empty() {
        scopes.push("https://graph.microsoft.com/.default".to_owned());
    }
    scopes
}

/// An Entra app-registration fragment for this API.
pub(crate) fn manifest(
    config: &IdGuardConfig,
    roles: &[String],
    pre_authorized: &[String],
) -> Value {
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
        _ if config.token.required_scopes.is_empty() => {
            vec![idguard::internals::DEFAULT_SCOPE.into()]
        }
        _ => config.token.required_scopes.clone(),
    };
    // MCP clients send the resource URL as RFC 8707 `resource`; Entra accepts it only when
    // it is an identifier URI of the app (https: a verified domain, v2 tokens).
    let resource = config
        .token
        .resource
        .as_deref()
        .map(|r| r.trim_end_matches('/'));
    let mut identifier_uris = vec![identifier.clone()];
    if let Some(r) = resource.filter(|r| r.starts_with("https://") && *r != identifier) {
        identifier_uris.push(r.to_owned());
    }
    let origin = origin_of(config.token.resource.as_deref())
        .unwrap_or_else(|| "<origin of token.resource>".into());
    let mut redirect_uris = vec![format!("{origin}/admin-consent")];
    let pre_authorized: Vec<Value> = pre_authorized
        .iter()
        .map(|app| {
            json!({
                "appId": app,
                "delegatedPermissionIds": scopes.iter().map(|s| id("scope", s)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut manifest = json!({
        "identifierUris": identifier_uris,
        "api": {
            "requestedAccessTokenVersion": 2,
            "preAuthorizedApplications": pre_authorized,
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
    // The OAuth proxy signs users in as this app: Entra must know its callback. Admin
    // consent (`idguard entra consent-url`) lands on `/admin-consent`.
    if let Some(oauth) = &config.oauth {
        let issuer = oauth
            .issuer
            .clone()
            .or_else(|| origin_of(config.token.resource.as_deref()))
            .unwrap_or_else(|| "<issuer>".into());
        redirect_uris.push(format!("{}/callback", issuer.trim_end_matches('/')));
    }
    if let Some(m) = manifest.as_object_mut() {
        m.insert("web".into(), json!({ "redirectUris": redirect_uris }));
    }
    manifest
}

/// What the admin-consent URL asks for.
pub(crate) struct ConsentRequest<'a> {
    pub(crate) authority: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) scopes: &'a [String],
    pub(crate) redirect_uri: &'a str,
    pub(crate) state: &'a str,
}

/// Microsoft's v2 admin-consent URL (`/{tenant}/v2.0/adminconsent` with `client_id`,
/// `scope`, `redirect_uri` and `state`).
pub(crate) fn consent_url(r: &ConsentRequest<'_>) -> String {
    let base =
        idguard::internals::admin_consent_endpoint(r.authority.trim_end_matches('/'), r.tenant);
    let scope = r.scopes.join(" ");
    match url::Url::parse_with_params(
        &base,
        [
            ("client_id", r.client_id),
            ("scope", scope.as_str()),
            ("redirect_uri", r.redirect_uri),
            ("state", r.state),
        ],
    ) {
        Ok(url) => url.to_string(),
        Err(_) => base,
    }
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
    let segment = idguard::internals::discovery_segment(resolved.tenant()).to_owned();
    let url = idguard::internals::discovery_url(resolved.authority(), &segment);
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
                    idguard::internals::without_url(&e)
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
        let expect_template = !matches!(resolved.tenant(), idguard::TenantMode::Single(_));
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
        resource.starts_with("https://") || idguard::internals::is_loopback_url(resource),
        format!("resource `{resource}` is https (or loopback)"),
    );
    // The values as written: `resolve` drops a trailing `/`, Entra and MCP clients do not.
    let written = config.token.resource.as_deref().unwrap_or_default();
    report(
        !written.ends_with('/'),
        format!(
            "`token.resource` `{written}` has no trailing slash (clients compare the URL exactly; Entra refuses identifier URIs ending in `/`)"
        ),
    );
    if let Some(identifier) = config.token.identifier_uri.as_deref() {
        report(
            !identifier.ends_with('/'),
            format!(
                "`token.identifier_uri` `{identifier}` has no trailing slash (Entra refuses identifier URIs ending in `/`)"
            ),
        );
    }
    println!("{failures} problem(s)");
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `idguard config check`: every problem of a configuration, each named as written — the
/// same check `idguard serve` runs before it starts (policy directory included).
pub(crate) fn config_check(config: Option<PathBuf>) -> ExitCode {
    let path = super::serve::config_path(config.as_deref());
    let checked = idguard::internals::check_binary(
        path.as_deref(),
        std::env::vars(),
        &idguard::internals::Overrides::default(),
        false,
    );
    let file = path.as_ref().map_or_else(
        || "(no configuration file)".to_owned(),
        |p| p.display().to_string(),
    );
    match checked {
        Ok(checked) => {
            let vars = checked.origins.variables();
            if vars.is_empty() {
                println!("ok: {file}");
            } else {
                println!("ok: {file} with {}", vars.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in problem_lines(&e, &file) {
                println!("{line}");
            }
            println!("{} problem(s)", e.problems().len());
            ExitCode::FAILURE
        }
    }
}

/// One line per problem, saying where it was written: the environment variable, the
/// command-line option, or the file's key.
pub(crate) fn problem_lines(e: &idguard::ConfigError, file: &str) -> Vec<String> {
    e.problems()
        .iter()
        .map(|p| {
            let key = p.key();
            if key.starts_with("IDGUARD_") {
                format!("environment: `{key}`: {}", p.message())
            } else if key.starts_with("--") {
                format!("command line: `{key}`: {}", p.message())
            } else if file.starts_with('(') && key.contains('.') {
                // No file: name both places the key can be set.
                let var = format!(
                    "IDGUARD_{}",
                    key.split('.')
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("_")
                        .to_ascii_uppercase()
                );
                format!("`{key}` (idguard.toml, or `{var}`): {}", p.message())
            } else {
                format!("{file}: `{key}`: {}", p.message())
            }
        })
        .collect()
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
                idguard::internals::without_url(&e)
            )
        })?;
    let status = res.status();
    let note = res
        .headers()
        .get(DEV_NOTE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = res.text().await?;
    if status.is_success() {
        println!("{text}");
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
        Ok(ExitCode::SUCCESS)
    } else if status == reqwest::StatusCode::NOT_FOUND && text.is_empty() {
        eprintln!("error: {url} is not idguard in dev mode (no /dev/token)");
        Ok(ExitCode::FAILURE)
    } else {
        eprintln!("error: {}", text.trim());
        Ok(ExitCode::FAILURE)
    }
}

/// A header of `/dev/token` answers: what to know about the token (carol's tenant).
pub(crate) const DEV_NOTE_HEADER: &str = "x-idguard-note";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_url_is_v2_adminconsent_with_redirect_uri_and_the_apis_scopes() {
        let scopes = ["https://graph.microsoft.com/User.Read".to_owned()];
        let url = consent_url(&ConsentRequest {
            authority: "https://login.microsoftonline.com/",
            tenant: "contoso.example",
            client_id: "abc",
            scopes: &scopes,
            redirect_uri: "https://mcp.contoso.com/admin-consent",
            state: "s1",
        });
        assert_eq!(
            url,
            "https://login.microsoftonline.com/contoso.example/v2.0/adminconsent?client_id=abc&scope=https%3A%2F%2Fgraph.microsoft.com%2FUser.Read&redirect_uri=https%3A%2F%2Fmcp.contoso.com%2Fadmin-consent&state=s1"
        );
    }

    #[test]
    fn consent_scopes_come_from_the_downstream_apis() {
        let mut config = IdGuardConfig::default();
        assert_eq!(
            consent_scopes(&config),
            ["https://graph.microsoft.com/.default"]
        );
        config.obo = Some(idguard::OboConfig {
            apis: [
                (
                    "graph".to_owned(),
                    vec!["https://graph.microsoft.com/User.Read".to_owned()],
                ),
                (
                    "orders".to_owned(),
                    vec!["api://orders/Orders.Read".to_owned()],
                ),
            ]
            .into_iter()
            .collect(),
            ..idguard::OboConfig::default()
        });
        assert_eq!(
            consent_scopes(&config),
            [
                "api://orders/Orders.Read",
                "https://graph.microsoft.com/User.Read"
            ]
        );
        // `.default` cannot be mixed with named scopes: every resource becomes `.default`.
        if let Some(o) = config.obo.as_mut() {
            o.apis.insert(
                "graph".to_owned(),
                vec!["https://graph.microsoft.com/.default".to_owned()],
            );
        }
        assert_eq!(
            consent_scopes(&config),
            [
                "api://orders/.default",
                "https://graph.microsoft.com/.default"
            ]
        );
    }

    #[test]
    fn the_manifest_registers_redirect_uris_identifier_uris_and_pre_authorized_clients() {
        let mut config = IdGuardConfig::default();
        config.token.client_id = Some("8c1a5e6f-0000-4000-8000-000000000001".into());
        config.token.resource = Some("https://mcp.contoso.com/mcp".into());
        let m = manifest(&config, &[], &[]);
        assert_eq!(
            m["web"]["redirectUris"],
            json!(["https://mcp.contoso.com/admin-consent"])
        );
        assert_eq!(
            m["identifierUris"],
            json!([
                "api://8c1a5e6f-0000-4000-8000-000000000001",
                "https://mcp.contoso.com/mcp"
            ])
        );
        config.oauth = Some(idguard::OAuthConfig::default());
        let vscode = pre_authorized_app("vscode").unwrap();
        let m = manifest(&config, &[], &[vscode]);
        assert_eq!(
            m["web"]["redirectUris"],
            json!([
                "https://mcp.contoso.com/admin-consent",
                "https://mcp.contoso.com/callback"
            ])
        );
        let scope_id = &m["api"]["oauth2PermissionScopes"][0]["id"];
        assert_eq!(
            m["api"]["preAuthorizedApplications"],
            json!([{"appId": VSCODE_APP_ID, "delegatedPermissionIds": [scope_id]}])
        );
        assert!(pre_authorized_app("code").is_err());
    }
}
