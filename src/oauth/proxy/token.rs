//! `POST /token` and `POST /revoke`: the client's code redeemed (single use, PKCE, the
//! same client and redirect URI), refresh tokens rotated with reuse detection (RFC 9700
//! §4.14.2), the session's Entra token renewed when it would end first, and sessions
//! revoked by their client (RFC 7009).

use axum::Json;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::super::keys::digest_b64;
use super::super::store::RecordKind;
use super::entra_leg::{CODE_RECORD_TTL, EntraFailure, token_scope};
use super::sealed::{Code, Session};
use super::{Event, OAuthError, Proxy, no_store, pkce, unix_now};

/// A refresh token rotated this recently is refused without revoking its family.
const ROTATION_GRACE_SECS: u64 = 5;

#[derive(Deserialize)]
pub(super) struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    client_id: Option<String>,
    refresh_token: Option<String>,
    resource: Option<String>,
}

pub(super) async fn token(
    State(guard): State<super::ProxyState>,
    form: Result<Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let p = &*guard.proxy;
    let form = match form_or_error(form) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if let Some(resource) = form.resource.as_deref()
        && !super::super::metadata::names_resource(resource, &p.resource)
    {
        return OAuthError::new("invalid_target", "`resource` is not this server").into_response();
    }
    let result = match form.grant_type.as_deref() {
        Some("authorization_code") => redeem_code(p, &form).await,
        Some("refresh_token") => refresh(p, &form).await,
        _ => Err(OAuthError::new(
            "unsupported_grant_type",
            "use `authorization_code` or `refresh_token`",
        )),
    };
    match result {
        Ok(body) => (StatusCode::OK, no_store(), Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The form of a token-endpoint style request, or the RFC 6749 JSON error.
fn form_or_error<T>(
    form: Result<Form<T>, axum::extract::rejection::FormRejection>,
) -> Result<T, OAuthError> {
    form.map(|Form(f)| f).map_err(|_| {
        OAuthError::new(
            "invalid_request",
            "send an application/x-www-form-urlencoded body",
        )
    })
}

/// A form field that must be present.
fn required<'a>(value: Option<&'a str>, name: &str) -> Result<&'a str, OAuthError> {
    value.ok_or_else(|| OAuthError::new("invalid_request", format!("`{name}` is required")))
}

/// Whether the token request's `redirect_uri` is the authorization request's: the same
/// string, and present exactly when it was present there (RFC 6749 §4.1.3).
fn same_redirect(presented: Option<&str>, code: &Code) -> bool {
    match presented {
        Some(r) => r == code.redirect_uri,
        None => !code.redirect_presented,
    }
}

/// What a presented refresh-token generation is, against the session's.
#[derive(Debug, PartialEq, Eq)]
enum Generation {
    /// The one valid token.
    Current,
    /// The previous one, rotated moments ago: a client that refreshed twice at once.
    JustRotated,
    /// An older one came back: the family is compromised.
    Reused,
    /// One the session never issued.
    Unknown,
}

fn judge(presented: u64, session: &Session, now: u64) -> Generation {
    if presented.checked_add(1) == Some(session.generation)
        && now.saturating_sub(session.rotated_at) <= ROTATION_GRACE_SECS
    {
        Generation::JustRotated
    } else if presented < session.generation {
        Generation::Reused
    } else if presented == session.generation {
        Generation::Current
    } else {
        Generation::Unknown
    }
}

async fn redeem_code(p: &Proxy, form: &TokenForm) -> Result<serde_json::Value, OAuthError> {
    let code = required(form.code.as_deref(), "code")?;
    let client_id = required(form.client_id.as_deref(), "client_id")?;
    let spent = || {
        OAuthError::new(
            "invalid_grant",
            "the code is invalid, expired or already used",
        )
    };
    let key = digest_b64(code);
    let Some((mut record, current)) = p.get_sealed::<Code>(RecordKind::Code, &key).await? else {
        return Err(spent());
    };
    if record.used {
        // A replayed code: revoke what the first redemption issued (OAuth 2.1 §4.1.3).
        tracing::warn!(target: "idguard::oauth", "authorization code replayed; session revoked");
        p.count(Event::ReuseRevoked);
        p.end_session(&record.sid).await?;
        return Err(spent());
    }
    if unix_now() >= record.expires_at {
        return Err(spent());
    }
    // Mark it used atomically: of two concurrent redemptions, one wins.
    record.used = true;
    if !p
        .swap_sealed(RecordKind::Code, &key, &current, &record, CODE_RECORD_TTL)
        .await?
    {
        return Err(spent());
    }
    let refuse = |why: &str| Err(OAuthError::new("invalid_grant", why));
    if record.client_id != client_id {
        return refuse("the code was issued to another client");
    }
    if !same_redirect(form.redirect_uri.as_deref(), &record) {
        return refuse("`redirect_uri` differs from the authorization request");
    }
    let verifier = form.code_verifier.as_deref().unwrap_or_default();
    if !pkce::verify(verifier, &record.challenge) {
        return refuse("the PKCE `code_verifier` does not match");
    }
    let (session, _) = p
        .get_sealed::<Session>(RecordKind::Session, &record.sid)
        .await?
        .ok_or_else(|| OAuthError::new("invalid_grant", "the sign-in session ended"))?;
    issue(p, &session, &record.sid)
}

/// The token response for `session`: a fresh access token and the refresh token of its
/// current generation.
fn issue(p: &Proxy, session: &Session, sid: &str) -> Result<serde_json::Value, OAuthError> {
    let failed = || OAuthError::new("server_error", "cannot issue a token");
    let (access, expires_in) = p.issue_access_token(session, sid).ok_or_else(failed)?;
    let refresh = p
        .refresh_token(sid, session.generation)
        .ok_or_else(failed)?;
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "refresh_token": refresh,
        "scope": session.scopes.join(" "),
    }))
}

