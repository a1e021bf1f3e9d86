//! The tokens the proxy issues to its clients.
//!
//! - **Access tokens**: RFC 9068 JWTs (`typ: at+jwt`), HS256 with a secret derived from
//!   the proxy key for this purpose alone, signed and verified with `jsonwebtoken`. One
//!   names its session (`sid`); the Entra tokens stay in the session record.
//! - **Refresh tokens**: `{sid}.{generation}.{nonce}.{key id}.{tag}`, a MAC by the proxy
//!   key: only the proxy can make one, so an old generation coming back is proof of reuse.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::super::keys::{ProxyKeys, Purpose, random_token};
use super::super::store::RecordKind;
use super::sealed::Session;
use super::{Proxy, client_label, unix_now};

/// The `typ` of idguard access tokens (RFC 9068 §2.1).
const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// The fixed start of every idguard access token header (before the key id), as
/// `jsonwebtoken` serializes [`Header`]; [`AccessTokens::new`] checks it.
const TOKEN_HEADER_START: &str = r#"{"typ":"at+jwt","alg":"HS256","kid":""#;

/// The claims of an idguard access token (RFC 9068).
#[derive(Serialize, Deserialize)]
pub(super) struct AccessClaims {
    pub(super) iss: String,
    pub(super) aud: String,
    pub(super) sub: String,
    pub(super) client_id: String,
    pub(super) scope: String,
    pub(super) iat: u64,
    pub(super) exp: u64,
    pub(super) jti: String,
    pub(super) sid: String,
}

