//! What the upstream receives instead of the caller's token: [`UpstreamCredential`].
//!
//! - `none` (the default): no `Authorization` header;
//! - `obo`: the caller's Entra token exchanged on-behalf-of for the upstream's own
//!   audience (the guard's [`OboClient`] and its cache); app-only callers are refused;
//! - `identity_assertion`: a short-lived ES256 JWT signed by idguard
//!   ([`IdentityAssertion`]), cached per caller until shortly before it expires;
//! - `token_exchange`: an RFC 8693 token exchange at the upstream's own authorization
//!   server ([`TokenExchange`]), cached per caller;
//! - `static`: one fixed header, for upstreams that only need to know the request came
//!   through idguard.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{self, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::TokenExchange;
use crate::error::{Rejection, RejectionKind};
use crate::obo::{BearerToken, OboClient};
use crate::principal::Principal;

/// The lifetime of an identity assertion (at most 5 minutes).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// A cached identity assertion stops being served this long before it expires.
pub const ASSERTION_SKEW: Duration = Duration::from_secs(60);
/// Where idguard serves the public key of its identity assertions (a JWKS).
pub const JWKS_PATH: &str = "/.well-known/idguard-jwks.json";

/// What the upstream receives to know who is calling; never the caller's own token.
#[derive(Clone, Default)]
pub struct UpstreamCredential(Kind);

#[derive(Clone, Default)]
enum Kind {
    #[default]
    None,
    Obo(Arc<[String]>),
    Assertion(IdentityAssertion),
    Exchange(Arc<TokenExchange>),
    Static(HeaderName, HeaderValue),
}

impl fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::None => f.write_str("UpstreamCredential::None"),
            Kind::Obo(scopes) => f
                .debug_tuple("UpstreamCredential::Obo")
                .field(scopes)
                .finish(),
            Kind::Assertion(a) => f
                .debug_tuple("UpstreamCredential::IdentityAssertion")
                .field(a)
                .finish(),
            Kind::Exchange(x) => f
                .debug_tuple("UpstreamCredential::TokenExchange")
                .field(x)
                .finish(),
            Kind::Static(name, _) => f
                .debug_struct("UpstreamCredential::Static")
                .field("header", name)
                .field("value", &"***")
                .finish(),
        }
    }
}

impl UpstreamCredential {
    /// Nothing: the upstream gets no `Authorization` header (the default).
    pub fn none() -> Self {
        Self(Kind::None)
    }

    /// `Authorization: Bearer <token>` for the caller, exchanged on-behalf-of for `scopes`
    /// (all of the upstream's resource, e.g. `api://upstream-app/.default`) with the
    /// guard's `[obo]` client.
    pub fn obo<I: IntoIterator<Item = S>, S: Into<String>>(scopes: I) -> Self {
        let mut scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        scopes.sort();
        scopes.dedup();
        Self(Kind::Obo(scopes.into()))
    }

    /// `Authorization: Bearer <assertion>`: a JWT signed by idguard naming the caller.
    pub fn identity_assertion(assertion: IdentityAssertion) -> Self {
        Self(Kind::Assertion(assertion))
    }

    /// `Authorization: Bearer <token>`: the caller's token exchanged (RFC 8693) at the
    /// upstream's authorization server.
    pub fn token_exchange(exchange: TokenExchange) -> Self {
        Self(Kind::Exchange(Arc::new(exchange)))
    }

    /// One fixed header. The value is marked sensitive (hidden from `Debug`).
    pub fn static_header(name: HeaderName, mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        Self(Kind::Static(name, value))
    }

    /// The identity assertion signer, when this is `identity_assertion` or a
    /// `token_exchange` with an actor token (its JWKS is to be served at [`JWKS_PATH`]).
    pub fn assertion(&self) -> Option<&IdentityAssertion> {
        match &self.0 {
            Kind::Assertion(a) => Some(a),
            Kind::Exchange(x) => x.actor(),
            _ => None,
        }
    }

