//! The request extensions of on-behalf-of: what authentication puts there ([`OnBehalfOf`]
//! for [`OboClient`]) and the [`Obo`] extractor that takes the caller, their bearer token
//! and the client out.

use axum::extract::FromRequestParts;
use futures_util::future::BoxFuture;
use http::request::Parts;

use super::OboError;
use super::client::{OboClient, OboToken};
use crate::error::{Rejection, RejectionKind, TokenError};
use crate::principal::Principal;
use crate::token::{BearerToken, OnBehalfOf};

/// What authentication asks of on-behalf-of: groups overages resolved through Graph, and
/// the client in the extensions of every accepted request (for [`Obo`]).
impl OnBehalfOf for OboClient {
    fn resolves_overage(&self) -> bool {
        OboClient::resolves_overage(self)
    }

    fn resolve_groups<'a>(
        &'a self,
        principal: &'a Principal,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<Principal, TokenError>> {
        Box::pin(async move {
            self.resolve_overage(principal, token)
                .await
                .map_err(TokenError::GroupsUnresolved)
        })
    }

    fn rejection(&self, error: &TokenError, principal: &Principal) -> Option<Rejection> {
        match error {
            TokenError::GroupsUnresolved(e) => Some(OboClient::rejection(self, e, principal)),
            _ => None,
        }
    }

    fn insert_into(&self, extensions: &mut http::Extensions) {
        extensions.insert(self.clone());
    }
}

/// On-behalf-of for the current request: the caller, their token and the guard's
/// [`OboClient`].
///
/// An axum extractor (and [`Obo::from_parts`] for rmcp tools, which get the request
/// [`Parts`]). Downstream token in one line:
///
/// ```rust,ignore
/// let token = obo.token_for("graph").await?; // Result<OboToken, Rejection>
/// ```
///
/// Extraction fails with a `500` when the route is not behind
/// [`ValidateTokenLayer`](crate::ValidateTokenLayer) or the guard has no `[obo]`
/// configuration: a wiring bug, not the caller's fault.
#[derive(Clone, Debug)]
pub struct Obo {
    client: OboClient,
    principal: Principal,
    token: BearerToken,
}

impl Obo {
    /// From request parts (what rmcp tools receive as `Extension<Parts>`).
    ///
    /// # Errors
    ///
    /// A `500` [`Rejection`] when the layer or the `[obo]` configuration is missing.
    pub fn from_parts(parts: &Parts) -> Result<Self, Rejection> {
        let e = &parts.extensions;
        match (
            e.get::<OboClient>(),
            e.get::<Principal>(),
            e.get::<BearerToken>(),
        ) {
            (Some(client), Some(principal), Some(token)) => Ok(Self {
                client: client.clone(),
                principal: principal.clone(),
                token: token.clone(),
            }),
            _ => {
                tracing::error!(target: "idguard::rejection", "{}: is the route behind ValidateTokenLayer, with [obo] configured?", OboError::NotConfigured);
                Err(Rejection::new(RejectionKind::Internal, None))
            }
        }
    }

    /// A token for the downstream API named `api`, for the caller.
    ///
    /// # Errors
    ///
    /// The [`Rejection`] that answers the failure (consent URL, claims challenge, `503` +
    /// `Retry-After`, …).
    pub async fn token_for(&self, api: &str) -> Result<OboToken, Rejection> {
        self.client
            .token_for(&self.principal, &self.token, api)
            .await
            .map_err(|e| self.client.rejection(&e, &self.principal))
    }

    /// Like [`token_for`](Self::token_for), keeping the [`OboError`] (for code that
    /// answers failures itself, e.g. as an MCP tool error).
    ///
    /// # Errors
    ///
    /// [`OboError`].
    pub async fn try_token_for(&self, api: &str) -> Result<OboToken, OboError> {
        self.client
            .token_for(&self.principal, &self.token, api)
            .await
    }

    /// The caller's Microsoft Graph profile (`/v1.0/me`), cached per tenant and user.
    ///
    /// # Errors
    ///
    /// [`OboError`].
    pub async fn graph_me(&self) -> Result<serde_json::Value, OboError> {
        self.client.graph_me(&self.principal, &self.token).await
    }

    /// The caller.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The client.
    pub fn client(&self) -> &OboClient {
        &self.client
    }

    /// The HTTP answer for `err`, for this caller.
    pub fn rejection(&self, err: &OboError) -> Rejection {
        self.client.rejection(err, &self.principal)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Obo {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_parts(parts)
    }
}
