//! The sign-in's HTML and redirects: Entra's own error page (for requests whose redirect
//! URI is not trusted), the user picker, and the redirect back to a trusted redirect URI
//! with a code or an error.

use std::collections::{BTreeMap, HashMap};

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use idguard::internals::escape;

use crate::shared::Shared;

/// A minimal HTML page.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{body}\n</body></html>\n",
        escape(title)
    )
}

/// Entra's own error page: no redirect, since the redirect URI is not trusted (yet).
pub(super) fn error_page(code: u32, text: &str) -> Response {
    let body = format!(
        "<h1>Sign in</h1>\n<p>Sorry, but we're having trouble signing you in.</p>\n<p id=\"error\">AADSTS{code}: {}</p>",
        escape(text)
    );
    (
        StatusCode::BAD_REQUEST,
        [(header::X_FRAME_OPTIONS, "DENY")],
        Html(page("Sign in to your account", &body)),
    )
        .into_response()
}

/// Answers to a trusted redirect URI.
pub(super) struct Back<'a> {
    pub(super) redirect_uri: &'a str,
    pub(super) state: Option<&'a str>,
}

impl Back<'_> {
    /// `302` to the redirect URI with `pairs` and `state`.
    pub(super) fn redirect(&self, pairs: &[(&str, &str)]) -> Response {
        let Ok(mut url) = reqwest::Url::parse(self.redirect_uri) else {
            return error_page(
                50_011,
                &format!(
                    "The redirect URI '{}' is not an absolute URI.",
                    self.redirect_uri
                ),
            );
        };
        {
            let mut query = url.query_pairs_mut();
            for (k, v) in pairs {
                query.append_pair(k, v);
            }
            if let Some(state) = self.state {
                query.append_pair("state", state);
            }
        }
        (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
    }

    /// The error redirect: `error`, `error_description` (`AADSTS{code}: {text}`), `state`.
    pub(super) fn error(&self, error: &str, code: u32, text: &str) -> Response {
        self.redirect(&[
            ("error", error),
            ("error_description", &format!("AADSTS{code}: {text}")),
        ])
    }
}
/// A page listing the users who can sign in here (a tenant's own users on its path, every
/// user on `organizations` and `common`), each a link to this authorize request with
/// `login_hint`.
pub(super) fn user_picker(
    s: &Shared,
    tenant: &str,
    query: &HashMap<String, String>,
    hint: Option<&str>,
) -> Response {
    let sorted: BTreeMap<&String, &String> = query
        .iter()
        .filter(|(k, _)| k.as_str() != "login_hint")
        .collect();
    let mut items = String::new();
    let multi = matches!(
        tenant.to_ascii_lowercase().as_str(),
        "organizations" | "common"
    );
    for user in s
        .users
        .iter()
        .filter(|u| multi || u.tenant_id.eq_ignore_ascii_case(tenant))
    {
        let Ok(mut url) =
            reqwest::Url::parse(&format!("{}/{tenant}/oauth2/v2.0/authorize", s.base_url))
        else {
            continue;
        };
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &sorted {
                q.append_pair(k, v);
            }
            q.append_pair("login_hint", &user.upn);
        }
        items.push_str(&format!(
            "<li><a href=\"{}\">{} ({})</a></li>\n",
            escape(url.as_str()),
            escape(&user.name),
            escape(&user.upn)
        ));
    }
    let notice = hint.map_or_else(String::new, |h| {
        format!(
            "<p>We couldn't find an account with the name {}.</p>\n",
            escape(h)
        )
    });
    let body = format!("<h1>Pick an account</h1>\n{notice}<ul>\n{items}</ul>");
    (
        StatusCode::OK,
        [(header::X_FRAME_OPTIONS, "DENY")],
        Html(page("Sign in to your account", &body)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use crate::builder::test_shared;
    use crate::{CONTOSO_TENANT_ID, DevEntra};

    async fn body(res: Response) -> String {
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn escape_covers_markup() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[tokio::test]
    async fn the_error_page_is_a_framed_off_400_with_the_code() {
        let res = error_page(50_011, "redirect <uri>");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()[header::X_FRAME_OPTIONS], "DENY");
        let html = body(res).await;
        assert!(html.contains("AADSTS50011: redirect &lt;uri&gt;"), "{html}");
        assert!(html.starts_with("<!DOCTYPE html>"));
    }

    #[test]
    fn back_redirects_with_the_pairs_and_the_state() {
        let back = Back {
            redirect_uri: "http://127.0.0.1:9/cb?keep=1",
            state: Some("s t"),
        };
        let res = back.redirect(&[("code", "0.Ax")]);
        assert_eq!(res.status(), StatusCode::FOUND);
        assert_eq!(
            res.headers()[header::LOCATION],
            "http://127.0.0.1:9/cb?keep=1&code=0.Ax&state=s+t"
        );
        let res = Back {
            redirect_uri: "http://127.0.0.1:9/cb",
            state: None,
        }
        .error("access_denied", 65_004, "no");
        let location = res.headers()[header::LOCATION].to_str().unwrap();
        assert_eq!(
            location,
            "http://127.0.0.1:9/cb?error=access_denied&error_description=AADSTS65004%3A+no"
        );
    }

    #[test]
    fn a_relative_redirect_uri_gets_the_error_page() {
        let res = Back {
            redirect_uri: "/cb",
            state: None,
        }
        .redirect(&[]);
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(res.headers().get(header::LOCATION).is_none());
    }

    #[tokio::test]
    async fn the_picker_lists_the_tenants_users_with_a_login_hint_each() {
        let s = test_shared(DevEntra::builder());
        let query: HashMap<String, String> = [
            ("client_id", "c"),
            ("login_hint", "mallory@contoso.example"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let res = user_picker(&s, CONTOSO_TENANT_ID, &query, Some("<mallory>"));
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::X_FRAME_OPTIONS], "DENY");
        let html = body(res).await;
        assert!(
            html.contains("Alice Admin") && html.contains("Bob Reader"),
            "{html}"
        );
        assert!(!html.contains("Carol"), "another tenant's user: {html}");
        assert!(
            html.contains("login_hint=alice%40contoso.example"),
            "{html}"
        );
        assert!(
            !html.contains("mallory%40"),
            "the old hint is replaced: {html}"
        );
        assert!(html.contains("the name &lt;mallory&gt;"), "{html}");

        let every = body(user_picker(&s, "organizations", &HashMap::new(), None)).await;
        assert!(every.contains("Carol Partner"), "{every}");
        assert!(!every.contains("couldn't find"), "{every}");
    }
}
