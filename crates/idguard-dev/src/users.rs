//! The emulator's directory: tenants ([`DevTenant`]), users ([`DevUser`]) and daemon apps
//! ([`DevApp`]), the default ones a [`DevEntraBuilder`](crate::DevEntraBuilder) starts
//! with, and the dev users as callers a policy test case may name ([`named_callers`]).

use crate::{
    CONTOSO_TENANT_ID, DEV_CLIENT_APP_ID, DEV_SCOPE, FABRIKAM_TENANT_ID, FINANCE_GROUP_ID,
};

/// A tenant the emulator knows.
#[derive(Clone, Debug)]
pub struct DevTenant {
    /// Tenant id (GUID).
    pub id: String,
    /// Display name.
    pub name: String,
}

/// A user the emulator can mint delegated tokens for.
#[derive(Clone, Debug)]
pub struct DevUser {
    /// Short name used to look the user up (`"alice"`).
    pub key: String,
    /// Display name (`name`).
    pub name: String,
    /// Sign-in name (`preferred_username` / `upn`).
    pub upn: String,
    /// Object id (`oid`).
    pub object_id: String,
    /// Home tenant (`tid`).
    pub tenant_id: String,
    /// App roles assigned to the user (`roles`).
    pub roles: Vec<String>,
    /// Group object ids (`groups`).
    pub groups: Vec<String>,
    /// Authentication methods (`amr`).
    pub auth_methods: Vec<String>,
}

/// A daemon application the emulator can mint app-only tokens for.
#[derive(Clone, Debug)]
pub struct DevApp {
    /// Short name (`"reporter"`).
    pub key: String,
    /// Application (client) id (`azp`/`appid`).
    pub app_id: String,
    /// Service principal object id (`oid` = `sub`).
    pub object_id: String,
    /// Tenant the app is provisioned in.
    pub tenant_id: String,
    /// Application permissions granted (`roles`).
    pub roles: Vec<String>,
}

/// Another API's app registration: a confidential client (with a secret) that may exchange
/// on-behalf-of the tokens issued for it (audience its client id or Application ID URI),
/// e.g. an MCP server behind idguard that calls Microsoft Graph for the signed-in user.
#[derive(Clone)]
pub struct DevApi {
    /// Application (client) id.
    pub client_id: String,
    /// Application ID URI (`api://upstream-app`): the `aud` of the tokens issued for it.
    pub identifier_uri: String,
    /// Its client secret.
    pub client_secret: String,
}

impl std::fmt::Debug for DevApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevApi")
            .field("client_id", &self.client_id)
            .field("identifier_uri", &self.identifier_uri)
            .finish_non_exhaustive()
    }
}

impl DevApi {
    /// Whether a token for `aud` is issued to this API.
    pub(crate) fn is_audience(&self, aud: &str) -> bool {
        aud == self.client_id || aud == self.identifier_uri
    }
}

impl DevUser {
    /// The claims of a v2 delegated token for this user with the default scope, as JSON
    /// (for tools that describe a caller by claims, such as policy test cases).
    pub fn claims(&self) -> serde_json::Value {
        serde_json::json!({
            "ver": "2.0",
            "tid": self.tenant_id,
            "oid": self.object_id,
            "sub": self.object_id,
            "name": self.name,
            "preferred_username": self.upn,
            "scp": DEV_SCOPE,
            "roles": self.roles,
            "groups": self.groups,
            "amr": self.auth_methods,
            "azp": DEV_CLIENT_APP_ID,
        })
    }
}

/// The default tenants: Contoso ([`CONTOSO_TENANT_ID`], the default) and Fabrikam
/// ([`FABRIKAM_TENANT_ID`]).
pub(crate) fn default_tenants() -> Vec<DevTenant> {
    vec![
        DevTenant {
            id: s(CONTOSO_TENANT_ID),
            name: s("Contoso"),
        },
        DevTenant {
            id: s(FABRIKAM_TENANT_ID),
            name: s("Fabrikam"),
        },
    ]
}

