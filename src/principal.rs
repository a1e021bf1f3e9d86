//! The validated caller.
//!
//! A [`Principal`] is what [`ValidateTokenLayer`](crate::ValidateTokenLayer) puts into the
//! request extensions once a bearer token has passed every check. Handlers read it with the
//! axum extractor (`principal: Principal`) or from `http::request::Parts::extensions`.
//!
//! It holds the identity facts that policies and downstream calls need: tenant and object
//! id (the stable key of a caller), scopes, app roles, groups, the client application and
//! the authentication methods. Display claims (`name`, `upn`, `email`) are for display only;
//! never authorize on them.

use std::fmt;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::error::TokenError;

/// Which access-token format the caller presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum TokenVersion {
    /// A v1.0 token (`ver` = `"1.0"`, issuer `https://sts.windows.net/{tid}/`).
    #[serde(rename = "1.0")]
    V1,
    /// A v2.0 token (`ver` = `"2.0"`, issuer `https://{authority}/{tid}/v2.0`).
    #[serde(rename = "2.0")]
    V2,
}

/// A validated caller: who they are, in which tenant, and what they were granted.
///
/// Cloning is cheap (one `Arc`). The pair ([`tenant_id`](Self::tenant_id),
/// [`object_id`](Self::object_id)) is the stable key of a caller; `sub` is pairwise per
/// application and display claims can change, so neither is used as a key.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal(Arc<Inner>);

#[derive(Clone, PartialEq, Eq, Serialize)]
struct Inner {
    tenant_id: String,
    object_id: String,
    subject: String,
    name: Option<String>,
    upn: Option<String>,
    email: Option<String>,
    scopes: Vec<String>,
    roles: Vec<String>,
    groups: Vec<String>,
    groups_overage: bool,
    app_id: Option<String>,
    auth_methods: Vec<String>,
    client_capabilities: Vec<String>,
    acrs: Vec<String>,
    app_only: bool,
    version: TokenVersion,
    expires_at: u64,
}

/// The raw claims of an Entra access token, as far as idguard reads them.
///
/// Unknown claims are ignored. Every field Entra may omit is optional here; which ones are
/// required is decided by the validator, not by deserialization.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Claims {
    pub(crate) iss: Option<String>,
    pub(crate) aud: Option<Audience>,
    pub(crate) exp: Option<u64>,
    pub(crate) nbf: Option<u64>,
    pub(crate) tid: Option<String>,
    pub(crate) oid: Option<String>,
    pub(crate) sub: Option<String>,
    pub(crate) ver: Option<String>,
    pub(crate) azp: Option<String>,
    pub(crate) appid: Option<String>,
    pub(crate) scp: Option<String>,
    #[serde(default)]
    pub(crate) roles: Vec<String>,
    pub(crate) groups: Option<Vec<String>>,
    #[serde(rename = "_claim_names")]
    pub(crate) claim_names: Option<ClaimNames>,
    pub(crate) hasgroups: Option<bool>,
    #[serde(default)]
    pub(crate) amr: Vec<String>,
    pub(crate) idtyp: Option<String>,
    #[serde(default)]
    pub(crate) xms_cc: Vec<String>,
    #[serde(default)]
    pub(crate) acrs: Vec<String>,
    pub(crate) name: Option<String>,
    pub(crate) preferred_username: Option<String>,
    pub(crate) upn: Option<String>,
    pub(crate) unique_name: Option<String>,
    pub(crate) email: Option<String>,
}

/// `aud` is a string in Entra tokens; JWT also allows an array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub(crate) fn any(&self, mut accept: impl FnMut(&str) -> bool) -> bool {
        match self {
            Audience::One(a) => accept(a),
            Audience::Many(all) => all.iter().any(|a| accept(a)),
        }
    }
}

/// `_claim_names`: present instead of `groups` when the user is in too many groups.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ClaimNames {
    pub(crate) groups: Option<String>,
}

