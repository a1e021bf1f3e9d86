//! Where Entra serves what: the v2 endpoints under an authority (`https://login.microsoftonline.com`,
//! a sovereign cloud's, or the dev emulator's) and a tenant segment (a tenant id,
//! `organizations`, or a verified domain).

/// The public Entra authority host.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// The v2 issuer of `tenant`: `{authority}/{tenant}/v2.0`.
pub(crate) fn issuer(authority: &str, tenant: &str) -> String {
    format!("{authority}/{tenant}/v2.0")
}

/// The v2 OpenID Connect discovery document of `tenant`:
/// `{authority}/{tenant}/v2.0/.well-known/openid-configuration`.
pub fn discovery_url(authority: &str, tenant: &str) -> String {
    format!("{authority}/{tenant}/v2.0/.well-known/openid-configuration")
}

/// The v1.0 discovery document of `tenant` (no `/v2.0`): it names the v1.0 issuer
/// (`https://sts.windows.net/{tid}/`).
pub(crate) fn v1_discovery_url(authority: &str, tenant: &str) -> String {
    format!("{authority}/{tenant}/.well-known/openid-configuration")
}

/// The v2 authorization endpoint of `tenant`: `{authority}/{tenant}/oauth2/v2.0/authorize`.
pub(crate) fn authorize_endpoint(authority: &str, tenant: &str) -> String {
    format!("{authority}/{tenant}/oauth2/v2.0/authorize")
}

/// The v2 token endpoint of `tenant`: `{authority}/{tenant}/oauth2/v2.0/token`.
pub(crate) fn token_endpoint(authority: &str, tenant: &str) -> String {
    format!("{authority}/{tenant}/oauth2/v2.0/token")
}

/// The v2 admin-consent endpoint of `tenant`, without its query (`client_id`, `scope`, and
/// optionally `redirect_uri` and `state`): `{authority}/{tenant}/v2.0/adminconsent`.
pub fn admin_consent_endpoint(authority: &str, tenant: &str) -> String {
    format!("{authority}/{tenant}/v2.0/adminconsent")
}

/// The v2 admin-consent URL for `client_id` in tenant `tid`, asking for everything the app
/// registration requires of `resource` (`{resource}/.default`).
pub(crate) fn admin_consent_url(
    authority: &str,
    tid: &str,
    client_id: &str,
    resource: &str,
) -> String {
    let scope = format!("{resource}/.default");
    let base = admin_consent_endpoint(authority, tid);
    match reqwest::Url::parse_with_params(&base, [("client_id", client_id), ("scope", &scope)]) {
        Ok(url) => url.to_string(),
        Err(_) => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_layout() {
        assert_eq!(
            issuer(DEFAULT_AUTHORITY, "organizations"),
            "https://login.microsoftonline.com/organizations/v2.0"
        );
        assert_eq!(
            discovery_url(DEFAULT_AUTHORITY, "tid"),
            "https://login.microsoftonline.com/tid/v2.0/.well-known/openid-configuration"
        );
        assert_eq!(
            v1_discovery_url(DEFAULT_AUTHORITY, "tid"),
            "https://login.microsoftonline.com/tid/.well-known/openid-configuration"
        );
        assert_eq!(
            authorize_endpoint(DEFAULT_AUTHORITY, "tid"),
            "https://login.microsoftonline.com/tid/oauth2/v2.0/authorize"
        );
        assert_eq!(
            token_endpoint(DEFAULT_AUTHORITY, "tid"),
            "https://login.microsoftonline.com/tid/oauth2/v2.0/token"
        );
        assert_eq!(
            admin_consent_endpoint(DEFAULT_AUTHORITY, "contoso.example"),
            "https://login.microsoftonline.com/contoso.example/v2.0/adminconsent"
        );
    }
}