    /// The header for the request with `headers` whose extensions are `ext` (set by
    /// `ValidateTokenLayer`), or the answer that refuses it; `http` makes token exchanges.
    pub(crate) async fn header(
        &self,
        ext: &http::Extensions,
        headers: &http::HeaderMap,
        http: &reqwest::Client,
    ) -> Result<Option<(HeaderName, HeaderValue)>, Rejection> {
        match &self.0 {
            Kind::None => Ok(None),
            Kind::Exchange(x) => {
                let principal = ext.get::<Principal>().ok_or_else(unwired)?;
                // The caller's Entra token as the layer validated it. The layer keeps it
                // whenever the header could be something else (an idguard-issued token of
                // the OAuth proxy, whose Entra token is the session's); without the proxy
                // the header is the Entra token itself.
                let subject = match ext.get::<BearerToken>() {
                    Some(token) => token.expose(),
                    None => crate::token::bearer_token(headers).map_err(|_| unwired())?,
                };
                let value = x.header_for(http, principal, subject).await?;
                Ok(Some((header::AUTHORIZATION, value)))
            }
            Kind::Static(name, value) => Ok(Some((name.clone(), value.clone()))),
            Kind::Assertion(a) => {
                let principal = ext.get::<Principal>().ok_or_else(unwired)?;
                let value = a.header_for(principal)?;
                Ok(Some((header::AUTHORIZATION, value)))
            }
            Kind::Obo(scopes) => {
                let (Some(client), Some(principal), Some(token)) = (
                    ext.get::<OboClient>(),
                    ext.get::<Principal>(),
                    ext.get::<BearerToken>(),
                ) else {
                    return Err(unwired());
                };
                if principal.is_app_only() {
                    tracing::debug!(target: "idguard::rejection", tenant = principal.tenant_id(), "upstream credential obo: an app-only caller (on-behalf-of needs a user)");
                    return Err(Rejection::new(RejectionKind::Forbidden, None).with_description(
                        "this upstream is reached on behalf of a signed-in user: an app-only token cannot be exchanged on-behalf-of",
                    ));
                }
                let token = client
                    .token_for_scopes(principal, token, scopes.iter())
                    .await
                    .map_err(|e| client.rejection(&e, principal))?;
                let value = token.authorization_header().ok_or_else(|| {
                    tracing::error!(target: "idguard::gateway", "the on-behalf-of token is not a header value");
                    Rejection::new(RejectionKind::Internal, None)
                })?;
                Ok(Some((header::AUTHORIZATION, value)))
            }
        }
    }
}

fn unwired() -> Rejection {
    tracing::error!(target: "idguard::rejection", "upstream credential: is the gateway behind ValidateTokenLayer, with [obo] configured for `obo`?");
    Rejection::new(RejectionKind::Internal, None)
}

/// Signs identity assertions: ES256 JWTs naming the caller, for one upstream audience.
///
/// Claims: `iss` (idguard's resource URL), `aud` (the upstream), `sub` (`tid/oid`),
/// `iat`, `nbf`, `exp` (≤ 5 minutes), `jti`, and the caller's `tid`, `oid`, `name`,
/// `preferred_username`, `roles`, `groups`, `scp` and `azp` (client app). Cached per
/// caller until [`ASSERTION_SKEW`] before expiry. `Debug` shows the key id, never the key.
#[derive(Clone)]
pub struct IdentityAssertion(Arc<Signer>);

struct Signer {
    key: jsonwebtoken::EncodingKey,
    header: jsonwebtoken::Header,
    kid: String,
    jwk: Value,
    issuer: String,
    audience: String,
    cache: moka::sync::Cache<Arc<str>, (HeaderValue, u64)>,
}

impl fmt::Debug for IdentityAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityAssertion")
            .field("kid", &self.0.kid)
            .field("issuer", &self.0.issuer)
            .field("audience", &self.0.audience)
            .finish_non_exhaustive()
    }
}