impl Principal {
    /// Builds a principal from claims that were already checked (signature, issuer,
    /// audience, lifetime). `tid` and `oid` must be present.
    pub(crate) fn from_checked_claims(
        claims: Claims,
        version: TokenVersion,
    ) -> Result<Self, TokenError> {
        let tenant_id = claims.tid.ok_or(TokenError::MissingClaim("tid"))?;
        let object_id = claims.oid.ok_or(TokenError::MissingClaim("oid"))?;
        let subject = claims.sub.unwrap_or_default();
        let scopes: Vec<String> = claims
            .scp
            .as_deref()
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        // Microsoft: `idtyp == "app"` is the accurate signal; without the optional claim,
        // an app-only token has `oid == sub` and no `scp`.
        let app_only = match claims.idtyp.as_deref() {
            Some(t) => t == "app",
            None => claims.scp.is_none() && object_id == subject,
        };
        let groups_overage = claims
            .claim_names
            .as_ref()
            .is_some_and(|n| n.groups.is_some())
            || claims.hasgroups == Some(true);
        Ok(Principal(Arc::new(Inner {
            tenant_id,
            object_id,
            subject,
            name: claims.name,
            upn: claims
                .upn
                .or(claims.preferred_username)
                .or(claims.unique_name),
            email: claims.email,
            scopes,
            roles: claims.roles,
            groups: claims.groups.unwrap_or_default(),
            groups_overage,
            app_id: claims.azp.or(claims.appid),
            auth_methods: claims.amr,
            client_capabilities: claims.xms_cc,
            acrs: claims.acrs,
            app_only,
            version,
            expires_at: claims.exp.unwrap_or(0),
        })))
    }

    /// Builds a principal from a JSON object of access-token claims **without validating
    /// anything**.
    ///
    /// For tooling and tests that describe a caller by its claims (policy test cases,
    /// `idguard policy explain`). Never feed it a token from a request: use
    /// [`IdGuard::validate`](crate::IdGuard::validate) for that.
    ///
    /// # Errors
    ///
    /// [`TokenError::Malformed`] when the JSON does not have the shape of Entra claims,
    /// [`TokenError::MissingClaim`] when `tid` or `oid` is absent.
    pub fn from_unvalidated_claims(claims: &serde_json::Value) -> Result<Self, TokenError> {
        let parsed = Claims::deserialize(claims).map_err(|_| TokenError::Malformed)?;
        let version = match parsed.ver.as_deref() {
            Some("1.0") => TokenVersion::V1,
            _ => TokenVersion::V2,
        };
        Self::from_checked_claims(parsed, version)
    }

    /// The same caller with group ids resolved through Microsoft Graph (groups overage):
    /// `groups` set, the overage flag cleared.
    pub(crate) fn with_resolved_groups(&self, groups: Vec<String>) -> Self {
        let mut inner = Inner::clone(&self.0);
        inner.groups = groups;
        inner.groups_overage = false;
        Principal(Arc::new(inner))
    }

    /// The same caller as seen through an OAuth proxy session: delegated scopes narrowed
    /// to what the client signed in for (Entra may grant more than it asked), and the
    /// client application (`app_id`, Cedar's `client_app`) set to the proxy's client
    /// (`client`), since the token's own `azp` names idguard itself.
    pub(crate) fn via_oauth_client(&self, granted: &[String], client: &str) -> Self {
        let mut inner = Inner::clone(&self.0);
        inner.scopes.retain(|s| granted.contains(s));
        inner.app_id = Some(client.to_owned());
        Principal(Arc::new(inner))
    }

    /// Whether both are the same instance (then every field is equal).
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The tenant id (`tid`): the directory the caller signed in to.
    pub fn tenant_id(&self) -> &str {
        &self.0.tenant_id
    }

    /// The object id (`oid`) of the user or service principal within its tenant.
    pub fn object_id(&self) -> &str {
        &self.0.object_id
    }

