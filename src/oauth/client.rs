//! MCP clients of the proxy: dynamic registration (RFC 7591), the stateless client ids
//! that carry a registration, and the redirect-URI rules.
//!
//! A registered client's id *is* its registration, sealed with the proxy key
//! ([`Purpose::Client`]): replicas need no shared client table, a tampered id does not
//! open, and rotating the key retires old registrations once the old key is removed.

use serde::{Deserialize, Serialize};

use super::keys::{ProxyKeys, Purpose};

/// Largest registration request body.
pub(crate) const MAX_REGISTRATION_BYTES: usize = 16 * 1024;
const MAX_REDIRECT_URIS: usize = 10;
const MAX_URI_BYTES: usize = 2000;
/// All redirect URIs of a registration together: keeps client ids (which carry them, and
/// which pending sign-ins store) small.
const MAX_TOTAL_URI_BYTES: usize = 4096;
/// Query parameters the proxy adds to redirects; a registered URI may not carry them.
const RESERVED_PARAMS: [&str; 5] = ["code", "state", "iss", "error", "error_description"];
const MAX_NAME_CHARS: usize = 120;

/// A client the proxy knows: registered, or described by a metadata document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Client {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) redirect_uris: Vec<String>,
    /// A client-id metadata document (the id is its URL).
    pub(crate) metadata_document: bool,
}

/// What a sealed client id holds.
#[derive(Serialize, Deserialize)]
struct Sealed {
    v: u8,
    n: String,
    r: Vec<String>,
    t: String,
    iat: u64,
}

/// The RFC 7591 request fields idguard reads (others are ignored, as the RFC allows).
#[derive(Debug, Deserialize)]
pub(crate) struct RegistrationRequest {
    redirect_uris: Option<Vec<String>>,
    client_name: Option<String>,
    application_type: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
}

impl RegistrationRequest {
    /// The redirect URIs asked for (none if absent).
    pub(crate) fn redirect_uris(&self) -> &[String] {
        self.redirect_uris.as_deref().unwrap_or_default()
    }
}

/// An RFC 7591 §3.2.2 error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RegistrationError {
    pub(crate) code: &'static str,
    pub(crate) description: String,
}

fn metadata_error(description: impl Into<String>) -> RegistrationError {
    RegistrationError {
        code: "invalid_client_metadata",
        description: description.into(),
    }
}

fn redirect_error(description: impl Into<String>) -> RegistrationError {
    RegistrationError {
        code: "invalid_redirect_uri",
        description: description.into(),
    }
}

