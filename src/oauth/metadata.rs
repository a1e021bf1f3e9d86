//! RFC 9728 protected-resource metadata.
//!
//! Served at the root well-known location and at the path-suffixed one
//! (`/.well-known/oauth-protected-resource/mcp` for `https://host/mcp`), so clients find it
//! whichever way they probe (MCP 2025-11-25 asks servers for one, clients try both).

use axum::Router;
use axum::routing::get;
use serde::Serialize;

use crate::guard::IdGuard;

/// The metadata document (RFC 9728 §2).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProtectedResourceMetadata {
    /// The canonical URL of the resource; clients compare it with the URL they used.
    pub resource: String,
    /// Where to get tokens: the Entra issuer (or the OAuth proxy).
    pub authorization_servers: Vec<String>,
    /// Fully-qualified scopes a client should request (never `offline_access`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    /// Tokens go in the `Authorization` header only.
    pub bearer_methods_supported: Vec<String>,
}

impl IdGuard {
    /// The protected-resource metadata this guard publishes.
    pub fn protected_resource_metadata(&self) -> ProtectedResourceMetadata {
        let c = self.config();
        ProtectedResourceMetadata {
            resource: c.resource().to_owned(),
            authorization_servers: vec![self.authorization_server().to_owned()],
            scopes_supported: match self.oauth_proxy() {
                Some(p) if c.required_scopes.is_empty() => p.api_scopes().to_vec(),
                _ => c
                    .required_scopes
                    .iter()
                    .map(|s| format!("{}/{s}", c.identifier_uri()))
                    .collect(),
            },
            bearer_methods_supported: vec!["header".to_owned()],
        }
    }

    /// The public OAuth routes: the RFC 9728 metadata and, with `[oauth]`, the OAuth proxy
    /// (`/.well-known/oauth-authorization-server`, `/register`, `/authorize`, `/consent`,
    /// `/callback`, `/token`). Merge them into your router **outside** the token layer:
    /// clients use them before they have a token.
    pub fn oauth_router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let doc = axum::Json(self.protected_resource_metadata());
        let handler = move || {
            let doc = doc.clone();
            async move { doc }
        };
        let root = "/.well-known/oauth-protected-resource";
        let url = self.resource_metadata_url();
        let suffixed = url
            .find(root)
            .and_then(|at| url.get(at..))
            .unwrap_or(root)
            .to_owned();
        let mut router = Router::new().route(root, get(handler.clone()));
        if suffixed != root {
            router = router.route(&suffixed, get(handler));
        }
        if self.oauth_proxy().is_some() {
            router = router.merge(super::proxy::routes(self));
        }
        router
    }
}