    /// The subject (`sub`), pairwise per application. Prefer [`object_id`](Self::object_id).
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// The display name (`name`), if the token carries one. Display only.
    pub fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }

    /// The sign-in name (`upn`, else `preferred_username`, else `unique_name`). Display only.
    pub fn upn(&self) -> Option<&str> {
        self.0.upn.as_deref()
    }

    /// The `email` claim, if configured as an optional claim. Display only.
    pub fn email(&self) -> Option<&str> {
        self.0.email.as_deref()
    }

    /// The delegated scopes (`scp`, split on spaces): short names such as `mcp.tools`.
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// The app roles (`roles`) assigned to the user or granted to the application.
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// The group object ids (`groups`), or those resolved through Microsoft Graph when the
    /// token had a groups overage and `obo.resolve_group_overage` is on. Empty on an
    /// unresolved overage.
    pub fn groups(&self) -> &[String] {
        &self.0.groups
    }

    /// True when Entra left out `groups` because the caller is in too many groups
    /// (`_claim_names.groups` or `hasgroups`); membership must then come from Graph.
    pub fn groups_overage(&self) -> bool {
        self.0.groups_overage
    }

    /// The client application id (`azp` in v2, `appid` in v1).
    pub fn app_id(&self) -> Option<&str> {
        self.0.app_id.as_deref()
    }

    /// The authentication methods (`amr`), e.g. `pwd`, `mfa`.
    pub fn auth_methods(&self) -> &[String] {
        &self.0.auth_methods
    }

    /// The client capabilities (`xms_cc`); `cp1` means the client handles claims challenges.
    pub fn client_capabilities(&self) -> &[String] {
        &self.0.client_capabilities
    }

    /// The satisfied Conditional Access authentication contexts (`acrs`).
    pub fn acrs(&self) -> &[String] {
        &self.0.acrs
    }

    /// True for an app-only token (client credentials): no user is involved.
    pub fn is_app_only(&self) -> bool {
        self.0.app_only
    }

    /// The token format the caller presented.
    pub fn token_version(&self) -> TokenVersion {
        self.0.version
    }

    /// When the token expires, in seconds since the Unix epoch (`exp`).
    pub fn expires_at(&self) -> u64 {
        self.0.expires_at
    }

    /// True when `scp` contains `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.iter().any(|s| s == scope)
    }

    /// True when `roles` contains `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.0.roles.iter().any(|r| r == role)
    }

    /// True when `groups` contains `group_id`. Says nothing on a groups overage.
    pub fn in_group(&self, group_id: &str) -> bool {
        self.0.groups.iter().any(|g| g == group_id)
    }

    /// True when the caller signed in with multi-factor authentication (`amr` has `mfa`).
    pub fn mfa(&self) -> bool {
        self.0.auth_methods.iter().any(|m| m == "mfa")
    }

    /// True when the client declared it can handle claims challenges (`xms_cc` has `cp1`).
    pub fn handles_claims_challenges(&self) -> bool {
        self.0.client_capabilities.iter().any(|c| c == "cp1")
    }
}

impl Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("tenant_id", &self.0.tenant_id)
            .field("object_id", &self.0.object_id)
            .field("app_only", &self.0.app_only)
            .field("app_id", &self.0.app_id)
            .field("scopes", &self.0.scopes)
            .field("roles", &self.0.roles)
            .field("groups", &self.0.groups.len())
            .field("groups_overage", &self.0.groups_overage)
            .field("version", &self.0.version)
            .finish_non_exhaustive()
    }
}

/// Rejection of the [`Principal`] extractor: the route is not behind
/// [`ValidateTokenLayer`](crate::ValidateTokenLayer). A wiring bug, hence 500, not 401.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct MissingPrincipal;

impl fmt::Display for MissingPrincipal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no principal in request extensions: is the route behind ValidateTokenLayer?")
    }
}

impl std::error::Error for MissingPrincipal {}

impl IntoResponse for MissingPrincipal {
    fn into_response(self) -> Response {
        tracing::error!(target: "idguard::rejection", "{self}");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = MissingPrincipal;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(MissingPrincipal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn app_only_from_idtyp_or_oid_equals_sub() {
        let app = Principal::from_unvalidated_claims(&json!({
            "tid": "t", "oid": "o", "sub": "o", "roles": ["Tools.Read.All"]
        }))
        .unwrap();
        assert!(app.is_app_only());
        let user = Principal::from_unvalidated_claims(&json!({
            "tid": "t", "oid": "o", "sub": "s", "scp": "a b", "idtyp": "user"
        }))
        .unwrap();
        assert!(!user.is_app_only());
        assert_eq!(user.scopes(), ["a", "b"]);
        assert!(user.has_scope("b"));
    }

    #[test]
    fn proxy_sessions_narrow_scopes_and_name_their_client() {
        let p = Principal::from_unvalidated_claims(&serde_json::json!({
            "tid": "t", "oid": "o", "sub": "s", "ver": "2.0", "scp": "mcp.read mcp.write",
            "azp": "idguard-app",
        }))
        .unwrap();
        let seen = p.via_oauth_client(&["mcp.read".to_owned()], "https://app.example/c.json");
        assert_eq!(seen.scopes(), ["mcp.read"]);
        assert!(!seen.has_scope("mcp.write"));
        assert_eq!(seen.app_id(), Some("https://app.example/c.json"));
    }

    #[test]
    fn overage_is_detected() {
        let p = Principal::from_unvalidated_claims(&json!({
            "tid": "t", "oid": "o", "scp": "x",
            "_claim_names": {"groups": "src1"},
            "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/o/getMemberObjects"}}
        }))
        .unwrap();
        assert!(p.groups_overage());
        assert!(p.groups().is_empty());
    }

    #[test]
    fn missing_oid_is_an_error() {
        let err = Principal::from_unvalidated_claims(&json!({"tid": "t"})).unwrap_err();
        assert!(matches!(err, TokenError::MissingClaim("oid")));
    }
}
