//! The caller's bearer token: read from the `Authorization` header, and kept (with its
//! digest) as the assertion of on-behalf-of calls.

use std::fmt;
use std::sync::{Arc, OnceLock};

use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::MAX_TOKEN_BYTES;
use super::cache::{TokenDigest, digest_token};
use crate::error::TokenError;

/// The caller's validated Entra token: the assertion of an on-behalf-of exchange, the
/// subject token of the gateway's token exchange.
///
/// [`ValidateTokenLayer`](crate::ValidateTokenLayer) puts it in the request extensions when
/// on-behalf-of or the OAuth proxy is configured (behind an idguard-issued token, the Entra
/// token of its session, never idguard's own). It cannot be printed (`Debug` shows `BearerToken(***)`) and
/// only idguard reads its text. Cloning is cheap.
#[derive(Clone)]
pub struct BearerToken(Arc<Inner>);

struct Inner {
    token: Box<str>,
    digest: OnceLock<TokenDigest>,
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
    pub(crate) fn with_digest(token: &str, digest: Option<TokenDigest>) -> Self {
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
    pub(crate) fn digest(&self) -> &TokenDigest {
        self.0.digest.get_or_init(|| digest_token(&self.0.token))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

/// The bearer token of the `Authorization` header. Only that header is read: a token in the
/// query string or body counts as missing.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(AUTHORIZATION) {
            TokenError::Malformed
        } else {
            TokenError::Missing
        });
    };
    if value.len() > MAX_TOKEN_BYTES + 7 {
        return Err(TokenError::TooLarge {
            max: MAX_TOKEN_BYTES,
        });
    }
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bearer_only_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), Err(TokenError::Missing));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), Err(TokenError::Missing));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer a.b.c"));
        assert_eq!(bearer_token(&h), Ok("a.b.c"));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer d.e.f"));
        assert_eq!(bearer_token(&h), Err(TokenError::Malformed));
    }

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
