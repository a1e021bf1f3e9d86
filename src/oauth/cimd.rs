//! Client-id metadata documents (draft-ietf-oauth-client-id-metadata-document): a client
//! whose id is an `https` URL is described by the JSON document at that URL.
//!
//! Fetching a URL a stranger chose is a server-side request forgery risk, so the fetch:
//! - accepts only `https` URLs with a path, no credentials, no fragment;
//! - resolves the host itself and connects only to public addresses (loopback, private,
//!   link-local — which holds the cloud metadata endpoints —, shared, unique-local,
//!   multicast and unspecified addresses are refused), pinning the connection to the
//!   checked addresses so a DNS answer cannot change between check and connect;
//! - follows no redirects, waits at most 5 s and reads at most 5 KiB.
//!
//! `oauth.cimd_allow_loopback` (development only) also allows loopback targets and plain
//! `http` to them, so a test or a local client can serve its document on 127.0.0.1.
//!
//! The document must name itself (`client_id` equal to the URL) and list valid redirect
//! URIs; it is cached as its `Cache-Control: max-age` says (1 hour by default, at most a
//! day, never with `no-store`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde::Deserialize;

use super::client::{Client, check_redirect_uri, is_loopback_host};

/// Largest accepted document.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 5 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
const MIN_TTL: Duration = Duration::from_secs(60);

/// Why a client-id metadata document was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CimdError {
    #[error("the client id is not an https URL with a path: {0}")]
    BadUrl(String),
    #[error("the client id's host resolves to a non-public address ({0})")]
    Forbidden(IpAddr),
    #[error("cannot fetch the client metadata document: {0}")]
    Fetch(String),
    #[error("the client metadata document is invalid: {0}")]
    Invalid(String),
}

/// Checks addresses before any connection: the SSRF filter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AddressPolicy {
    pub(crate) allow_loopback: bool,
}

impl AddressPolicy {
    pub(crate) fn check(self, ip: IpAddr) -> Result<(), CimdError> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_loopback() && self.allow_loopback {
            return Ok(());
        }
        let refused = match ip {
            IpAddr::V4(v4) => forbidden_v4(v4),
            IpAddr::V6(v6) => forbidden_v6(v6),
        };
        if refused {
            Err(CimdError::Forbidden(ip))
        } else {
            Ok(())
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254.0.0/16, with 169.254.169.254
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space, 100.100.100.200
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

/// IPv6: only global unicast (`2000::/3`) is allowed, minus the ranges that embed or
/// relay to IPv4 or are reserved. Everything else (loopback, unique local with
/// `fd00:ec2::254`, link local, site local, IPv4-compatible, NAT64, discard) is refused.
fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let [s0, s1, ..] = ip.segments();
    let global_unicast = (s0 & 0xe000) == 0x2000;
    !global_unicast
        || (s0 == 0x2001 && s1 == 0) // Teredo
        || (s0 == 0x2001 && s1 == 0x0db8) // documentation
        || (s0 == 0x2001 && s1 < 0x0200) // other IETF protocol assignments
        || s0 == 0x2002 // 6to4
}

/// A resolver that answers only with addresses the policy allows: what reqwest connects
/// to is exactly what was checked.
#[derive(Debug)]
struct CheckedResolver {
    policy: AddressPolicy,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut allowed = Vec::with_capacity(addrs.len());
            for addr in addrs {
                // One refused address refuses the name: a name that mixes public and
                // internal answers is an attack, not a misconfiguration.
                policy.check(addr.ip())?;
                allowed.push(addr);
            }
            if allowed.is_empty() {
                return Err(CimdError::Fetch(format!("`{host}` has no address")).into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

impl CimdError {
    /// What the sign-in page may say: the document's own problems, but nothing about the
    /// network behind idguard (addresses, connection errors), which would make it an
    /// oracle for internal names.
    pub(crate) fn public_message(&self) -> String {
        match self {
            Self::BadUrl(_) | Self::Invalid(_) => self.to_string(),
            Self::Forbidden(_) | Self::Fetch(_) => {
                "the client metadata document could not be fetched".to_owned()
            }
        }
    }
}

#[derive(Deserialize)]
struct Document {
    client_id: Option<String>,
    client_name: Option<String>,
    redirect_uris: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
}

/// Fetches, checks and caches client-id metadata documents.
#[derive(Clone, Debug)]
pub(crate) struct MetadataDocuments {
    http: reqwest::Client,
    policy: AddressPolicy,
    cache: moka::future::Cache<String, (Arc<Client>, Duration)>,
    /// Recent failures, so a bad URL does not cause a fetch per request.
    failures: moka::future::Cache<String, CimdError>,
    /// Fetches in flight, all URLs together.
    fetches: Arc<tokio::sync::Semaphore>,
}

/// Default of `oauth.cimd_cache_capacity`: client-id metadata documents cached (each for
/// as long as its `Cache-Control` says, one minute to one day), and as many recent fetch
/// failures.
pub const DEFAULT_CIMD_CACHE_CAPACITY: u64 = 10_000;

/// At most this many documents are fetched at once.
const MAX_CONCURRENT_FETCHES: usize = 16;
/// How long a failure is remembered.
const FAILURE_TTL: Duration = Duration::from_secs(60);

struct TtlExpiry;

impl moka::Expiry<String, (Arc<Client>, Duration)> for TtlExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &(Arc<Client>, Duration),
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

/// Whether a client id is URL-shaped (then it names a metadata document).
pub(crate) fn is_metadata_url(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

impl MetadataDocuments {
    /// Keeps at most `capacity` documents, and as many failures (at least one of each).
    pub(crate) fn new(policy: AddressPolicy, capacity: u64) -> Result<Self, reqwest::Error> {
        let capacity = capacity.max(1);
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver { policy }))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .no_proxy()
            .build()?;
        Ok(Self {
            http,
            policy,
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(TtlExpiry)
                .build(),
            failures: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(FAILURE_TTL)
                .build(),
            fetches: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES)),
        })
    }