/// One proxy key's access-token material.
struct AccessKey {
    header: Header,
    /// base64url of the header: the first segment of every token this key signs. It
    /// names the algorithm, the type and the key (`kid`) at once.
    segment: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// Makes and checks idguard access tokens for one issuer and audience.
pub(super) struct AccessTokens {
    /// The current key first; every key verifies (rotation).
    keys: Vec<AccessKey>,
    issuer: String,
    audience: String,
    /// base64url of [`TOKEN_HEADER_START`], cut to whole 3-byte groups.
    prefix: String,
}

impl AccessTokens {
    /// The material for `keys`; `None` if a key cannot be derived or `jsonwebtoken` no
    /// longer writes the header [`is_own`](Self::is_own) recognises.
    pub(super) fn new(keys: &ProxyKeys, issuer: &str, audience: &str) -> Option<Self> {
        let keys = keys
            .secrets(Purpose::AccessToken)?
            .into_iter()
            .map(|(kid, secret)| {
                let mut header = Header::new(Algorithm::HS256);
                header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
                header.kid = Some(kid.to_owned());
                let json = serde_json::to_string(&header).ok()?;
                json.starts_with(TOKEN_HEADER_START).then_some(())?;
                Some(AccessKey {
                    segment: URL_SAFE_NO_PAD.encode(json),
                    header,
                    encoding: EncodingKey::from_secret(&secret),
                    decoding: DecodingKey::from_secret(&secret),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let whole = TOKEN_HEADER_START.len() / 3 * 3;
        let prefix = URL_SAFE_NO_PAD.encode(TOKEN_HEADER_START.get(..whole)?);
        Some(Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            prefix,
        })
    }

    /// Whether `token` has the shape of an idguard access token (cheap: a prefix test).
    pub(super) fn is_own(&self, token: &str) -> bool {
        token.starts_with(&self.prefix)
    }

    /// `claims` signed by the current key.
    pub(super) fn mint(&self, claims: &AccessClaims) -> Option<String> {
        let key = self.keys.first()?;
        jsonwebtoken::encode(&key.header, claims, &key.encoding).ok()
    }

    /// The claims of a valid token: signed by one of the keys, for exactly this issuer
    /// and audience, not expired, not issued in the future (each with `leeway` seconds).
    ///
    /// This runs on every request that carries a proxy token, so it does not call
    /// `jsonwebtoken::decode`, which parses the header twice and deserializes the claims
    /// twice: 4.5 µs per token against 2.2 µs this way (release build, a 400-character
    /// client id); `cargo bench --bench oauth` `proxy_token_warm` went from 6.7–7.0 µs to
    /// 8.9–12.8 µs with it, and stays at 6.7–7.0 µs (as before jsonwebtoken) without.
    /// The header is compared whole with the one the key writes (so `alg`, `typ` and
    /// `kid` are exact), jsonwebtoken checks the HS256 signature, and the claims are
    /// checked here as its `Validation` would (`tests::verify_agrees_with_decode`), except
    /// that the token ends strictly at `exp + leeway` and `iat` is checked too.
    pub(super) fn verify(&self, token: &str, leeway: u64) -> Option<AccessClaims> {
        let (input, signature) = token.rsplit_once('.')?;
        let (segment, payload) = input.split_once('.')?;
        let key = self.keys.iter().find(|k| k.segment == segment)?;
        let signed = jsonwebtoken::crypto::verify(
            signature,
            input.as_bytes(),
            &key.decoding,
            Algorithm::HS256,
        );
        if !matches!(signed, Ok(true)) {
            return None;
        }
        let claims: AccessClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let now = unix_now();
        (claims.iss == self.issuer
            && claims.aud == self.audience
            && claims.exp.saturating_add(leeway) > now
            && claims.iat <= now.saturating_add(leeway))
        .then_some(claims)
    }
}

/// `{sid}.{generation}.{nonce}.{key id}.{tag}`: names its session and generation, and
/// only the proxy can make one (so an old generation is proof of reuse).
fn refresh_token(keys: &ProxyKeys, sid: &str, generation: u64) -> Option<String> {
    let body = format!("{sid}.{generation}.{}", random_token(16)?);
    let (kid, tag) = keys.sign(Purpose::RefreshToken, body.as_bytes())?;
    Some(format!("{body}.{kid}.{tag}"))
}

/// The session id and generation of a refresh token the proxy issued.
fn parse_refresh_token<'t>(keys: &ProxyKeys, token: &'t str) -> Option<(&'t str, u64)> {
    let mut parts = token.rsplitn(3, '.');
    let (tag, kid, body) = (parts.next()?, parts.next()?, parts.next()?);
    if !keys.verify(Purpose::RefreshToken, kid, body.as_bytes(), tag) {
        return None;
    }
    let mut fields = body.splitn(3, '.');
    let sid = fields.next()?;
    let generation = fields.next()?.parse().ok()?;
    Some((sid, generation))
}

/// What a replica keeps of a session it read (for `store.session_cache_ttl` at most).
pub(super) struct CachedSession {
    client_id: String,
    access_token: String,
}

/// The store could not say whether a session exists: `503`, never `401` nor a pass.
#[derive(Debug)]
pub(crate) struct StoreDown;

/// What an idguard access token stands for.
pub(crate) struct ProxySession {
    /// The Entra access token: the caller's identity and on-behalf-of assertion.
    pub(crate) entra_token: String,
    /// The API scopes (short names) the client signed in for.
    pub(crate) scopes: Vec<String>,
    /// The client, as policies and logs name it (see [`client_label`]).
    pub(crate) client: String,
}

impl Proxy {
    /// Whether `token` has the shape of an idguard access token (cheap: a prefix test).
    pub(crate) fn is_own_token(&self, token: &str) -> bool {
        self.access_tokens.is_own(token)
    }

    /// An access token for `session` and its lifetime in seconds: the configured one,
    /// cut to what remains of the session's Entra token.
    pub(super) fn issue_access_token(&self, session: &Session, sid: &str) -> Option<(String, u64)> {
        let now = unix_now();
        let exp = now
            .saturating_add(self.settings.access_token_lifetime.as_secs())
            .min(session.expires_at);
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            aud: self.resource.clone(),
            sub: session.oid.clone(),
            client_id: session.client_id.clone(),
            scope: session.scopes.join(" "),
            iat: now,
            exp,
            jti: random_token(16)?,
            sid: sid.to_owned(),
        };
        let token = self.access_tokens.mint(&claims)?;
        Some((token, exp.saturating_sub(now)))
    }

    /// The claims of a valid idguard access token.
    pub(super) fn verify_access_token(&self, token: &str, leeway: u64) -> Option<AccessClaims> {
        self.access_tokens.verify(token, leeway)
    }

    /// The Entra access token behind a valid idguard access token, with what the caller
    /// is through this client; `Err` when the store cannot answer (never a guess).
    pub(crate) async fn entra_token_for(
        &self,
        token: &str,
        leeway: u64,
    ) -> Result<Option<ProxySession>, StoreDown> {
        let Some(claims) = self.verify_access_token(token, leeway) else {
            return Ok(None);
        };
        let Some(session) = self.session_of(&claims.sid).await? else {
            return Ok(None);
        };
        if session.client_id != claims.client_id {
            return Ok(None);
        }
        let scopes = claims
            .scope
            .split(' ')
            .map(|s| s.rsplit_once('/').map_or(s, |(_, short)| short).to_owned())
            .collect();
        Ok(Some(ProxySession {
            entra_token: session.access_token.clone(),
            scopes,
            client: client_label(&claims.client_id),
        }))
    }

    /// The session `sid`: from the local cache (a shared store, `store.session_cache_ttl`),
    /// or read from the store.
    async fn session_of(&self, sid: &str) -> Result<Option<Arc<CachedSession>>, StoreDown> {
        if let Some(hit) = self.sessions.as_ref().and_then(|c| c.get(sid)) {
            return Ok(Some(hit));
        }
        let found = self
            .get_sealed::<Session>(RecordKind::Session, sid)
            .await
            .map_err(|_| StoreDown)?;
        let Some((session, _)) = found else {
            return Ok(None);
        };
        let cached = Arc::new(CachedSession {
            client_id: session.client_id,
            access_token: session.access_token,
        });
        if let Some(cache) = &self.sessions {
            cache.insert(sid.to_owned(), Arc::clone(&cached));
        }
        Ok(Some(cached))
    }

    /// Drops `sid` from the local session cache (its session changed or ended here).
    pub(super) fn forget_session(&self, sid: &str) {
        if let Some(cache) = &self.sessions {
            cache.invalidate(sid);
        }
    }

    /// A refresh token for generation `generation` of session `sid`.
    pub(super) fn refresh_token(&self, sid: &str, generation: u64) -> Option<String> {
        refresh_token(&self.keys, sid, generation)
    }

    /// The session id and generation of a refresh token the proxy issued.
    pub(super) fn parse_refresh_token<'t>(&self, token: &'t str) -> Option<(&'t str, u64)> {
        parse_refresh_token(&self.keys, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const B: &[u8] = b"fedcba9876543210fedcba9876543210";
    const ISS: &str = "https://proxy.example";
    const AUD: &str = "https://proxy.example/mcp";

    fn tokens(secrets: &[&[u8]]) -> AccessTokens {
        AccessTokens::new(&ProxyKeys::new(secrets).unwrap(), ISS, AUD).unwrap()
    }

    fn claims(iat: u64, exp: u64) -> AccessClaims {
        AccessClaims {
            iss: ISS.into(),
            aud: AUD.into(),
            sub: "oid-1".into(),
            client_id: "client-1".into(),
            scope: "api://x/mcp.tools".into(),
            iat,
            exp,
            jti: "jti-1".into(),
            sid: "sid-1".into(),
        }
    }

    fn part(token: &str, i: usize) -> serde_json::Value {
        let part = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn an_access_token_round_trips() {
        let t = tokens(&[A]);
        let now = unix_now();
        let token = t.mint(&claims(now, now + 300)).unwrap();
        assert!(t.is_own(&token));
        let back = t.verify(&token, 0).unwrap();
        assert_eq!(
            (
                back.sid.as_str(),
                back.client_id.as_str(),
                back.sub.as_str()
            ),
            ("sid-1", "client-1", "oid-1")
        );
        assert_eq!((back.iat, back.exp), (now, now + 300));
        // The wire shape: RFC 9068 header, the claims by name.
        let header = part(&token, 0);
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["kid"].as_str().unwrap().len(), 8);
        let payload = part(&token, 1);
        for name in [
            "iss",
            "aud",
            "sub",
            "client_id",
            "scope",
            "iat",
            "exp",
            "jti",
            "sid",
        ] {
            assert!(payload.get(name).is_some(), "{name}");
        }
        assert_eq!(payload.as_object().unwrap().len(), 9);
    }

    #[test]
    fn other_tokens_are_not_taken_for_ours() {
        let t = tokens(&[A]);
        // An Entra token header (`{"typ":"JWT","alg":"RS256",…`), and garbage.
        assert!(!t.is_own("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsIng1dCI6IngifQ.e30.sig"));
        assert!(!t.is_own(""));
        assert!(t.verify("not.a.token", 60).is_none());
        assert!(t.verify("", 60).is_none());
    }

    #[test]
    fn an_altered_access_token_is_refused() {
        let t = tokens(&[A]);
        let now = unix_now();
        let token = t.mint(&claims(now, now + 300)).unwrap();
        let (head, rest) = token.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        // Claims re-signed by nobody: a longer lifetime.
        let mut forged = claims(now, now + 86_400);
        forged.sid = "sid-2".into();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert!(t.verify(&format!("{head}.{forged}.{sig}"), 60).is_none());
        // A flipped signature character, a missing signature, an extra segment.
        let mut flipped = sig.to_owned().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(
            t.verify(&format!("{head}.{payload}.{flipped}"), 60)
                .is_none()
        );
        assert!(t.verify(&format!("{head}.{payload}."), 60).is_none());
        assert!(t.verify(&format!("{head}.{payload}"), 60).is_none());
        assert!(t.verify(&format!("{token}.x"), 60).is_none());
        // `alg: none` with the same claims.
        let none = URL_SAFE_NO_PAD.encode(br#"{"typ":"at+jwt","alg":"none","kid":"x"}"#);
        assert!(t.verify(&format!("{none}.{payload}."), 60).is_none());
    }

    #[test]
    fn an_access_token_of_another_key_issuer_or_audience_is_refused() {
        let now = unix_now();
        let token = tokens(&[A]).mint(&claims(now, now + 300)).unwrap();
        assert!(tokens(&[B]).verify(&token, 60).is_none(), "another key");
        // Rotation: a new current key still verifies what the old one signed.
        let rotated = tokens(&[B, A]);
        assert!(rotated.verify(&token, 60).is_some());
        let fresh = rotated.mint(&claims(now, now + 300)).unwrap();
        assert!(tokens(&[A]).verify(&fresh, 60).is_none());
        let keys = ProxyKeys::new(&[A]).unwrap();
        let elsewhere = AccessTokens::new(&keys, "https://other.example", AUD).unwrap();
        assert!(elsewhere.verify(&token, 60).is_none(), "another issuer");
        let elsewhere = AccessTokens::new(&keys, ISS, "https://proxy.example/other").unwrap();
        assert!(elsewhere.verify(&token, 60).is_none(), "another audience");
        // An audience that merely starts the same.
        let mut c = claims(now, now + 300);
        c.aud = format!("{AUD}/x");
        let token = tokens(&[A]).mint(&c).unwrap();
        assert!(tokens(&[A]).verify(&token, 60).is_none());
    }

    #[test]
    fn the_access_token_mac_is_not_the_proxy_mac() {
        // The HS256 secret is derived for access tokens alone: an HMAC by the proxy's
        // general MAC key over the same input does not verify.
        let keys = ProxyKeys::new(&[A]).unwrap();
        let t = AccessTokens::new(&keys, ISS, AUD).unwrap();
        let now = unix_now();
        let token = t.mint(&claims(now, now + 300)).unwrap();
        let (input, _) = token.rsplit_once('.').unwrap();
        let (_, tag) = keys.sign(Purpose::AccessToken, input.as_bytes()).unwrap();
        assert!(t.verify(&format!("{input}.{tag}"), 60).is_none());
    }

    #[test]
    fn expiry_and_issue_time_are_checked_with_the_leeway() {
        let t = tokens(&[A]);
        let now = unix_now();
        let expired = t.mint(&claims(now - 600, now - 30)).unwrap();
        assert!(t.verify(&expired, 0).is_none());
        assert!(t.verify(&expired, 10).is_none());
        assert!(t.verify(&expired, 60).is_some(), "within the leeway");
        // The token ends strictly at `exp + leeway`.
        let ending = t.mint(&claims(now - 600, now - 60)).unwrap();
        assert!(t.verify(&ending, 60).is_none());
        // Issued in the future (a clock ahead, or a forgery) beyond the leeway.
        let early = t.mint(&claims(now + 120, now + 600)).unwrap();
        assert!(t.verify(&early, 60).is_none());
        assert!(t.verify(&early, 180).is_some());
    }

    /// The claim checks are `jsonwebtoken::decode` with an exact `Validation`, on valid
    /// and refused tokens alike (away from the `exp + leeway` second, where ours is strict).
    #[test]
    fn verify_agrees_with_decode() {
        let t = tokens(&[A]);
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISS]);
        validation.set_audience(&[AUD]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 60;
        let now = unix_now();
        let mut cases = vec![
            claims(now, now + 300),
            claims(now - 600, now - 30),
            claims(now - 600, now - 120),
        ];
        let mut c = claims(now, now + 300);
        c.iss = format!("{ISS}/");
        cases.push(c);
        let mut c = claims(now, now + 300);
        c.aud = AUD.to_uppercase();
        cases.push(c);
        let mut jwts: Vec<String> = cases.iter().map(|c| t.mint(c).unwrap()).collect();
        let valid = jwts[0].clone();
        jwts.push(format!("{valid}x"));
        jwts.push(tokens(&[B]).mint(&claims(now, now + 300)).unwrap());
        let (head, rest) = valid.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(now, now + 9000)).unwrap());
        jwts.push(format!("{head}.{forged}.{sig}"));
        for (i, token) in jwts.iter().enumerate() {
            let ours = t.verify(token, 60).is_some();
            let theirs =
                jsonwebtoken::decode::<AccessClaims>(token, &t.keys[0].decoding, &validation)
                    .is_ok();
            assert_eq!(ours, theirs, "case {i}");
        }
        assert!(
            t.verify(&valid, 60).is_some(),
            "the cases include a valid one"
        );
    }

