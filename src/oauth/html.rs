//! The proxy's pages (consent, errors) and cookies.
//!
//! Pages are small, static HTML with every value escaped; they may not be framed
//! (`X-Frame-Options: DENY`, CSP `frame-ancestors 'none'`), run no script, and are never
//! cached. Cookies are `__Host-` (so `Secure`, `Path=/`, no `Domain`), `HttpOnly` and
//! `SameSite=Lax`.

use std::fmt::Write as _;
use std::time::Duration;

use axum::response::{Html, IntoResponse, Response};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};

use super::keys::digest_b64;

/// The cookie carrying the browser's CSRF nonce for the consent form.
pub(crate) const CSRF_COOKIE: &str = "__Host-idguard-csrf";

/// The cookie binding this browser's consent to one Entra leg (`state`).
pub(crate) fn binding_cookie(state: &str) -> String {
    let short: String = digest_b64(state).chars().take(16).collect();
    format!("__Host-idguard-consent-{short}")
}

/// Escapes text for HTML element content and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#222}\
code{background:#f3f3f3;padding:0 .25rem;word-break:break-all}li{margin:.25rem 0}\
button{font-size:1rem;padding:.5rem 1.25rem;margin-right:.5rem}.warn{color:#8a4b00}";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head>\
         <body>{body}</body></html>",
        escape(title)
    );
    let mut res = (status, Html(html)).into_response();
    let h = res.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// A page explaining why the sign-in stopped (no redirect: the target is not trusted).
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Sign-in stopped",
        &format!("<h1>Sign-in stopped</h1><p>{}</p>", escape(message)),
    )
}

/// What the consent page shows.
pub(crate) struct Consent<'a> {
    pub(crate) client_name: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) metadata_document: bool,
    pub(crate) redirect_uri: &'a str,
    pub(crate) scopes: &'a [String],
    pub(crate) downstream: &'a [String],
    /// The MCP server the user is about to let the client use.
    pub(crate) resource: &'a str,
    pub(crate) txn: &'a str,
    pub(crate) csrf: &'a str,
}

/// The per-client consent page: who asks, where the answer goes, what it grants.
pub(crate) fn consent_page(c: &Consent<'_>) -> Response {
    let host = url::Url::parse(c.redirect_uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let loopback = url::Url::parse(c.redirect_uri)
        .ok()
        .and_then(|u| u.host().map(|h| super::client::is_loopback_host(&h)))
        .unwrap_or(false);
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Allow {name}?</h1><p><strong>{name}</strong> wants to use the MCP server \
         <code>{server}</code> as you.</p>",
        name = escape(c.client_name),
        server = escape(c.resource)
    );
    if c.metadata_document {
        let _ = write!(
            body,
            "<p>Client described at <code>{}</code>.</p>",
            escape(c.client_id)
        );
        let client_host = url::Url::parse(c.client_id)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        if !loopback && client_host.as_deref() != Some(host.as_str()) {
            let _ = write!(
                body,
                "<p class=\"warn\">The answer goes to <strong>{}</strong>, not to the host that \
                 describes this client.</p>",
                escape(&host)
            );
        }
    } else {
        body.push_str(
            "<p>This client registered itself; idguard has not verified who runs it.</p>",
        );
    }
    let _ = write!(
        body,
        "<p>After you approve, you are sent to <strong>{}</strong>:<br><code>{}</code></p>",
        escape(&host),
        escape(c.redirect_uri)
    );
    if loopback {
        body.push_str(
            "<p class=\"warn\">That address is on this computer. Approve only if you just started \
             the sign-in from an application here.</p>",
        );
    }
    body.push_str("<p>It will be able to:</p><ul>");
    for s in c.scopes.iter().chain(c.downstream) {
        let _ = write!(body, "<li><code>{}</code></li>", escape(s));
    }
    body.push_str("</ul>");
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/consent\">\
         <input type=\"hidden\" name=\"txn\" value=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        escape(c.txn),
        escape(c.csrf)
    );
    page(StatusCode::OK, "Allow access?", &body)
}

/// Entra says an administrator must consent first: show the link to do so.
pub(crate) fn admin_consent_page(url: &str) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Administrator consent required",
        &format!(
            "<h1>Administrator consent required</h1><p>Your organization has not approved this \
             server's access yet. An administrator can grant it here:</p>\
             <p><a href=\"{u}\">{u}</a></p><p>Then start signing in again.</p>",
            u = escape(url)
        ),
    )
}

/// The value of cookie `name` in the request.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Adds a `__Host-` cookie to the response.
pub(crate) fn set_cookie(res: &mut Response, name: &str, value: &str, max_age: Duration) {
    let cookie = format!(
        "{name}={value}; Max-Age={}; Path=/; Secure; HttpOnly; SameSite=Lax",
        max_age.as_secs()
    );
    if let Ok(v) = HeaderValue::try_from(cookie) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Expires cookie `name`.
pub(crate) fn clear_cookie(res: &mut Response, name: &str) {
    set_cookie(res, name, "", Duration::ZERO);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>"x"&'y'</script>"#),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-idguard-csrf=n0nce; b=2"),
        );
        assert_eq!(cookie_value(&h, CSRF_COOKIE), Some("n0nce"));
        assert_eq!(cookie_value(&h, "__Host-idguard"), None);
    }
}
