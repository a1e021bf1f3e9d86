//! The hop to a plain-HTTP upstream: hyper's pooled client directly, with the request URI
//! and the `Host` header computed once.
//!
//! reqwest (which the gateway keeps for `https://` upstreams, and whenever a proxy is set
//! in the environment) costs about as much per request again as hyper's client under it:
//! its own request and response types, URL to URI conversion, a copy of the header map and
//! its middleware futures (`benches/load/README.md`, "The gateway scenario").

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long an unused pooled connection to the upstream is kept (reqwest's default).
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The environment variables through which reqwest sends plain-HTTP requests via a proxy.
const PROXY_VARIABLES: [&str; 4] = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];

/// hyper's client for one `http://` upstream endpoint.
#[derive(Clone, Debug)]
pub(super) struct PlainHttp {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    host: HeaderValue,
}

impl PlainHttp {
    /// The client for `url` when it is plain HTTP without user information and no proxy
    /// is set in the environment (reqwest would use it); otherwise `None` (reqwest goes on
    /// carrying the requests).
    pub(super) fn for_url(url: &reqwest::Url, connect_timeout: Duration) -> Option<Self> {
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        if PROXY_VARIABLES
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
        {
            return None;
        }
        let uri: Uri = url.as_str().parse().ok()?;
        let host = HeaderValue::from_str(uri.authority()?.as_str()).ok()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Some(Self { client, uri, host })
    }

    /// Sends `method` with `headers` (what the gateway forwards: `Host` is added here) and
    /// `body` (sent with its `Content-Length`; empty for `GET` and `DELETE`).
    pub(super) fn send(
        &self,
        method: Method,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> hyper_util::client::legacy::ResponseFuture {
        headers.insert(header::HOST, self.host.clone());
        if !headers.contains_key(header::ACCEPT) {
            // What reqwest sends when the caller names nothing.
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = headers;
        self.client.request(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_plain_http_without_user_information_goes_through_hyper() {
        let plain = |url: &str| {
            PlainHttp::for_url(&reqwest::Url::parse(url).unwrap(), Duration::from_secs(1))
        };
        let no_proxy = PROXY_VARIABLES
            .iter()
            .all(|v| std::env::var_os(v).is_none_or(|v| v.is_empty()));
        if no_proxy {
            let hop = plain("http://127.0.0.1:9000/mcp?x=1").unwrap();
            assert_eq!(hop.uri, "http://127.0.0.1:9000/mcp?x=1");
            assert_eq!(hop.host, "127.0.0.1:9000");
            assert_eq!(plain("http://localhost/mcp").unwrap().host, "localhost");
        }
        assert!(plain("https://127.0.0.1:9000/mcp").is_none());
        assert!(plain("http://user:secret@127.0.0.1:9000/mcp").is_none());
    }
}