/// Why an identity assertion signer could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssertionKeyError {
    /// No randomness or the key could not be generated.
    #[error("cannot generate a P-256 key")]
    Generate,
    /// The PEM is not a PKCS#8 P-256 private key (`-----BEGIN PRIVATE KEY-----`).
    #[error(
        "not a PKCS#8 P-256 private key (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`)"
    )]
    InvalidKey,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl IdentityAssertion {
    /// A signer with a P-256 key generated now (its JWKS changes at each start).
    ///
    /// # Errors
    ///
    /// [`AssertionKeyError::Generate`].
    pub fn generate(
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, AssertionKeyError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let doc = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|_| AssertionKeyError::Generate)?;
        Self::from_pkcs8(doc.as_ref(), issuer.into(), audience.into())
            .map_err(|_| AssertionKeyError::Generate)
    }

    /// A signer with the P-256 private key in `pem` (PKCS#8).
    ///
    /// # Errors
    ///
    /// [`AssertionKeyError::InvalidKey`].
    pub fn from_pem(
        pem: &str,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, AssertionKeyError> {
        let body: String = pem
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
            .skip(1)
            .take_while(|l| *l != "-----END PRIVATE KEY-----")
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| AssertionKeyError::InvalidKey)?;
        Self::from_pkcs8(&der, issuer.into(), audience.into())
    }

    fn from_pkcs8(der: &[u8], issuer: String, audience: String) -> Result<Self, AssertionKeyError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| AssertionKeyError::InvalidKey)?;
        let point = pair.public_key().as_ref();
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
            return Err(AssertionKeyError::InvalidKey);
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        // RFC 7638 thumbprint as the key id.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ));
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "use": "sig", "alg": "ES256", "kid": kid});
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.clone());
        let skew = ASSERTION_SKEW;
        let cache = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(ASSERTION_LIFETIME.saturating_sub(skew))
            .build();
        Ok(Self(Arc::new(Signer {
            key: jsonwebtoken::EncodingKey::from_ec_der(der),
            header,
            kid,
            jwk,
            issuer,
            audience,
            cache,
        })))
    }

    /// The public key as a JWKS (`{"keys": [...]}`), to serve at [`JWKS_PATH`].
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.0.jwk]})
    }

    /// The audience (the upstream).
    pub fn audience(&self) -> &str {
        &self.0.audience
    }

    /// `Bearer <assertion>` for `principal`, from the cache when fresh.
    ///
    /// # Errors
    ///
    /// A `500` [`Rejection`] when signing fails (logged).
    pub fn header_for(&self, principal: &Principal) -> Result<HeaderValue, Rejection> {
        let s = &self.0;
        self.signed(cache_key(principal).into(), |now, exp| {
            json!({
                "iss": s.issuer,
                "aud": s.audience,
                "sub": format!("{}/{}", principal.tenant_id(), principal.object_id()),
                "iat": now,
                "nbf": now,
                "exp": exp,
                "jti": uuid::Uuid::new_v4().to_string(),
                "tid": principal.tenant_id(),
                "oid": principal.object_id(),
                "name": principal.name(),
                "preferred_username": principal.upn(),
                "roles": principal.roles(),
                "groups": principal.groups(),
                "scp": principal.scopes().join(" "),
                "azp": principal.app_id(),
            })
        })
        .ok_or_else(|| Rejection::new(RejectionKind::Internal, None))
    }

    /// A JWT naming idguard itself (`iss` = `sub` = the issuer, `aud` = the audience): the
    /// actor token of a token exchange. Cached like the callers' assertions.
    pub(crate) fn self_assertion(&self) -> Option<String> {
        let s = &self.0;
        let value = self.signed(Arc::from(""), |now, exp| {
            json!({
                "iss": s.issuer,
                "aud": s.audience,
                "sub": s.issuer,
                "iat": now,
                "nbf": now,
                "exp": exp,
                "jti": uuid::Uuid::new_v4().to_string(),
            })
        })?;
        let jwt = value.to_str().ok()?.strip_prefix("Bearer ")?;
        Some(jwt.to_owned())
    }

    /// `Bearer <jwt>` for the cache entry `key`, signed anew with `claims(now, exp)` when
    /// missing or stale. `None` (logged) when signing fails.
    fn signed(&self, key: Arc<str>, claims: impl FnOnce(u64, u64) -> Value) -> Option<HeaderValue> {
        let s = &self.0;
        let now = unix_now();
        if let Some((value, refresh_at)) = s.cache.get(&key)
            && now < refresh_at
        {
            return Some(value);
        }
        let exp = now + ASSERTION_LIFETIME.as_secs();
        let jwt = jsonwebtoken::encode(&s.header, &claims(now, exp), &s.key)
            .inspect_err(|e| tracing::error!(target: "idguard::gateway", error = %e, "cannot sign the identity assertion"))
            .ok()?;
        let mut value = HeaderValue::try_from(format!("Bearer {jwt}")).ok()?;
        value.set_sensitive(true);
        s.cache.insert(
            key,
            (value.clone(), exp.saturating_sub(ASSERTION_SKEW.as_secs())),
        );
        Some(value)
    }
}

/// The cache key of a caller: everything the assertion says about them, so a token with
/// other roles, groups or scopes gets its own assertion.
fn cache_key(p: &Principal) -> String {
    let mut k = String::with_capacity(128);
    for part in [
        p.tenant_id(),
        p.object_id(),
        p.app_id().unwrap_or_default(),
        p.name().unwrap_or_default(),
        p.upn().unwrap_or_default(),
    ] {
        k.push_str(part);
        k.push('\u{1f}');
    }
    for list in [p.roles(), p.groups(), p.scopes()] {
        for v in list {
            k.push_str(v);
            k.push('\u{1e}');
        }
        k.push('\u{1f}');
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_are_cached_and_debug_hides_secrets() {
        let a = IdentityAssertion::generate("https://idg/mcp", "api://up").unwrap();
        let p = Principal::from_unvalidated_claims(
            &json!({"tid": "t", "oid": "o", "sub": "s", "scp": "x", "roles": ["R"]}),
        )
        .unwrap();
        let one = a.header_for(&p).unwrap();
        assert_eq!(one, a.header_for(&p).unwrap());
        assert!(a.jwks()["keys"][0]["x"].is_string());
        let s = UpstreamCredential::static_header(
            HeaderName::from_static("x-idguard"),
            HeaderValue::from_static("s3cret"),
        );
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(!format!("{a:?}").contains("Bearer"));
    }
}