/// The default users: `alice` (Contoso, role `Tools.Admin`, Finance group, MFA), `bob`
/// (Contoso, role `Tools.Read`, password only) and `carol` (Fabrikam, role `Tools.Read`,
/// MFA).
pub(crate) fn default_users() -> Vec<DevUser> {
    vec![
        DevUser {
            key: s("alice"),
            name: s("Alice Admin"),
            upn: s("alice@contoso.example"),
            object_id: s("a11ce000-0000-4000-8000-00000000a11c"),
            tenant_id: s(CONTOSO_TENANT_ID),
            roles: strings(&["Tools.Admin"]),
            groups: strings(&[FINANCE_GROUP_ID]),
            auth_methods: strings(&["pwd", "mfa"]),
        },
        DevUser {
            key: s("bob"),
            name: s("Bob Reader"),
            upn: s("bob@contoso.example"),
            object_id: s("b0b00000-0000-4000-8000-000000000b0b"),
            tenant_id: s(CONTOSO_TENANT_ID),
            roles: strings(&["Tools.Read"]),
            groups: Vec::new(),
            auth_methods: strings(&["pwd"]),
        },
        DevUser {
            key: s("carol"),
            name: s("Carol Partner"),
            upn: s("carol@fabrikam.example"),
            object_id: s("ca401000-0000-4000-8000-0000000ca401"),
            tenant_id: s(FABRIKAM_TENANT_ID),
            roles: strings(&["Tools.Read"]),
            groups: Vec::new(),
            auth_methods: strings(&["pwd", "mfa"]),
        },
    ]
}

/// The default daemon app: `reporter` (Contoso, role `Tools.Read`).
pub(crate) fn default_apps() -> Vec<DevApp> {
    vec![DevApp {
        key: s("reporter"),
        app_id: s("7e9d8c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"),
        object_id: s("5e1f2a3b-4c5d-4e6f-8a7b-9c0d1e2f3a4b"),
        tenant_id: s(CONTOSO_TENANT_ID),
        roles: strings(&["Tools.Read"]),
    }]
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// A user in more groups than Entra puts in a token (230, Finance among them): mint their
/// tokens with [`TokenMint::groups_overage`](crate::TokenMint::groups_overage) and resolve
/// membership through Graph.
pub fn overage_user() -> DevUser {
    let mut groups: Vec<String> = (1..230u32)
        .map(|i| format!("{i:08x}-0000-4000-8000-0000000{i:05x}"))
        .collect();
    groups.insert(150, FINANCE_GROUP_ID.to_owned());
    DevUser {
        key: "dave".to_owned(),
        name: "Dave Many".to_owned(),
        upn: "dave@contoso.example".to_owned(),
        object_id: "da4e0000-0000-4000-8000-0000000da4e0".to_owned(),
        tenant_id: CONTOSO_TENANT_ID.to_owned(),
        roles: vec!["Tools.Read".to_owned()],
        groups,
        auth_methods: vec!["pwd".to_owned(), "mfa".to_owned()],
    }
}

/// The dev users (`alice`, `bob`, `carol`) as callers a policy test case may name
/// (`user = "alice"`), with the claims the emulator puts in their tokens.
pub fn named_callers() -> idguard::policy::cases::NamedCallers {
    default_users()
        .iter()
        .fold(idguard::policy::cases::NamedCallers::new(), |callers, u| {
            callers.with(u.key.clone(), u.claims())
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn the_default_directory_has_unique_keys_and_known_tenants() {
        let tenants = default_tenants();
        let users = default_users();
        let keys: std::collections::BTreeSet<&str> = users.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(keys.len(), users.len());
        assert!(
            users
                .iter()
                .chain(std::iter::once(&overage_user()))
                .all(|u| tenants.iter().any(|t| t.id == u.tenant_id))
        );
        assert!(
            default_apps()
                .iter()
                .all(|a| tenants.iter().any(|t| t.id == a.tenant_id))
        );
    }

    #[test]
    fn claims_describe_a_v2_delegated_token() {
        let alice = &default_users()[0];
        let claims = alice.claims();
        assert_eq!(claims["ver"], "2.0");
        assert_eq!(claims["oid"], alice.object_id);
        assert_eq!(claims["sub"], alice.object_id);
        assert_eq!(claims["scp"], DEV_SCOPE);
        assert_eq!(claims["azp"], DEV_CLIENT_APP_ID);
        assert_eq!(claims["groups"][0], FINANCE_GROUP_ID);
    }

    #[test]
    fn the_overage_user_is_in_finance_among_230_groups() {
        let dave = overage_user();
        assert_eq!(dave.groups.len(), 230);
        assert!(dave.groups.iter().any(|g| g == FINANCE_GROUP_ID));
    }
}