    #[test]
    fn a_refresh_token_names_its_session_and_generation() {
        let keys = ProxyKeys::new(&[A]).unwrap();
        let rt = refresh_token(&keys, "sid-1", 7).unwrap();
        assert_eq!(parse_refresh_token(&keys, &rt), Some(("sid-1", 7)));
        // Each is fresh.
        assert_ne!(rt, refresh_token(&keys, "sid-1", 7).unwrap());
        // Rotation, and a retired key.
        assert!(parse_refresh_token(&ProxyKeys::new(&[B, A]).unwrap(), &rt).is_some());
        assert!(parse_refresh_token(&ProxyKeys::new(&[B]).unwrap(), &rt).is_none());
    }

    #[test]
    fn an_altered_refresh_token_is_refused() {
        let keys = ProxyKeys::new(&[A]).unwrap();
        let rt = refresh_token(&keys, "sid-1", 7).unwrap();
        let mut parts: Vec<&str> = rt.split('.').collect();
        // Another generation or session under the same tag.
        parts[1] = "8";
        assert!(parse_refresh_token(&keys, &parts.join(".")).is_none());
        parts[1] = "7";
        parts[0] = "sid-2";
        assert!(parse_refresh_token(&keys, &parts.join(".")).is_none());
        // A forged shape, and an access-token-purpose MAC over the same body.
        assert!(parse_refresh_token(&keys, "sid-1.9.x.y.z").is_none());
        let body = rt.rsplitn(3, '.').nth(2).unwrap();
        let (kid, tag) = keys.sign(Purpose::AccessToken, body.as_bytes()).unwrap();
        assert!(parse_refresh_token(&keys, &format!("{body}.{kid}.{tag}")).is_none());
        assert!(parse_refresh_token(&keys, "").is_none());
    }
}