    /// The client `url` describes, from the cache or fetched (one fetch per URL at a
    /// time; failures remembered for a minute).
    pub(crate) async fn client(&self, url: &str) -> Result<Arc<Client>, CimdError> {
        if let Some(e) = self.failures.get(url).await {
            return Err(e);
        }
        let fetched = self
            .cache
            .try_get_with(url.to_owned(), async {
                let _permit = self
                    .fetches
                    .acquire()
                    .await
                    .map_err(|_| CimdError::Fetch("shutting down".into()))?;
                self.fetch(url)
                    .await
                    .map(|(client, ttl)| (Arc::new(client), ttl))
            })
            .await;
        match fetched {
            Ok((client, _)) => Ok(client),
            Err(e) => {
                let e = (*e).clone();
                self.failures.insert(url.to_owned(), e.clone()).await;
                Err(e)
            }
        }
    }

    fn check_url(&self, raw: &str) -> Result<url::Url, CimdError> {
        let bad = |why: &str| CimdError::BadUrl(format!("`{raw}`: {why}"));
        let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
        // The id must be the document's canonical URL: no normalisation may change it.
        if url.as_str() != raw {
            return Err(bad("not in canonical form"));
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(bad("fragments and credentials are not allowed"));
        }
        if matches!(url.path(), "" | "/") {
            return Err(bad("the URL needs a path"));
        }
        let host = url.host().ok_or_else(|| bad("no host"))?;
        let loopback = is_loopback_host(&host);
        match url.scheme() {
            "https" => {}
            "http" if loopback && self.policy.allow_loopback => {}
            _ => return Err(bad("only https")),
        }
        // Literal addresses never reach the resolver: check them here. Names (with
        // `localhost`) are checked by the resolver, on every address they resolve to.
        match host {
            url::Host::Ipv4(ip) => self.policy.check(IpAddr::V4(ip))?,
            url::Host::Ipv6(ip) => self.policy.check(IpAddr::V6(ip))?,
            url::Host::Domain(_) => {}
        }
        Ok(url)
    }

