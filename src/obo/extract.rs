//! The caller's bearer token as an extension, and the [`Obo`] extractor.

use std::fmt;
use std::sync::{Arc, OnceLock};

use axum::extract::FromRequestParts;
use http::request::Parts;

use super::OboError;
use super::client::{OboClient, OboToken};
use crate::error::{Rejection, RejectionKind};
use crate::principal::Principal;
use crate::token::cache::digest_token;

/// The caller's validated bearer token: the assertion of an on-behalf-of exchange.
///
/// [`ValidateTokenLayer`](crate::ValidateTokenLayer) puts it in the request extensions when
/// on-behalf-of is configured. It cannot be printed (`Debug` shows `BearerToken(***)`) and
/// only idguard reads its text. Cloning is cheap.
#[derive(Clone)]
pub struct BearerToken(Arc<Inner>);

struct Inner {
    token: Box<str>,
    digest: OnceLock<[u8; 32]>,
}

impl BearerToken {
    /// Wraps a token, e.g. one validated with [`IdGuard::validate`](crate::IdGuard::validate)
    /// outside the layer.
    pub fn new(token: impl Into<String>) -> Self {
        Self(Arc::new(Inner {
            token: token.into().into_boxed_str(),
            digest: OnceLock::new(),
        }))
    }

    /// With its SHA-256 when the caller already computed it (the validated-token cache).
    pub(crate) fn with_digest(token: &str, digest: Option<[u8; 32]>) -> Self {
        let cell = OnceLock::new();
        if let Some(d) = digest {
            let _ = cell.set(d);
        }
        Self(Arc::new(Inner {
            token: token.into(),
            digest: cell,
        }))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0.token
    }

    /// SHA-256 of the token, computed once.
    pub(crate) fn digest(&self) -> &[u8; 32] {
        self.0.digest.get_or_init(|| digest_token(&self.0.token))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_never_prints() {
        let t = BearerToken::new("eyJhbGciOi.secret.sig");
        assert_eq!(format!("{t:?}"), "BearerToken(***)");
        assert_eq!(t.digest(), &digest_token("eyJhbGciOi.secret.sig"));
        let pre = BearerToken::with_digest("a.b.c", Some(digest_token("a.b.c")));
        assert_eq!(pre.digest(), &digest_token("a.b.c"));
        assert_eq!(
            BearerToken::with_digest("a.b.c", None).digest(),
            pre.digest()
        );
    }
}
