//! OpenID Connect discovery (`.well-known/openid-configuration`).

use serde::Deserialize;

use crate::error::StartupError;

/// The fields of an Entra discovery document that idguard uses.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct OpenIdMetadata {
    /// The issuer, or for `organizations`/`common` the `{tenantid}` template.
    pub(crate) issuer: String,
    /// Where the signing keys are published.
    pub(crate) jwks_uri: String,
}

/// Fetches and parses a discovery document.
pub(crate) async fn fetch_metadata(
    client: &reqwest::Client,
    url: &str,
) -> Result<OpenIdMetadata, StartupError> {
    let fail = |reason: String| StartupError::Discovery {
        url: url.to_owned(),
        reason,
    };
    let res = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(format!("request failed: {}", without_url(&e))))?;
    let status = res.status();
    if !status.is_success() {
        return Err(fail(format!("status {status}")));
    }
    let doc: OpenIdMetadata = res
        .json()
        .await
        .map_err(|e| fail(format!("not a discovery document: {}", without_url(&e))))?;
    if doc.issuer.is_empty() || doc.jwks_uri.is_empty() {
        return Err(fail("`issuer` or `jwks_uri` is empty".into()));
    }
    Ok(doc)
}

/// The body of `res`, at most `max` bytes: `Err` with the reason when it is longer or the
/// read fails (an answer from another server is never read without a bound).
pub(crate) async fn body_capped(mut res: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| format!("reading the body failed: {}", without_url(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(format!("the answer is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error's message without the URL it repeats.
pub fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(&format!(" ({url})"), "");
        msg = msg.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
