//! `POST /register`: dynamic client registration (RFC 7591), rate limited, with the
//! operator's redirect-host allow-list. The registration itself is sealed into the client
//! id ([`client::register`]), so nothing is stored.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{self, HeaderValue};

use super::super::client::{self, RegistrationRequest};
use super::{Event, Proxy, json_error, no_store, unix_now};

impl Proxy {
    /// Whether `uri` names a host the operator allows (`oauth.allowed_redirect_hosts`).
    pub(super) fn redirect_allowed(&self, uri: &str) -> bool {
        redirect_host_allowed(&self.settings.allowed_redirect_hosts, uri)
    }
}

/// Whether `uri` names a host in `allowed`, or a loopback host; anything goes when
/// `allowed` is empty.
fn redirect_host_allowed(allowed: &[String], uri: &str) -> bool {
    allowed.is_empty()
        || url::Url::parse(uri).is_ok_and(|u| match u.host() {
            Some(h) if client::is_loopback_host(&h) => true,
            Some(h) => allowed.iter().any(|a| *a == h.to_string()),
            None => false,
        })
}

pub(super) async fn register(
    State(guard): State<super::ProxyState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let p = &*guard.proxy;
    let Ok(body) = body else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_client_metadata",
            "the registration is too large",
        );
    };
    let allowed = match p.registrations.take().await {
        Ok(allowed) => allowed,
        Err(e) => return super::limit_failed(&e).into_response(),
    };
    if let Err(wait) = allowed {
        let mut res = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            "too many registrations; retry later",
        );
        if let Ok(v) = HeaderValue::try_from(wait.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    let req = match serde_json::from_slice::<RegistrationRequest>(&body) {
        Ok(r) if !r.redirect_uris().iter().all(|u| p.redirect_allowed(u)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_redirect_uri",
                "a redirect URI names a host this server does not allow",
            );
        }
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                &format!("not a registration request: {e}"),
            );
        }
    };
    match client::register(&p.keys, req, unix_now()) {
        Ok(reg) => {
            p.count(Event::Registered);
            tracing::info!(target: "idguard::oauth", "client registered");
            (StatusCode::CREATED, no_store(), Json(reg)).into_response()
        }
        Err(e) => json_error(StatusCode::BAD_REQUEST, e.code, &e.description),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_hosts_are_matched_exactly() {
        let allowed = vec!["app.example".to_owned(), "203.0.113.7".to_owned()];
        assert!(redirect_host_allowed(&allowed, "https://app.example/cb"));
        assert!(redirect_host_allowed(
            &allowed,
            "https://app.example:8443/cb?x=1"
        ));
        assert!(redirect_host_allowed(&allowed, "http://203.0.113.7/cb"));
        // Loopback is always allowed (native clients).
        assert!(redirect_host_allowed(&allowed, "http://127.0.0.1:33418/cb"));
        assert!(redirect_host_allowed(&allowed, "http://[::1]/cb"));
        // No suffix, prefix or subdomain matching.
        for uri in [
            "https://evil.app.example/cb",
            "https://app.example.evil/cb",
            "https://xapp.example/cb",
            "https://app.example@evil.example/cb",
            "urn:ietf:wg:oauth:2.0:oob",
            "not a url",
        ] {
            assert!(!redirect_host_allowed(&allowed, uri), "{uri}");
        }
    }

    #[test]
    fn no_allow_list_allows_any_host() {
        assert!(redirect_host_allowed(&[], "https://anything.example/cb"));
        assert!(redirect_host_allowed(&[], "not a url"));
    }
}
