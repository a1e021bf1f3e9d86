//! Microsoft Entra specifics: authorities, tenants, issuer rules, where the endpoints are
//! (`urls`: discovery, token, authorize, admin consent) and what Entra's errors and AADSTS
//! codes mean (`errors`).
//!
//! This is the only module that knows how Entra names things. The issuer rules follow Microsoft's
//! "Validate the issuer" and "Validate the signing key issuer" guidance:
//!
//! - single tenant: `iss` equals the tenant's issuer exactly;
//! - multi-tenant: the `{tenantid}` placeholder of the issuer template is replaced by the
//!   token's `tid` (a GUID), then compared exactly, and the first path segment of `iss`
//!   must be that `tid`;
//! - a signing key that carries an `issuer` may only sign tokens of that issuer (after the
//!   same substitution).

mod discovery;
mod errors;
mod urls;

pub(crate) use discovery::body_capped;
pub(crate) use discovery::fetch_metadata;
pub use discovery::without_url;
pub(crate) use errors::{EntraError, Refusal};
#[cfg(feature = "internals")]
pub use urls::admin_consent_endpoint;
pub use urls::{DEFAULT_AUTHORITY, discovery_url};
pub(crate) use urls::{
    admin_consent_url, authorize_endpoint, issuer, token_endpoint, v1_discovery_url,
};

/// The placeholder Entra puts in multi-tenant issuer templates.
const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// Which tenants a service accepts tokens from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TenantMode {
    /// Exactly one tenant (its id).
    Single(String),
    /// Any of these tenants (multi-tenant app with an allow-list).
    AllowList(Vec<String>),
    /// Any organizational tenant (public multi-tenant SaaS).
    AnyOrganization,
}

impl TenantMode {
    /// The tenant segment used for discovery: the tenant id, or `organizations`.
    pub(crate) fn discovery_segment(&self) -> &str {
        match self {
            TenantMode::Single(tid) => tid,
            TenantMode::AllowList(_) | TenantMode::AnyOrganization => "organizations",
        }
    }

    /// True when tokens of `tid` are accepted.
    pub(crate) fn allows(&self, tid: &str) -> bool {
        match self {
            TenantMode::Single(t) => t.eq_ignore_ascii_case(tid),
            TenantMode::AllowList(all) => all.iter().any(|t| t.eq_ignore_ascii_case(tid)),
            TenantMode::AnyOrganization => true,
        }
    }
}

/// True when `s` is a GUID in the 8-4-4-4-12 hex form Entra uses for tenant and object ids.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Replaces the `{tenantid}` placeholder (any case) in an issuer template.
pub(crate) fn substitute_tenant(template: &str, tid: &str) -> String {
    match find_ignore_ascii_case(template, TENANT_PLACEHOLDER) {
        Some(at) => {
            let mut out = String::with_capacity(template.len() + tid.len());
            out.push_str(template.get(..at).unwrap_or_default());
            out.push_str(tid);
            out.push_str(
                template
                    .get(at + TENANT_PLACEHOLDER.len()..)
                    .unwrap_or_default(),
            );
            out
        }
        None => template.to_owned(),
    }
}

/// Compares `iss` with `template` after tenant substitution, without allocating.
pub(crate) fn issuer_matches(template: &str, tid: &str, iss: &str) -> bool {
    match find_ignore_ascii_case(template, TENANT_PLACEHOLDER) {
        Some(at) => {
            let (Some(head), Some(tail)) = (
                template.get(..at),
                template.get(at + TENANT_PLACEHOLDER.len()..),
            ) else {
                return false;
            };
            iss.len() == head.len() + tid.len() + tail.len()
                && iss.starts_with(head)
                && iss.ends_with(tail)
                && iss.get(head.len()..head.len() + tid.len()) == Some(tid)
        }
        None => template == iss,
    }
}

/// True when the first path segment of the issuer URL is `tid` (Microsoft's recap check).
pub(crate) fn issuer_names_tenant(iss: &str, tid: &str) -> bool {
    let Some(rest) = iss.split_once("://").map(|(_, rest)| rest) else {
        return false;
    };
    let mut segments = rest.split('/');
    let _host = segments.next();
    segments.next() == Some(tid)
}

fn find_ignore_ascii_case(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// True for `localhost`, `127.0.0.0/8` and `[::1]` hosts: plain http is allowed only there.
pub fn is_loopback_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    #[test]
    fn guid_shape() {
        assert!(is_guid(TID));
        assert!(!is_guid("organizations"));
        assert!(!is_guid("72f988bf-86f1-41af-91ab-2d7cd011db4z"));
        assert!(!is_guid("72f988bf086f1-41af-91ab-2d7cd011db47"));
    }

    #[test]
    fn template_substitution() {
        let template = "https://login.microsoftonline.com/{tenantid}/v2.0";
        let iss = format!("https://login.microsoftonline.com/{TID}/v2.0");
        assert_eq!(substitute_tenant(template, TID), iss);
        assert!(issuer_matches(template, TID, &iss));
        assert!(issuer_matches(
            "https://login.microsoftonline.com/{TenantId}/v2.0",
            TID,
            &iss
        ));
        assert!(!issuer_matches(template, "other", &iss));
        assert!(!issuer_matches(template, TID, &format!("{iss}/")));
        assert!(issuer_matches(&iss, TID, &iss));
        assert!(!issuer_matches(&iss, TID, "https://evil/"));
    }

    #[test]
    fn issuer_tenant_segment() {
        assert!(issuer_names_tenant(
            &format!("https://sts.windows.net/{TID}/"),
            TID
        ));
        assert!(issuer_names_tenant(
            &format!("http://127.0.0.1:4000/{TID}/v2.0"),
            TID
        ));
        assert!(!issuer_names_tenant("https://sts.windows.net/other/", TID));
        assert!(!issuer_names_tenant("nonsense", TID));
    }

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("http://127.0.0.1:8080/x"));
        assert!(is_loopback_url("http://localhost"));
        assert!(is_loopback_url("http://[::1]:80/"));
        assert!(!is_loopback_url("http://example.com"));
        assert!(!is_loopback_url("https://127.0.0.1"));
        assert!(!is_loopback_url("http://127.0.0.1.evil.com/"));
    }

    #[test]
    fn tenant_modes() {
        assert!(TenantMode::Single(TID.into()).allows(&TID.to_uppercase()));
        assert!(!TenantMode::AllowList(vec![]).allows(TID));
        assert!(TenantMode::AnyOrganization.allows(TID));
        assert_eq!(
            TenantMode::AnyOrganization.discovery_segment(),
            "organizations"
        );
    }
}