/// The registration answer (RFC 7591 §3.2.1).
#[derive(Debug, Serialize)]
pub(crate) struct Registered {
    client_id: String,
    client_id_issued_at: u64,
    client_name: String,
    redirect_uris: Vec<String>,
    application_type: String,
    grant_types: [&'static str; 2],
    response_types: [&'static str; 1],
    token_endpoint_auth_method: &'static str,
}

/// Checks a registration request and issues the sealed client id.
pub(crate) fn register(
    keys: &ProxyKeys,
    req: RegistrationRequest,
    now: u64,
) -> Result<Registered, RegistrationError> {
    let uris = req
        .redirect_uris
        .filter(|u| !u.is_empty())
        .ok_or_else(|| redirect_error("`redirect_uris` is required"))?;
    if uris.len() > MAX_REDIRECT_URIS {
        return Err(redirect_error(format!(
            "at most {MAX_REDIRECT_URIS} redirect URIs"
        )));
    }
    if uris.iter().map(String::len).sum::<usize>() > MAX_TOTAL_URI_BYTES {
        return Err(redirect_error(format!(
            "the redirect URIs total more than {MAX_TOTAL_URI_BYTES} bytes"
        )));
    }
    for uri in &uris {
        check_redirect_uri(uri).map_err(redirect_error)?;
    }
    let application_type = req.application_type.unwrap_or_else(|| "web".to_owned());
    if !matches!(application_type.as_str(), "web" | "native") {
        return Err(metadata_error(
            "`application_type` must be `web` or `native`",
        ));
    }
    if let Some(grants) = &req.grant_types
        && grants
            .iter()
            .any(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return Err(metadata_error(
            "`grant_types` may only hold `authorization_code` and `refresh_token`",
        ));
    }
    if let Some(types) = &req.response_types
        && types.iter().any(|t| t != "code")
    {
        return Err(metadata_error("`response_types` may only hold `code`"));
    }
    // Clients are public (PKCE); a request for a secret-based method is answered with
    // `none`, which RFC 7591 §3.2.1 allows the server to substitute.
    if let Some(method) = &req.token_endpoint_auth_method
        && !matches!(
            method.as_str(),
            "none" | "client_secret_post" | "client_secret_basic"
        )
    {
        return Err(metadata_error(
            "`token_endpoint_auth_method` must be `none` (public clients with PKCE)",
        ));
    }
    let name = req
        .client_name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "Unnamed MCP client".to_owned());
    if name.chars().count() > MAX_NAME_CHARS || !printable(&name) {
        return Err(metadata_error(format!(
            "`client_name` must be at most {MAX_NAME_CHARS} printable characters"
        )));
    }
    let sealed = Sealed {
        v: 1,
        n: name.clone(),
        r: uris.clone(),
        t: application_type.clone(),
        iat: now,
    };
    let json = serde_json::to_vec(&sealed).map_err(|e| metadata_error(e.to_string()))?;
    let client_id = keys
        .seal(Purpose::Client, b"", &json)
        .ok_or_else(|| metadata_error("cannot issue a client id"))?;
    Ok(Registered {
        client_id,
        client_id_issued_at: now,
        client_name: name,
        redirect_uris: uris,
        application_type,
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
        token_endpoint_auth_method: "none",
    })
}

/// The client a sealed id describes; `None` if it is not one of ours or was altered.
pub(crate) fn open_registered(keys: &ProxyKeys, client_id: &str) -> Option<Client> {
    let json = keys.open(Purpose::Client, b"", client_id)?;
    let sealed: Sealed = serde_json::from_slice(&json).ok()?;
    (sealed.v == 1).then(|| Client {
        id: client_id.to_owned(),
        name: sealed.n,
        redirect_uris: sealed.r,
        metadata_document: false,
    })
}

/// Text a consent page may show as is: no control characters, no invisible formatting
/// (bidirectional overrides, zero-width characters) that could disguise a name.
pub(crate) fn printable(text: &str) -> bool {
    !text.chars().any(|c| {
        c.is_control()
            || matches!(c,
                '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{00AD}' | '\u{061C}' | '\u{180E}')
    })
}

/// Whether `host` is a loopback host name or address.
pub(crate) fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// A redirect URI a client may register: `https`, or `http` on a loopback host; absolute,
/// without fragment or credentials.
pub(crate) fn check_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_URI_BYTES {
        return Err(format!(
            "a redirect URI is longer than {MAX_URI_BYTES} bytes"
        ));
    }
    let url = url::Url::parse(uri).map_err(|e| format!("`{uri}` is not an absolute URL: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("`{uri}` has a fragment"));
    }
    // Matching is by exact string, and the redirect goes where the parsed URL points:
    // the two must be the same text.
    if url.as_str() != uri {
        return Err(format!(
            "`{uri}` is not in canonical form (it would be sent as `{}`)",
            url.as_str()
        ));
    }
    if url
        .query_pairs()
        .any(|(k, _)| RESERVED_PARAMS.contains(&k.as_ref()))
    {
        return Err(format!(
            "`{uri}` carries a parameter the authorization response sets (code, state, iss, error)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{uri}` carries credentials"));
    }
    let host = url.host().ok_or_else(|| format!("`{uri}` has no host"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(&host) => Ok(()),
        _ => Err(format!(
            "`{uri}`: redirect URIs must be https, or http on a loopback address"
        )),
    }
}

/// Whether `presented` names the registered redirect URI: the exact string, or for a
/// loopback `http` URI the same URI on another port (RFC 8252 §7.3: native apps get an
/// ephemeral port).
pub(crate) fn redirect_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    let (Ok(r), Ok(p)) = (url::Url::parse(registered), url::Url::parse(presented)) else {
        return false;
    };
    r.scheme() == "http"
        && p.scheme() == "http"
        && r.host().is_some_and(|h| is_loopback_host(&h))
        && r.host_str() == p.host_str()
        && r.path() == p.path()
        && r.query() == p.query()
        && p.fragment().is_none()
        && p.username().is_empty()
        && p.password().is_none()
}

impl Client {
    /// The registered redirect URI `presented` names (`None`: refuse, never redirect).
    /// Without one, a client with a single registered URI gets that one.
    pub(crate) fn redirect_uri(&self, presented: Option<&str>) -> Option<String> {
        match presented {
            Some(p) => self
                .redirect_uris
                .iter()
                .any(|r| redirect_matches(r, p))
                .then(|| p.to_owned()),
            None => match self.redirect_uris.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ProxyKeys {
        ProxyKeys::new(&[b"0123456789abcdef0123456789abcdef"]).unwrap()
    }

    fn request(uris: &[&str]) -> RegistrationRequest {
        RegistrationRequest {
            redirect_uris: Some(uris.iter().map(|s| (*s).to_owned()).collect()),
            client_name: Some("Test client".into()),
            application_type: Some("native".into()),
            grant_types: None,
            response_types: None,
            token_endpoint_auth_method: Some("none".into()),
        }
    }

    #[test]
    fn a_registration_round_trips_through_its_client_id() {
        let k = keys();
        let reg = register(&k, request(&["http://127.0.0.1:33418/callback"]), 1).unwrap();
        let client = open_registered(&k, &reg.client_id).unwrap();
        assert_eq!(client.name, "Test client");
        assert_eq!(client.redirect_uris, ["http://127.0.0.1:33418/callback"]);
    }

    #[test]
    fn redirect_uris_are_https_or_loopback_http() {
        assert!(check_redirect_uri("https://app.example.com/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:8080/cb").is_ok());
        assert!(check_redirect_uri("http://[::1]/cb").is_ok());
        assert!(check_redirect_uri("http://localhost:3000/cb").is_ok());
        for bad in [
            "http://evil.example.com/cb",
            "javascript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "https://app.example.com/cb#frag",
            "https://user:pw@app.example.com/cb",
            "/relative",
            "https://app.example.com/a/../cb",
            "https://APP.example.com/cb",
            "https://app.example.com/cb?code=1",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
        let err = register(&keys(), request(&["http://evil.example.com/cb"]), 1).unwrap_err();
        assert_eq!(err.code, "invalid_redirect_uri");
    }

    #[test]
    fn only_loopback_ports_may_vary() {
        let r = "http://127.0.0.1:33418/callback";
        assert!(redirect_matches(r, "http://127.0.0.1:50000/callback"));
        assert!(!redirect_matches(r, "http://127.0.0.1:50000/other"));
        assert!(!redirect_matches(r, "http://localhost:33418/callback"));
        let h = "https://app.example.com/cb";
        assert!(redirect_matches(h, h));
        assert!(!redirect_matches(h, "https://app.example.com:444/cb"));
        assert!(!redirect_matches(h, "https://app.example.com/cb?x=1"));
        assert!(!redirect_matches(h, "https://app.example.com/cb/"));
    }
}