async fn refresh(p: &Proxy, form: &TokenForm) -> Result<serde_json::Value, OAuthError> {
    let token = required(form.refresh_token.as_deref(), "refresh_token")?;
    let client_id = required(form.client_id.as_deref(), "client_id")?;
    let invalid = || {
        OAuthError::new(
            "invalid_grant",
            "the refresh token is invalid, expired or was revoked",
        )
    };
    let (sid, generation) = p.parse_refresh_token(token).ok_or_else(invalid)?;
    let (mut session, current) = p
        .get_sealed::<Session>(RecordKind::Session, sid)
        .await?
        .ok_or_else(invalid)?;
    if session.client_id != client_id {
        return Err(invalid());
    }
    match judge(generation, &session, unix_now()) {
        Generation::Current => {}
        // The token rotated a moment ago: a client that refreshed twice at once (a
        // reconnect), not a thief. Refuse without revoking (RFC 9700 §4.14.2 allows it).
        Generation::JustRotated | Generation::Unknown => return Err(invalid()),
        Generation::Reused => {
            // A rotated token came back: whoever holds it is not the only holder of the
            // family. Revoke the family (RFC 9700 §4.14.2).
            tracing::warn!(target: "idguard::oauth", "refresh token reused; session revoked");
            p.count(Event::ReuseRevoked);
            p.end_session(sid).await?;
            return Err(invalid());
        }
    }
    // Renew the Entra token when it would end before the new access token. A transient
    // failure leaves the refresh token valid, so the client can retry.
    let needed = unix_now().saturating_add(p.settings.access_token_lifetime.as_secs());
    if session.expires_at < needed {
        let Some(entra_refresh) = session.refresh_token.clone() else {
            return Err(OAuthError::new("invalid_grant", "sign in again"));
        };
        let form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", entra_refresh),
            ("scope", token_scope(&session.scopes)),
        ];
        match p.entra_token(form).await {
            Ok(t) => {
                session.access_token = t.access_token;
                if t.refresh_token.is_some() {
                    session.refresh_token = t.refresh_token;
                }
                session.expires_at = unix_now().saturating_add(t.expires_in);
            }
            Err(EntraFailure::Other(why)) => {
                tracing::warn!(target: "idguard::oauth", reason = %why, "Entra refresh failed");
                return Err(OAuthError::new(
                    "temporarily_unavailable",
                    "the identity provider could not be reached",
                ));
            }
            Err(_) => {
                p.end_session(sid).await?;
                return Err(OAuthError::new("invalid_grant", "sign in again"));
            }
        }
    }
    // Rotate: the next generation, only if nobody rotated meanwhile.
    session.generation += 1;
    session.rotated_at = unix_now();
    if !p
        .swap_sealed(RecordKind::Session, sid, &current, &session, session.ttl())
        .await?
    {
        return Err(invalid());
    }
    p.count(Event::Refreshed);
    issue(p, &session, sid)
}

