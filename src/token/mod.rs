//! Entra access-token validation: the pure core, the key store, the cache and the layer.
//!
//! [`TokenValidator::validate`] is a plain function of (token, keys, now): it checks the
//! shape, the algorithm (RS256 only), the signature, the version, the tenant, the issuer and
//! the signing key's issuer, the audience, the lifetime, and that the token grants something
//! (`scp` or `roles`). Per-request authentication around it (the header, the cache, a key
//! refresh, idguard-issued tokens, the scope/role gate, groups, the challenges) lives in
//! `authenticate`, the tower plumbing in [`layer`](self::layer), the caller's token in
//! `bearer`, the key snapshot in `jwks` and the validated-token cache in `cache`.
//!
//! Header fields that point elsewhere for keys (`jku`, `x5u`, `jwk`) are never read: keys
//! come only from the configured authority's JWKS, looked up by `kid`.

mod authenticate;
mod bearer;
pub(crate) mod cache;
pub(crate) mod config;
pub(crate) mod jwks;
pub(crate) mod layer;

pub use authenticate::TokenStats;
pub(crate) use authenticate::{Authenticator, IssuedTokens, OnBehalfOf, Session};
pub use bearer::BearerToken;
pub(crate) use bearer::bearer_token;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use crate::entra::{TenantMode, is_guid, issuer_matches, issuer_names_tenant, substitute_tenant};
use crate::error::TokenError;
use crate::principal::{Claims, Principal, TokenVersion};
use jwks::{Key, KeySet};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The pure validation core. Built once from the resolved configuration and discovery.
#[derive(Debug)]
pub(crate) struct TokenValidator {
    tenant: TenantMode,
    audiences: Vec<String>,
    /// v2 issuer, or the `{tenantid}` template for multi-tenant.
    issuer_v2: String,
    /// v1 issuer (template); `None` when v1 tokens are not accepted.
    issuer_v1: Option<String>,
    leeway: u64,
    jwt: Validation,
}

impl TokenValidator {
    pub(crate) fn new(
        tenant: TenantMode,
        audiences: Vec<String>,
        issuer_v2: String,
        issuer_v1: Option<String>,
        leeway: u64,
    ) -> Self {
        // Lifetime, audience and issuer are checked below with our own clock and Entra's
        // tenant rules; jsonwebtoken checks the signature and the algorithm allow-list.
        let mut jwt = Validation::new(Algorithm::RS256);
        jwt.validate_exp = false;
        jwt.validate_nbf = false;
        jwt.validate_aud = false;
        jwt.required_spec_claims.clear();
        Self {
            tenant,
            audiences,
            issuer_v2,
            issuer_v1,
            leeway,
            jwt,
        }
    }

    /// Validates `token` against `keys` at time `now` (seconds since the epoch).
    ///
    /// [`TokenError::UnknownKey`] means the `kid` is not in `keys`: the caller may refresh
    /// the key set once and try again.
    pub(crate) fn validate(
        &self,
        token: &str,
        keys: &KeySet,
        now: u64,
    ) -> Result<Principal, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge {
                max: MAX_TOKEN_BYTES,
            });
        }
        if !is_compact_jws(token) {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| jwt_error(&e))?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let kid = header.kid.as_deref().ok_or(TokenError::Malformed)?;
        let key = keys.get(kid).ok_or(TokenError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, key.decoding(), &self.jwt)
            .map_err(|e| jwt_error(&e))?;
        self.check_claims(data.claims, key, now)
    }

    fn check_claims(&self, claims: Claims, key: &Key, now: u64) -> Result<Principal, TokenError> {
        let (version, issuer_template) = match claims.ver.as_deref() {
            Some("2.0") => (TokenVersion::V2, self.issuer_v2.as_str()),
            Some("1.0") => match &self.issuer_v1 {
                Some(v1) => (TokenVersion::V1, v1.as_str()),
                None => return Err(TokenError::VersionNotAccepted),
            },
            Some(_) => return Err(TokenError::VersionNotAccepted),
            None => return Err(TokenError::MissingClaim("ver")),
        };

        let tid = claims
            .tid
            .as_deref()
            .ok_or(TokenError::MissingClaim("tid"))?;
        if !is_guid(tid) {
            return Err(TokenError::WrongIssuer);
        }
        if !self.tenant.allows(tid) {
            return Err(TokenError::TenantNotAllowed);
        }

        let iss = claims
            .iss
            .as_deref()
            .ok_or(TokenError::MissingClaim("iss"))?;
        if !issuer_matches(issuer_template, tid, iss) || !issuer_names_tenant(iss, tid) {
            return Err(TokenError::WrongIssuer);
        }
        if let Some(key_issuer) = key.issuer() {
            let ok = match version {
                TokenVersion::V2 => issuer_matches(key_issuer, tid, iss),
                // v1 issuers are compared in their v2 form (Microsoft.IdentityModel does too).
                TokenVersion::V1 => {
                    issuer_matches(key_issuer, tid, &substitute_tenant(&self.issuer_v2, tid))
                }
            };
            if !ok {
                return Err(TokenError::KeyIssuerMismatch);
            }
        }

        let aud = claims.aud.as_ref().ok_or(TokenError::MissingClaim("aud"))?;
        if !aud.any(|a| self.audiences.iter().any(|ok| ok == a)) {
            return Err(TokenError::WrongAudience);
        }

        let exp = claims.exp.ok_or(TokenError::MissingClaim("exp"))?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Err(TokenError::NotYetValid);
        }

        // Microsoft.Identity.Web's baseline (IDW10201): a token that grants neither a
        // delegated scope nor an app role was not provisioned for this API.
        if claims.scp.as_deref().is_none_or(str::is_empty) && claims.roles.is_empty() {
            return Err(TokenError::NoScopeOrRole);
        }

        Principal::from_checked_claims(claims, version)
    }
}

/// Three non-empty base64url segments: rejects junk before any decoding.
fn is_compact_jws(token: &str) -> bool {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    segments == 3
}

fn jwt_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::UnsupportedAlgorithm
        }
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_jws_shape() {
        assert!(is_compact_jws("a.b.c"));
        assert!(!is_compact_jws("a.b"));
        assert!(!is_compact_jws("a..c"));
        assert!(!is_compact_jws("a.b.c.d"));
        assert!(!is_compact_jws("a.b=.c"));
        assert!(!is_compact_jws("a.b+/.c"));
        assert!(!is_compact_jws(""));
    }
}
