//! [`DevEntraBuilder`]: what a [`DevEntra`] starts with (tenants, users, apps, the dev
//! API's id, redirect and identifier URIs), and starting it: the first signing key, the
//! shared state and the server task.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::oneshot;

use crate::keys::{KeyRing, SigningKey};
use crate::shared::{Counters, Shared};
use crate::sign_in::SignIn;
use crate::users::{default_apps, default_tenants, default_users};
use crate::{
    DEV_API_CLIENT_ID, DEV_MANAGED_IDENTITY_ID, DevApp, DevEntra, DevError, DevTenant, DevUser,
    server,
};

/// Configures a [`DevEntra`].
///
/// Defaults: tenants Contoso ([`CONTOSO_TENANT_ID`](crate::CONTOSO_TENANT_ID), the default)
/// and Fabrikam ([`FABRIKAM_TENANT_ID`](crate::FABRIKAM_TENANT_ID)); users `alice`
/// (Contoso, role `Tools.Admin`, Finance group, MFA), `bob` (Contoso, role `Tools.Read`,
/// password only) and `carol` (Fabrikam, role `Tools.Read`, MFA); daemon app `reporter`
/// (Contoso, role `Tools.Read`).
#[derive(Clone, Debug)]
#[must_use]
pub struct DevEntraBuilder {
    addr: SocketAddr,
    tenants: Vec<DevTenant>,
    users: Vec<DevUser>,
    apps: Vec<DevApp>,
    apis: Vec<crate::DevApi>,
    api_client_id: String,
    redirect_uris: Vec<String>,
    identifier_uris: Vec<String>,
}

impl Default for DevEntraBuilder {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tenants: default_tenants(),
            users: default_users(),
            apps: default_apps(),
            apis: Vec::new(),
            api_client_id: DEV_API_CLIENT_ID.to_owned(),
            redirect_uris: Vec::new(),
            identifier_uris: Vec::new(),
        }
    }
}

impl DevEntraBuilder {
    /// Listen on `addr` instead of `127.0.0.1:0`. Only loopback addresses make sense.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Adds a tenant.
    pub fn tenant(mut self, tenant: DevTenant) -> Self {
        self.tenants.push(tenant);
        self
    }

    /// Adds (or replaces, by key) a user.
    pub fn user(mut self, user: DevUser) -> Self {
        self.users.retain(|u| u.key != user.key);
        self.users.push(user);
        self
    }

    /// Adds (or replaces, by key) a daemon app.
    pub fn app(mut self, app: DevApp) -> Self {
        self.apps.retain(|a| a.key != app.key);
        self.apps.push(app);
        self
    }

    /// Registers (or replaces, by client id) another API as a confidential client that may
    /// do on-behalf-of with the tokens issued for it (see [`DevApi`](crate::DevApi)).
    pub fn api(mut self, api: crate::DevApi) -> Self {
        self.apis.retain(|a| a.client_id != api.client_id);
        self.apis.push(api);
        self
    }

    /// The users configured so far.
    pub fn users(&self) -> &[DevUser] {
        &self.users
    }

    /// The protected API's application id (default [`DEV_API_CLIENT_ID`]).
    pub fn api_client_id(mut self, id: impl Into<String>) -> Self {
        self.api_client_id = id.into();
        self
    }

    /// Registers a redirect URI of the dev API (see [`DevEntra::allow_redirect_uri`]).
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uris.push(uri.into());
        self
    }

    /// Adds an Application ID URI of the dev API besides `api://{client id}` (for example
    /// the MCP server's URL): scopes may be named under it, and it is a `resource` value
    /// authorize accepts for them.
    pub fn identifier_uri(mut self, uri: impl Into<String>) -> Self {
        self.identifier_uris.push(uri.into());
        self
    }

    /// Generates the first signing key, binds the port and starts serving.
    ///
    /// # Errors
    ///
    /// [`DevError`] when the port cannot be bound or key generation fails.
    pub async fn start(self) -> Result<DevEntra, DevError> {
        let first = SigningKey::generate(None)?;
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(self.into_shared(format!("http://{addr}"), first));
        let (tx, rx) = oneshot::channel();
        let app = server::router(shared.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(target: "idguard::dev", %e, "dev entra stopped");
            }
        });
        Ok(DevEntra {
            shared,
            addr,
            shutdown: Some(tx),
        })
    }

    /// The state of an emulator serving at `base_url`, signing with `first`.
    pub(crate) fn into_shared(self, base_url: String, first: SigningKey) -> Shared {
        let ring = KeyRing {
            active: first.kid.clone(),
            published: vec![first],
            unpublished: Vec::new(),
        };
        Shared {
            base_url,
            tenants: self.tenants,
            users: self.users,
            apps: self.apps,
            apis: self.apis,
            api_client_id: self.api_client_id,
            identifier_uris: self.identifier_uris,
            keys: RwLock::new(ring),
            jwks_available: AtomicBool::new(true),
            counters: Counters::default(),
            client_secret: format!("dev~{}", uuid::Uuid::new_v4().simple()),
            certificates: RwLock::new(Vec::new()),
            federated_subject: DEV_MANAGED_IDENTITY_ID.to_owned(),
            used_jti: Mutex::new(HashSet::new()),
            obo_failures: Mutex::new(HashMap::new()),
            graph_failures: Mutex::new(HashMap::new()),
            downstream_lifetime: AtomicU64::new(3600),
            refresh_in: AtomicU64::new(0),
            sign_in: SignIn::new(self.redirect_uris),
        }
    }
}

/// The state of an emulator with the default directory at `http://127.0.0.1:1` (never
/// served), for unit tests of the endpoints' pure parts.
#[cfg(test)]
pub(crate) fn test_shared(builder: DevEntraBuilder) -> Shared {
    let first = SigningKey::generate(None).unwrap();
    builder.into_shared("http://127.0.0.1:1".to_owned(), first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_apps_replace_by_key() {
        let mut bob = default_users()
            .into_iter()
            .find(|u| u.key == "bob")
            .unwrap();
        bob.roles = vec!["Tools.Admin".to_owned()];
        let builder = DevEntra::builder().user(bob).app(default_apps().remove(0));
        assert_eq!(builder.users().len(), 3);
        assert!(
            builder
                .users()
                .iter()
                .any(|u| u.key == "bob" && u.roles == ["Tools.Admin"])
        );
        assert_eq!(builder.apps.len(), 1);
    }

    #[test]
    fn the_shared_state_starts_with_the_first_key_active_and_published() {
        let shared = test_shared(DevEntra::builder().redirect_uri("http://127.0.0.1:9/cb"));
        let ring = shared
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(ring.published.len(), 1);
        assert!(ring.find(&ring.active).is_some());
        assert!(shared.client_secret.starts_with("dev~"));
        assert!(shared.knows_tenant(crate::CONTOSO_TENANT_ID));
        assert_eq!(shared.issuer_v2("t"), "http://127.0.0.1:1/t/v2.0");
    }
}