#[derive(Deserialize)]
pub(super) struct RevokeForm {
    token: Option<String>,
    client_id: Option<String>,
}

/// RFC 7009: ends the session behind a refresh or access token (both kinds stop working).
/// Unknown or already revoked tokens are answered `200`, as the RFC asks.
pub(super) async fn revoke(
    State(guard): State<super::ProxyState>,
    form: Result<Form<RevokeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let p = &*guard.proxy;
    let form = match form_or_error(form) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let (token, client_id) = match (
        required(form.token.as_deref(), "token"),
        required(form.client_id.as_deref(), "client_id"),
    ) {
        (Ok(t), Ok(c)) => (t, c),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let leeway = guard.leeway_secs;
    let sid = match p.parse_refresh_token(token) {
        Some((sid, _)) => Some(sid.to_owned()),
        None => p.verify_access_token(token, leeway).map(|c| c.sid),
    };
    if let Some(sid) = sid {
        match p.get_sealed::<Session>(RecordKind::Session, &sid).await {
            Ok(Some((session, _))) if session.client_id != client_id => {
                return OAuthError::new("invalid_client", "the token was issued to another client")
                    .into_response();
            }
            Ok(Some(_)) => {
                if let Err(e) = p.end_session(&sid).await {
                    return e.into_response();
                }
                p.count(Event::Revoked);
                tracing::info!(target: "idguard::oauth", "session revoked by its client");
            }
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    (StatusCode::OK, no_store()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(redirect_presented: bool) -> Code {
        Code {
            client_id: "c".into(),
            redirect_uri: "http://127.0.0.1:33418/callback".into(),
            redirect_presented,
            challenge: String::new(),
            sid: String::new(),
            used: false,
            expires_at: 0,
        }
    }

    fn session(generation: u64, rotated_at: u64) -> Session {
        Session {
            client_id: String::new(),
            scopes: Vec::new(),
            oid: String::new(),
            access_token: String::new(),
            refresh_token: None,
            expires_at: 0,
            generation,
            ends_at: 0,
            rotated_at,
        }
    }

    #[test]
    fn the_redirect_uri_is_matched_exactly() {
        let c = code(true);
        assert!(same_redirect(Some("http://127.0.0.1:33418/callback"), &c));
        for other in [
            "http://127.0.0.1:33418/callback/",
            "http://127.0.0.1:33419/callback",
            "http://127.0.0.1:33418/Callback",
            "http://127.0.0.1:33418/callback?x=1",
            "http://localhost:33418/callback",
            "",
        ] {
            assert!(!same_redirect(Some(other), &c), "{other}");
        }
        assert!(!same_redirect(None, &c), "sent at /authorize: required");
        let c = code(false);
        assert!(same_redirect(None, &c));
        assert!(same_redirect(Some("http://127.0.0.1:33418/callback"), &c));
        assert!(!same_redirect(Some("http://127.0.0.1:1/callback"), &c));
    }

    #[test]
    fn refresh_generations_are_judged() {
        let now = 1_000;
        let s = session(3, now - 2);
        assert_eq!(judge(3, &s, now), Generation::Current);
        assert_eq!(judge(2, &s, now), Generation::JustRotated);
        assert_eq!(judge(1, &s, now), Generation::Reused);
        assert_eq!(judge(4, &s, now), Generation::Unknown);
        assert_eq!(judge(u64::MAX, &s, now), Generation::Unknown);
        // The grace ends ROTATION_GRACE_SECS after the rotation.
        let s = session(3, now - ROTATION_GRACE_SECS);
        assert_eq!(judge(2, &s, now), Generation::JustRotated);
        let s = session(3, now - ROTATION_GRACE_SECS - 1);
        assert_eq!(judge(2, &s, now), Generation::Reused);
        // A first token (generation 0) has nothing older.
        let s = session(0, 0);
        assert_eq!(judge(0, &s, now), Generation::Current);
    }

    #[test]
    fn missing_fields_are_named() {
        assert_eq!(required(Some("x"), "code").ok(), Some("x"));
        let e = required(None, "code").err().unwrap();
        assert_eq!(
            (e.status, e.error),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        assert_eq!(e.description, "`code` is required");
    }
}
