//! Gateway mode: a streaming reverse proxy to an upstream MCP server.
//!
//! [`Gateway`] is the innermost service when idguard runs in front of an MCP server it does
//! not host (any language, any SDK): the same `ValidateTokenLayer` and `AuthorizeMcpLayer`
//! go in front of it. It forwards the request (method, path and query below the MCP path,
//! end-to-end headers) and streams the reply back as it arrives, so Server-Sent Events
//! reach the client event by event.
//!
//! **The caller's token is never passed upstream**: the `Authorization` header is removed
//! (MCP forbids token passthrough). Hop-by-hop headers are dropped in both directions.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName};
use http::{HeaderMap, Request, Response, StatusCode};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// caller's credentials.
const DROPPED: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::HOST,
    header::AUTHORIZATION,
];

/// A reverse proxy to one upstream MCP endpoint.
#[derive(Clone, Debug)]
pub struct Gateway {
    upstream: reqwest::Url,
    client: reqwest::Client,
}

impl Gateway {
    /// Proxies to `upstream` (the upstream's MCP endpoint URL) with `client`.
    pub fn new(upstream: reqwest::Url, client: reqwest::Client) -> Self {
        Self { upstream, client }
    }
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let connection_listed: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (name, value) in from {
        if DROPPED.contains(name)
            || name.as_str() == "keep-alive"
            || connection_listed.iter().any(|c| c == name.as_str())
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

impl tower_service::Service<Request<Body>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    // Boxed: every request waits on the network anyway.
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let client = self.client.clone();
        let mut url = self.upstream.clone();
        // `nest_service` strips the MCP path: what is left goes below the upstream's path.
        let rest = req.uri().path().trim_start_matches('/');
        if !rest.is_empty() {
            let joined = format!("{}/{rest}", url.path().trim_end_matches('/'));
            url.set_path(&joined);
        }
        url.set_query(req.uri().query());
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let mut headers = HeaderMap::new();
            copy_headers(&parts.headers, &mut headers);
            let upstream = client
                .request(parts.method, url)
                .headers(headers)
                .body(reqwest::Body::wrap_stream(body.into_data_stream()))
                .send()
                .await;
            let res = match upstream {
                Ok(res) => res,
                Err(e) => {
                    tracing::error!(target: "idguard::gateway", error = %crate::entra::without_url(&e), "upstream unreachable");
                    let mut res = Response::new(Body::empty());
                    *res.status_mut() = StatusCode::BAD_GATEWAY;
                    return Ok(res);
                }
            };
            let mut out = Response::new(Body::empty());
            *out.status_mut() = res.status();
            copy_headers(res.headers(), out.headers_mut());
            *out.body_mut() = Body::from_stream(res.bytes_stream().map_err(std::io::Error::other));
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        let mut from = HeaderMap::new();
        from.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        from.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        from.insert("x-private", "1".parse().unwrap());
        from.insert("mcp-session-id", "abc".parse().unwrap());
        from.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to);
        assert!(to.get(header::AUTHORIZATION).is_none());
        assert!(to.get("x-private").is_none());
        assert!(to.get(header::CONNECTION).is_none());
        assert_eq!(to["mcp-session-id"], "abc");
        assert_eq!(to[header::CONTENT_TYPE], "application/json");
    }
}