    async fn fetch(&self, raw: &str) -> Result<(Client, Duration), CimdError> {
        let url = self.check_url(raw)?;
        let fetch_err = |e: reqwest::Error| {
            // A refusal by the resolver surfaces as a connect error; name it.
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = source {
                if let Some(c) = s.downcast_ref::<CimdError>() {
                    return c.clone();
                }
                source = s.source();
            }
            CimdError::Fetch(e.without_url().to_string())
        };
        let res = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(fetch_err)?;
        if !res.status().is_success() {
            return Err(CimdError::Fetch(format!("HTTP {}", res.status().as_u16())));
        }
        if res
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(CimdError::Fetch(format!(
                "larger than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        let ttl = ttl_of(res.headers());
        let mut body = Vec::new();
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(fetch_err)?;
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(CimdError::Fetch(format!(
                    "larger than {MAX_DOCUMENT_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let doc: Document =
            serde_json::from_slice(&body).map_err(|e| CimdError::Invalid(e.to_string()))?;
        let client = check_document(raw, doc)?;
        Ok((client, ttl))
    }
}

fn check_document(url: &str, doc: Document) -> Result<Client, CimdError> {
    let invalid = |s: String| CimdError::Invalid(s);
    if doc.client_id.as_deref() != Some(url) {
        return Err(invalid(format!(
            "its `client_id` ({}) is not its URL",
            doc.client_id.as_deref().unwrap_or("missing")
        )));
    }
    let uris = doc
        .redirect_uris
        .filter(|u| !u.is_empty() && u.len() <= 10)
        .ok_or_else(|| invalid("`redirect_uris` must list 1 to 10 URIs".into()))?;
    for uri in &uris {
        check_redirect_uri(uri).map_err(invalid)?;
    }
    if doc
        .token_endpoint_auth_method
        .as_deref()
        .is_some_and(|m| m != "none")
    {
        return Err(invalid(
            "`token_endpoint_auth_method` must be `none` (public clients with PKCE)".into(),
        ));
    }
    if doc
        .grant_types
        .iter()
        .flatten()
        .any(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
        || doc.response_types.iter().flatten().any(|t| t != "code")
    {
        return Err(invalid(
            "only the `authorization_code` and `refresh_token` grants with `code` responses are supported"
                .into(),
        ));
    }
    let name = doc
        .client_name
        .map(|n| {
            n.chars()
                .filter(|c| !c.is_control())
                .take(120)
                .collect::<String>()
        })
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| url.to_owned());
    Ok(Client {
        id: url.to_owned(),
        name,
        redirect_uris: uris,
        metadata_document: true,
    })
}

/// How long a document is cached: its `max-age`, within [1 minute, 1 day]; `no-store`,
/// `no-cache` and `max-age=0` get the minute too (how long the authorization server keeps
/// what it fetched is its own decision, and a per-request fetch would be a lever for
/// floods).
fn ttl_of(headers: &http::HeaderMap) -> Duration {
    let Some(cc) = headers
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    else {
        return DEFAULT_TTL;
    };
    let mut ttl = DEFAULT_TTL;
    for directive in cc.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return MIN_TTL;
        }
        if let Some(secs) = lower
            .strip_prefix("max-age=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            ttl = Duration::from_secs(secs).clamp(MIN_TTL, MAX_TTL);
        }
    }
    ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused() {
        let strict = AddressPolicy {
            allow_loopback: false,
        };
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378::1",
            "fec0::1",
            "100::1",
            "64:ff9b::a9fe:a9fe",
            "198.18.0.1",
            "192.88.99.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                strict.check(ip),
                Err(CimdError::Forbidden(ip.to_canonical())),
                "{ip}"
            );
        }
        assert!(strict.check("20.190.160.1".parse().unwrap()).is_ok());
        assert!(strict.check("2603:1030::1".parse().unwrap()).is_ok());
        let dev = AddressPolicy {
            allow_loopback: true,
        };
        assert!(dev.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(dev.check("10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn cache_lifetime_follows_cache_control() {
        let mut h = http::HeaderMap::new();
        assert_eq!(ttl_of(&h), DEFAULT_TTL);
        h.insert(
            http::header::CACHE_CONTROL,
            "public, max-age=600".parse().unwrap(),
        );
        assert_eq!(ttl_of(&h), Duration::from_secs(600));
        h.insert(
            http::header::CACHE_CONTROL,
            "max-age=999999".parse().unwrap(),
        );
        assert_eq!(ttl_of(&h), MAX_TTL);
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(ttl_of(&h), MIN_TTL);
    }

    #[test]
    fn urls_must_be_https_with_a_path() {
        let docs = MetadataDocuments::new(
            AddressPolicy {
                allow_loopback: false,
            },
            DEFAULT_CIMD_CACHE_CAPACITY,
        )
        .unwrap();
        assert!(
            docs.check_url("https://app.example.com/client.json")
                .is_ok()
        );
        for bad in [
            "http://app.example.com/client.json",
            "https://app.example.com/",
            "https://app.example.com",
            "https://u:p@app.example.com/c",
            "https://app.example.com/c#x",
            "https://127.0.0.1/c",
            "http://127.0.0.1/c",
            "https://[::1]/c",
            "https://169.254.169.254/latest/meta-data",
        ] {
            assert!(docs.check_url(bad).is_err(), "{bad}");
        }
    }
}
