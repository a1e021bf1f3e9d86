//! RFC 9728 protected-resource metadata, and CORS for the endpoints browsers fetch.
//!
//! Served at the root well-known location and at the path-suffixed one
//! (`/.well-known/oauth-protected-resource/mcp` for `https://host/mcp`), so clients find it
//! whichever way they probe (MCP 2025-11-25 asks servers for one, clients try both).
//!
//! A resource on loopback (`http://127.0.0.1:8400/mcp`, dev mode) is named as the client
//! reached it: asked through `localhost:8400`, the metadata says
//! `http://localhost:8400/mcp`, since MCP clients refuse metadata whose `resource` is not
//! the URL they were given. Only loopback names stand in for each other, on the same port.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use serde::Serialize;

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

/// `resource` as the client reached it, when `resource` is on loopback and `host` (the
/// request's `Host`) names another loopback name for the same port: `localhost`,
/// `127.0.0.1` and `[::1]` stand in for each other. `None`: the resource as configured.
pub fn as_reached(resource: &str, host: Option<&HeaderValue>) -> Option<String> {
    let mut url = url::Url::parse(resource).ok()?;
    if !url
        .host()
        .is_some_and(|h| super::client::is_loopback_host(&h))
    {
        return None;
    }
    let host = host?.to_str().ok()?;
    let reached = url::Url::parse(&format!("{}://{host}/", url.scheme())).ok()?;
    let same = reached
        .host()
        .is_some_and(|h| super::client::is_loopback_host(&h))
        && reached.port_or_known_default() == url.port_or_known_default()
        && reached.host_str() != url.host_str();
    if !same {
        return None;
    }
    url.set_host(reached.host_str()).ok()?;
    let text = url.to_string();
    Some(if resource.ends_with('/') {
        text
    } else {
        text.trim_end_matches('/').to_owned()
    })
}

/// Whether `given` (a client's `resource` parameter) names `resource`: equal but for a
/// trailing `/`, or the same loopback resource under another loopback name.
pub(crate) fn names_resource(given: &str, resource: &str) -> bool {
    let given = given.trim_end_matches('/');
    given == resource
        || url::Url::parse(given)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?;
                let host = match u.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                };
                as_reached(resource, HeaderValue::try_from(host).ok().as_ref())
            })
            .is_some_and(|reached| reached == given)
}

/// CORS for endpoints that browser-based clients call with `fetch` (metadata,
/// registration, token, revocation): any origin, no credentials. These endpoints read no
/// cookies, so a page of any origin learns nothing it could not fetch itself; this is
/// what the MCP SDKs' own authorization servers do.
pub(crate) async fn cors_any_origin(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        let requested = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .filter(|v| {
                v.to_str().is_ok_and(|s| {
                    s.len() <= 512
                        && s.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ',' | ' ')
                        })
                })
            })
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_static("authorization, content-type, mcp-protocol-version")
            });
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        return res;
    }
    let mut res = next.run(req).await;
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn loopback_resources_are_named_as_reached() {
        let r = "http://127.0.0.1:8400/mcp";
        assert_eq!(
            as_reached(r, Some(&host("localhost:8400"))).as_deref(),
            Some("http://localhost:8400/mcp")
        );
        assert_eq!(
            as_reached(r, Some(&host("[::1]:8400"))).as_deref(),
            Some("http://[::1]:8400/mcp")
        );
        // Same name, another port, another host, no host: as configured.
        assert_eq!(as_reached(r, Some(&host("127.0.0.1:8400"))), None);
        assert_eq!(as_reached(r, Some(&host("localhost:8401"))), None);
        assert_eq!(as_reached(r, Some(&host("evil.example:8400"))), None);
        assert_eq!(as_reached(r, None), None);
        // Never for a public resource.
        assert_eq!(
            as_reached("https://mcp.contoso.com/mcp", Some(&host("localhost"))),
            None
        );
    }

    #[test]
    fn a_resource_parameter_may_use_another_loopback_name() {
        let r = "http://127.0.0.1:8400/mcp";
        assert!(names_resource("http://127.0.0.1:8400/mcp/", r));
        assert!(names_resource("http://localhost:8400/mcp", r));
        assert!(!names_resource("http://localhost:8401/mcp", r));
        assert!(!names_resource("http://localhost:8400/other", r));
        assert!(!names_resource(
            "https://mcp.contoso.com/mcp",
            "https://mcp.example.com/mcp"
        ));
    }
}
