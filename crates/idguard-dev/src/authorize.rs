//! The emulator's interactive sign-in: `GET /{tenant}/oauth2/v2.0/authorize` (authorization
//! code with PKCE) and, at the token endpoint, the `authorization_code` and `refresh_token`
//! grants, in Entra's documented formats.
//!
//! The confidential client is the dev API app (`api_client_id`); its redirect URIs are
//! registered at run time and compared exactly. Before the redirect URI is trusted, errors
//! are an HTML page (Entra's own error page, never a redirect); afterwards they redirect
//! with `error`, `error_description` (`AADSTS…: …`) and `state`.
//!
//! | case | answer |
//! |---|---|
//! | unknown tenant (authorize) | page, AADSTS90002 |
//! | missing or unknown `client_id` | page, AADSTS900144 / AADSTS700016 |
//! | missing or unregistered `redirect_uri` | page, AADSTS900971 / AADSTS50011 |
//! | `response_type` missing / not `code` | `invalid_request` AADSTS900144 / `unsupported_response_type` AADSTS70005 |
//! | `response_mode` other than `query` (emulator limit) | `invalid_request` AADSTS70007 |
//! | `scope` missing / unknown resource / unknown Graph scope | `invalid_request` AADSTS900144 / `invalid_resource` AADSTS500011 / `invalid_scope` AADSTS650053 |
//! | `code_challenge_method` not `S256` (absent means `plain`) | `invalid_request` AADSTS50149 |
//! | `code_challenge` not 43 base64url characters | `invalid_request` AADSTS501491 |
//! | `resource` not an Application ID URI of the app owning every scope | `invalid_target` AADSTS9010010 (Entra since 2026; AADSTS901002 is the older blanket refusal) |
//! | `claims` not a JSON object | `invalid_request` AADSTS90100 |
//! | `prompt=none` and nobody to sign in | `login_required` AADSTS50058 |
//! | user of another tenant than the path's | page, AADSTS50020 |
//! | [`DevSignInFailure`] | `access_denied` AADSTS65004; with `prompt=none`: `consent_required` AADSTS65001, `interaction_required` AADSTS50079 |
//!
//! At the token endpoint (JSON, `400` unless said): `client_id` not the dev API →
//! `unauthorized_client` AADSTS700016; the client credential exactly as for on-behalf-of
//! (`invalid_client`, `401`); a missing parameter → `invalid_request` AADSTS900144; an empty
//! `scope` with a code → `invalid_scope` AADSTS28003; an unknown or expired code →
//! `invalid_grant` AADSTS70008, a redeemed one → AADSTS54005, one from another tenant path →
//! AADSTS700005; `redirect_uri` unlike authorize's → AADSTS500112; a `code_verifier` that
//! does not hash to the challenge → AADSTS501481; scopes of two resources → `invalid_scope`
//! AADSTS28000; API scopes the user did not grant at authorize → AADSTS65001; an unknown
//! refresh token → `invalid_grant` AADSTS70000, a revoked one → AADSTS50173, one unused for
//! 90 days → AADSTS700082.
//!
//! Codes live ten minutes and are single use. Refresh tokens are opaque; each redemption
//! returns a new one and, as in Entra (which does not invalidate a redeemed refresh token
//! of a confidential client), the old one keeps working until revoked or unused for 90
//! days. Both stores are bounded: when full, expired entries go first, then the oldest.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use aws_lc_rs::{constant_time, digest};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::mint::pairwise_subject;
use super::obo::{
    GRAPH_APP_ID, GRAPH_DEFAULT_SCOPES, GRAPH_RESOURCE, MFA_CLAIMS, consent_required,
    downstream_token, invalid_grant, mfa_required, refuse_client, token_response, unix_now,
    unknown_client,
};
use super::server::{entra_error, unknown_tenant};
use super::{DEV_SCOPE, DevEndpoint, DevError, DevSignInFailure, DevUser, Shared, TokenMint};
use idguard::internals::escape;

/// `grant_type` of code redemption.
pub(crate) const AUTHORIZATION_CODE: &str = "authorization_code";
/// `grant_type` of refresh-token redemption.
pub(crate) const REFRESH_TOKEN: &str = "refresh_token";
/// How long a code may be redeemed (Entra: about ten minutes).
const CODE_LIFETIME: u64 = 600;
/// A refresh token unused this long has expired (Entra: 90 days).
const REFRESH_INACTIVITY: u64 = 90 * 24 * 3600;
const MAX_CODES: usize = 1024;
const MAX_REFRESH_TOKENS: usize = 4096;
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// The Graph permissions the emulator knows (a short scope name resolves to Graph).
const GRAPH_SCOPES: [&str; 9] = [
    "User.Read",
    "User.ReadBasic.All",
    "GroupMember.Read.All",
    "Group.Read.All",
    "Mail.Read",
    "Mail.Send",
    "Calendars.Read",
    "Files.Read",
    ".default",
];

pub(crate) fn routes(router: Router<std::sync::Arc<Shared>>) -> Router<std::sync::Arc<Shared>> {
    router.route(
        "/{tenant}/oauth2/v2.0/authorize",
        axum::routing::get(authorize),
    )
}

/// The sign-in state: registered redirect URIs, the default user, per-user failures,
/// outstanding codes and refresh tokens.
pub(crate) struct SignIn {
    redirect_uris: RwLock<Vec<String>>,
    default_user: RwLock<Option<String>>,
    /// By user object id.
    pub(crate) failures: Mutex<HashMap<String, DevSignInFailure>>,
    codes: Mutex<Bounded<Code>>,
    refresh_tokens: Mutex<Bounded<Grant>>,
}

impl std::fmt::Debug for SignIn {
    // Codes and refresh tokens are credentials: only their numbers show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("redirect_uris", &*read(&self.redirect_uris))
            .field("default_user", &*read(&self.default_user))
            .field("codes", &lock(&self.codes).entries.len())
            .field("refresh_tokens", &lock(&self.refresh_tokens).entries.len())
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SignIn {
    pub(crate) fn new(redirect_uris: Vec<String>) -> Self {
        Self {
            redirect_uris: RwLock::new(redirect_uris),
            default_user: RwLock::new(None),
            failures: Mutex::new(HashMap::new()),
            codes: Mutex::new(Bounded::new(MAX_CODES)),
            refresh_tokens: Mutex::new(Bounded::new(MAX_REFRESH_TOKENS)),
        }
    }

    pub(crate) fn allow_redirect_uri(&self, uri: String) {
        let mut all = self
            .redirect_uris
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !all.contains(&uri) {
            all.push(uri);
        }
    }

    pub(crate) fn set_default_user(&self, key: Option<String>) {
        *self
            .default_user
            .write()
            .unwrap_or_else(PoisonError::into_inner) = key;
    }

    /// Marks every refresh token of user `oid` revoked; returns how many.
    pub(crate) fn revoke(&self, oid: &str) -> usize {
        let mut store = lock(&self.refresh_tokens);
        let mut n = 0;
        for grant in store.entries.values_mut() {
            if grant.session.user_oid == oid && !grant.revoked {
                grant.revoked = true;
                n += 1;
            }
        }
        n
    }

    fn redirect_allowed(&self, uri: &str) -> bool {
        read(&self.redirect_uris).iter().any(|r| r == uri)
    }

    fn failure(&self, oid: &str) -> Option<DevSignInFailure> {
        lock(&self.failures).get(oid).copied()
    }

    /// Takes a code for redemption: it is spent whatever the redemption's outcome.
    fn take_code(&self, code: &str, now: u64) -> Result<Code, Refusal> {
        let mut store = lock(&self.codes);
        let entry = store.entries.get_mut(code).ok_or(Refusal::Unknown)?;
        if entry.expires_at <= now {
            return Err(Refusal::Expired);
        }
        if entry.redeemed {
            return Err(Refusal::Redeemed);
        }
        entry.redeemed = true;
        Ok(entry.clone())
    }

    /// Looks a refresh token up and records its use.
    fn use_refresh_token(&self, token: &str, now: u64) -> Result<Session, Refusal> {
        let mut store = lock(&self.refresh_tokens);
        let grant = store.entries.get_mut(token).ok_or(Refusal::Unknown)?;
        if grant.revoked {
            return Err(Refusal::Revoked);
        }
        if grant.expires_at() <= now {
            return Err(Refusal::Expired);
        }
        grant.last_used = now;
        Ok(grant.session.clone())
    }

    fn issue_code(&self, code: Code, now: u64) -> String {
        let handle = opaque();
        lock(&self.codes).insert(handle.clone(), code, now);
        handle
    }

    fn issue_refresh_token(&self, session: Session, now: u64) -> String {
        let handle = opaque();
        let grant = Grant {
            session,
            last_used: now,
            revoked: false,
        };
        lock(&self.refresh_tokens).insert(handle.clone(), grant, now);
        handle
    }
}

/// Why a code or refresh token was not accepted.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Unknown,
    Expired,
    Redeemed,
    Revoked,
}

/// An entry that stops being useful at some time.
trait Expiring {
    fn expires_at(&self) -> u64;
}

/// A map of at most `max` entries: inserting into a full one drops the expired entries,
/// then the one that expires first.
struct Bounded<T> {
    max: usize,
    entries: HashMap<String, T>,
}

impl<T: Expiring> Bounded<T> {
    fn new(max: usize) -> Self {
        Self {
            max,
            entries: HashMap::new(),
        }
    }

    fn insert(&mut self, key: String, value: T, now: u64) {
        if self.entries.len() >= self.max {
            self.entries.retain(|_, v| v.expires_at() > now);
        }
        if self.entries.len() >= self.max {
            let first = self
                .entries
                .iter()
                .min_by_key(|(_, v)| v.expires_at())
                .map(|(k, _)| k.clone());
            if let Some(k) = first {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, value);
    }
}

/// What a sign-in granted: carried by its code, then by its refresh tokens.
#[derive(Clone, Debug)]
struct Session {
    client_id: String,
    user_oid: String,
    tid: String,
    scopes: Scopes,
    claims: ClaimsRequest,
}

#[derive(Clone, Debug)]
struct Code {
    session: Session,
    redirect_uri: String,
    challenge: Option<String>,
    /// The tenant path segment of the authorize request, lower case.
    segment: String,
    nonce: Option<String>,
    /// Authorize had `prompt=consent`.
    consented: bool,
    expires_at: u64,
    redeemed: bool,
}

impl Expiring for Code {
    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

#[derive(Debug)]
struct Grant {
    session: Session,
    last_used: u64,
    revoked: bool,
}

impl Expiring for Grant {
    fn expires_at(&self) -> u64 {
        self.last_used + REFRESH_INACTIVITY
    }
}

/// An opaque credential: 256 random bits, base64url, with Entra's `0.` prefix look.
fn opaque() -> String {
    let bytes = [
        uuid::Uuid::new_v4().into_bytes(),
        uuid::Uuid::new_v4().into_bytes(),
    ]
    .concat();
    format!("0.A{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The PKCE S256 transform of `verifier`.
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

/// Requested scopes, sorted by resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Scopes {
    /// `openid`, `profile`, `email`, `offline_access`.
    oidc: Vec<String>,
    /// Short names on the dev API.
    api: Vec<String>,
    /// The identifier the client named the dev API by (`api://{id}`).
    api_form: Option<String>,
    /// Short names on Microsoft Graph.
    graph: Vec<String>,
}

impl Scopes {
    fn has_oidc(&self, name: &str) -> bool {
        self.oidc.iter().any(|s| s == name)
    }

    fn resources(&self) -> usize {
        usize::from(!self.api.is_empty()) + usize::from(!self.graph.is_empty())
    }
}

/// A scope naming something the emulator does not have.
#[derive(Debug, PartialEq, Eq)]
enum ScopeError {
    /// A resource other than the dev API and Graph (AADSTS500011).
    UnknownResource(String),
    /// A short (Graph) scope Graph does not have (AADSTS650053).
    UnknownGraphScope(String),
}

impl ScopeError {
    /// (`error`, code, text).
    fn describe(&self, tenant: &str) -> (&'static str, u32, String) {
        match self {
            Self::UnknownResource(r) => (
                "invalid_resource",
                500_011,
                format!(
                    "The resource principal named {r} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
                ),
            ),
            Self::UnknownGraphScope(name) => (
                "invalid_scope",
                650_053,
                format!(
                    "The application asked for scope '{name}' that doesn't exist on the resource '{GRAPH_APP_ID}'. Contact the app vendor."
                ),
            ),
        }
    }
}

/// The dev API's identifiers that may prefix its scopes: the client id, `api://{id}` and
/// the extra Application ID URIs.
fn is_api_identifier(s: &Shared, resource: &str) -> bool {
    resource.eq_ignore_ascii_case(&s.api_client_id) || is_api_uri(s, resource)
}

/// The dev API's Application ID URIs (what `resource` may be).
fn is_api_uri(s: &Shared, resource: &str) -> bool {
    resource.eq_ignore_ascii_case(&format!("api://{}", s.api_client_id))
        || s.identifier_uris
            .iter()
            .any(|u| u.eq_ignore_ascii_case(resource))
}

fn graph_name(name: &str) -> Result<String, ScopeError> {
    GRAPH_SCOPES
        .iter()
        .find(|g| g.eq_ignore_ascii_case(name))
        .map(|g| (*g).to_owned())
        .ok_or_else(|| ScopeError::UnknownGraphScope(name.to_owned()))
}

/// Sorts a space-separated `scope` by resource. A short name that is not an OpenID scope
/// is a Graph permission (as in Entra).
fn parse_scopes(s: &Shared, raw: &str) -> Result<Scopes, ScopeError> {
    let mut out = Scopes::default();
    for scope in raw.split(' ').filter(|v| !v.is_empty()) {
        if let Some(oidc) = OIDC_SCOPES.iter().find(|o| o.eq_ignore_ascii_case(scope)) {
            push_unique(&mut out.oidc, (*oidc).to_owned());
            continue;
        }
        match scope.rsplit_once('/') {
            None => push_unique(&mut out.graph, graph_name(scope)?),
            Some((resource, name)) if is_api_identifier(s, resource) => {
                out.api_form.get_or_insert_with(|| resource.to_owned());
                push_unique(&mut out.api, name.to_owned());
            }
            Some((resource, name))
                if resource.eq_ignore_ascii_case(GRAPH_RESOURCE)
                    || resource.eq_ignore_ascii_case(GRAPH_APP_ID) =>
            {
                push_unique(&mut out.graph, graph_name(name)?);
            }
            Some((resource, _)) => return Err(ScopeError::UnknownResource(resource.to_owned())),
        }
    }
    Ok(out)
}

fn push_unique(list: &mut Vec<String>, v: String) {
    if !list.contains(&v) {
        list.push(v);
    }
}

/// Entra's rule since 2026: `resource` must be an Application ID URI of the app that owns
/// every requested (non-OpenID) scope.
fn resource_matches(s: &Shared, resource: &str, scopes: &Scopes) -> bool {
    match (scopes.api.is_empty(), scopes.graph.is_empty()) {
        (false, true) => is_api_uri(s, resource),
        (true, false) => resource.eq_ignore_ascii_case(GRAPH_RESOURCE),
        _ => false,
    }
}

/// What an OpenID `claims` request asks of the access token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ClaimsRequest {
    polids: Vec<String>,
    acrs: Vec<String>,
    xms_cc: Vec<String>,
}

impl ClaimsRequest {
    /// `None` when `raw` is not a JSON object.
    fn parse(raw: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(raw).ok()?;
        v.as_object()?;
        let at = v.get("access_token");
        let values = |name: &str| -> Vec<String> {
            let Some(c) = at.and_then(|a| a.get(name)) else {
                return Vec::new();
            };
            let one = c.get("value").and_then(Value::as_str).map(str::to_owned);
            let many = c
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned);
            one.into_iter().chain(many).collect()
        };
        Some(Self {
            polids: values("polids"),
            acrs: values("acrs"),
            xms_cc: values("xms_cc"),
        })
    }

    /// Asks for the policy of [`MFA_CLAIMS`].
    fn satisfies_mfa(&self) -> bool {
        let mfa = Self::parse(MFA_CLAIMS).unwrap_or_default();
        !mfa.polids.is_empty() && mfa.polids.iter().all(|p| self.polids.contains(p))
    }
}

/// A user by key or sign-in name.
pub(crate) fn find_user<'a>(s: &'a Shared, hint: &str) -> Option<&'a DevUser> {
    s.users
        .iter()
        .find(|u| u.key == hint || u.upn.eq_ignore_ascii_case(hint))
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{body}\n</body></html>\n",
        escape(title)
    )
}

/// Entra's own error page: no redirect, since the redirect URI is not trusted (yet).
fn error_page(code: u32, text: &str) -> Response {
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
struct Back<'a> {
    redirect_uri: &'a str,
    state: Option<&'a str>,
}

impl Back<'_> {
    fn redirect(&self, pairs: &[(&str, &str)]) -> Response {
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

    fn error(&self, error: &str, code: u32, text: &str) -> Response {
        self.redirect(&[
            ("error", error),
            ("error_description", &format!("AADSTS{code}: {text}")),
        ])
    }
}

async fn authorize(
    State(s): State<std::sync::Arc<Shared>>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    s.count(DevEndpoint::Authorize);
    let segment = raw.to_ascii_lowercase();
    let multi = matches!(segment.as_str(), "organizations" | "common");
    if !multi && !s.knows_tenant(&segment) {
        return error_page(
            90_002,
            &format!(
                "Tenant '{raw}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    let param = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(client_id) = param("client_id") else {
        return error_page(
            900_144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    if client_id != s.api_client_id {
        return error_page(
            700_016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{raw}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        );
    }
    let Some(redirect_uri) = param("redirect_uri") else {
        return error_page(900_971, "No reply address provided.");
    };
    if !s.sign_in.redirect_allowed(redirect_uri) {
        return error_page(
            50_011,
            &format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal."
            ),
        );
    }
    // From here on, errors go back to the client.
    let back = Back {
        redirect_uri,
        state: param("state"),
    };
    let request = match check_request(&s, &raw, &param) {
        Ok(r) => r,
        Err((error, code, text)) => return back.error(error, code, &text),
    };
    let prompt = param("prompt").unwrap_or_default();
    let hint = param("login_hint");
    let default_user = read(&s.sign_in.default_user).clone();
    let Some(user) = hint
        .or(default_user.as_deref())
        .and_then(|k| find_user(&s, k))
    else {
        if prompt == "none" {
            return back.error(
                "login_required",
                50_058,
                "A silent sign-in request was sent but no user is signed in.",
            );
        }
        return user_picker(&s, &raw, &q, hint);
    };
    let tid = if multi {
        user.tenant_id.clone()
    } else {
        segment.clone()
    };
    if user.tenant_id != tid {
        return error_page(
            50_020,
            &format!(
                "User account '{}' from identity provider 'https://sts.windows.net/{}/' does not exist in tenant '{raw}' and cannot access the application '{client_id}' in that tenant.",
                user.upn, user.tenant_id
            ),
        );
    }
    match s.sign_in.failure(&user.object_id) {
        Some(DevSignInFailure::AccessDenied) => {
            return back.error(
                "access_denied",
                65_004,
                "User declined to consent to access the app.",
            );
        }
        Some(DevSignInFailure::ConsentRequired) if prompt == "none" => {
            return back.error(
                "consent_required",
                65_001,
                &format!(
                    "The user or administrator has not consented to use the application with ID '{client_id}'. Send an interactive authorization request for this user and resource."
                ),
            );
        }
        Some(DevSignInFailure::MfaRequired)
            if prompt == "none" && !request.claims.satisfies_mfa() =>
        {
            return back.error(
                "interaction_required",
                50_079,
                "Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multifactor authentication.",
            );
        }
        _ => {}
    }
    let now = unix_now();
    let code = s.sign_in.issue_code(
        Code {
            session: Session {
                client_id: client_id.to_owned(),
                user_oid: user.object_id.clone(),
                tid,
                scopes: request.scopes,
                claims: request.claims,
            },
            redirect_uri: redirect_uri.to_owned(),
            challenge: request.challenge,
            segment,
            nonce: param("nonce").map(str::to_owned),
            consented: prompt == "consent",
            expires_at: now + CODE_LIFETIME,
            redeemed: false,
        },
        now,
    );
    let session_state = uuid::Uuid::new_v4().to_string();
    back.redirect(&[("code", &code), ("session_state", &session_state)])
}

/// The parts of an authorize request checked after the redirect URI is trusted.
struct Request {
    scopes: Scopes,
    challenge: Option<String>,
    claims: ClaimsRequest,
}

/// Checks `response_type`, `response_mode`, `scope`, PKCE, `resource` and `claims`;
/// `Err` is (`error`, AADSTS code, text) for the error redirect.
fn check_request<'q>(
    s: &Shared,
    tenant: &str,
    param: &impl Fn(&str) -> Option<&'q str>,
) -> Result<Request, (&'static str, u32, String)> {
    let missing = |name: &str| {
        (
            "invalid_request",
            900_144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    match param("response_type") {
        None => return Err(missing("response_type")),
        Some("code") => {}
        Some(_) => {
            return Err((
                "unsupported_response_type",
                70_005,
                "The application requested an unsupported response type. The dev emulator issues only response_type=code.".to_owned(),
            ));
        }
    }
    if param("response_mode").is_some_and(|m| m != "query") {
        return Err((
            "invalid_request",
            70_007,
            "The application requested an unsupported value of 'response_mode'. The dev emulator answers only response_mode=query.".to_owned(),
        ));
    }
    let raw_scope = param("scope").ok_or_else(|| missing("scope"))?;
    let scopes = parse_scopes(s, raw_scope).map_err(|e| e.describe(tenant))?;
    if scopes.oidc.is_empty() && scopes.resources() == 0 {
        return Err((
            "invalid_scope",
            70_011,
            "The provided value for the input parameter 'scope' is not valid.".to_owned(),
        ));
    }
    let challenge = match (param("code_challenge"), param("code_challenge_method")) {
        (None, None) => None,
        (None, Some(_)) => return Err(missing("code_challenge")),
        (Some(challenge), method) => {
            // An absent method means `plain`, which the emulator refuses.
            if method != Some("S256") {
                return Err((
                    "invalid_request",
                    50_149,
                    "Invalid Code_Challenge_method parameter. The dev emulator accepts only S256."
                        .to_owned(),
                ));
            }
            let base64url = challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if challenge.len() != 43 || !base64url {
                return Err((
                    "invalid_request",
                    501_491,
                    "Invalid size of Code_Challenge parameter.".to_owned(),
                ));
            }
            Some(challenge.to_owned())
        }
    };
    if let Some(resource) = param("resource")
        && !resource_matches(s, resource, &scopes)
    {
        return Err(invalid_target());
    }
    let claims = match param("claims") {
        None => ClaimsRequest::default(),
        Some(raw) => ClaimsRequest::parse(raw).ok_or((
            "invalid_request",
            90_100,
            "claims parameter is empty or not valid.".to_owned(),
        ))?,
    };
    Ok(Request {
        scopes,
        challenge,
        claims,
    })
}

fn invalid_target() -> (&'static str, u32, String) {
    (
        "invalid_target",
        9_010_010,
        "The resource parameter provided in the request doesn't match with the requested scopes."
            .to_owned(),
    )
}

/// A page listing the users who can sign in here (a tenant's own users on its path, every
/// user on `organizations` and `common`), each a link to this authorize request with
/// `login_hint`.
fn user_picker(
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

fn missing_parameter(name: &str) -> Response {
    entra_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900_144,
        &format!("AADSTS900144: The request body must contain the following parameter: '{name}'."),
    )
}

fn error_json(error: &str, code: u32, text: &str) -> Response {
    entra_error(
        StatusCode::BAD_REQUEST,
        error,
        code,
        &format!("AADSTS{code}: {text}"),
    )
}

/// The tenant path and the client (id and credential) of a sign-in grant; `Err` is
/// Entra's refusal. `Ok` is the client's `azpacr`: `1` for a secret, `2` for an assertion.
fn check_client(
    s: &Shared,
    raw: &str,
    form: &HashMap<String, String>,
) -> Result<&'static str, Box<Response>> {
    let segment = raw.to_ascii_lowercase();
    if !matches!(segment.as_str(), "organizations" | "common") && !s.knows_tenant(&segment) {
        return Err(Box::new(unknown_tenant(raw)));
    }
    match form.get("client_id").map(String::as_str) {
        None | Some("") => return Err(Box::new(missing_parameter("client_id"))),
        Some(id) if id != s.api_client_id => return Err(Box::new(unknown_client())),
        Some(_) => {}
    }
    let endpoint = format!("{}/{segment}/oauth2/v2.0/token", s.base_url);
    if let Some(answer) = refuse_client(s, form, &endpoint) {
        return Err(Box::new(answer));
    }
    Ok(if form.contains_key("client_secret") {
        "1"
    } else {
        "2"
    })
}

/// Parses the token request's required `scope`; `empty_code` is the AADSTS code for a
/// present but empty value.
fn requested_scopes(
    s: &Shared,
    raw: &str,
    form: &HashMap<String, String>,
    empty_code: u32,
) -> Result<Scopes, Box<Response>> {
    let Some(scope) = form.get("scope") else {
        return Err(Box::new(missing_parameter("scope")));
    };
    if scope.trim().is_empty() {
        return Err(Box::new(if empty_code == 28_003 {
            error_json(
                "invalid_scope",
                28_003,
                "Provided value for the input parameter scope cannot be empty when requesting an access token using the provided authorization code. Please specify a valid scope.",
            )
        } else {
            missing_parameter("scope")
        }));
    }
    parse_scopes(s, scope).map_err(|e| {
        let (error, code, text) = e.describe(raw);
        Box::new(error_json(error, code, &text))
    })
}

/// What both sign-in grants check first: the tenant path and client, the grant's handle
/// (form field `handle`) and the required `scope`. `Ok` is (`azpacr`, handle, scopes).
fn grant_request<'f>(
    s: &Shared,
    raw: &str,
    form: &'f HashMap<String, String>,
    handle: &str,
    empty_scope_code: u32,
) -> Result<(&'static str, &'f str, Scopes), Box<Response>> {
    let azpacr = check_client(s, raw, form)?;
    let value = form
        .get(handle)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Box::new(missing_parameter(handle)))?;
    let requested = requested_scopes(s, raw, form, empty_scope_code)?;
    Ok((azpacr, value, requested))
}

/// `grant_type=authorization_code`.
pub(crate) fn redeem_code(s: &Shared, raw: &str, form: &HashMap<String, String>) -> Response {
    let (azpacr, code, requested) = match grant_request(s, raw, form, "code", 28_003) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let code = match s.sign_in.take_code(code, unix_now()) {
        Ok(c) => c,
        Err(Refusal::Redeemed) => {
            return invalid_grant(
                54_005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            );
        }
        Err(_) => {
            return invalid_grant(
                70_008,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            );
        }
    };
    if code.segment != raw.to_ascii_lowercase() {
        return invalid_grant(
            700_005,
            "Provided Authorization Code is intended to use against other tenant, thus rejected.",
        );
    }
    let Some(redirect_uri) = field("redirect_uri") else {
        return missing_parameter("redirect_uri");
    };
    if redirect_uri != code.redirect_uri {
        return invalid_grant(
            500_112,
            &format!(
                "The reply address '{redirect_uri}' does not match the reply address '{}' provided when requesting Authorization code.",
                code.redirect_uri
            ),
        );
    }
    if let Some(challenge) = &code.challenge {
        let Some(verifier) = field("code_verifier") else {
            return missing_parameter("code_verifier");
        };
        if constant_time::verify_slices_are_equal(s256(verifier).as_bytes(), challenge.as_bytes())
            .is_err()
        {
            return invalid_grant(
                501_481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            );
        }
    }
    match s.sign_in.failure(&code.session.user_oid) {
        Some(DevSignInFailure::ConsentRequired) if !code.consented => return consent_required(s),
        Some(DevSignInFailure::MfaRequired) if !code.session.claims.satisfies_mfa() => {
            return mfa_required(s);
        }
        _ => {}
    }
    issue(
        s,
        &code.session,
        &requested,
        field("resource"),
        code.nonce.as_deref(),
        azpacr,
    )
}

/// `grant_type=refresh_token`.
pub(crate) fn redeem_refresh(s: &Shared, raw: &str, form: &HashMap<String, String>) -> Response {
    let (azpacr, token, requested) = match grant_request(s, raw, form, "refresh_token", 900_144) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let now = unix_now();
    let session = match s.sign_in.use_refresh_token(token, now) {
        Ok(session) => session,
        Err(Refusal::Revoked) => {
            return invalid_grant(
                50_173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.",
            );
        }
        Err(Refusal::Expired) => {
            return invalid_grant(
                700_082,
                "The refresh token has expired due to inactivity. The token was inactive for 90.00:00:00.",
            );
        }
        Err(_) => {
            return invalid_grant(
                70_000,
                "The provided value for the 'refresh_token' is not valid.",
            );
        }
    };
    if s.sign_in.failure(&session.user_oid) == Some(DevSignInFailure::MfaRequired)
        && !session.claims.satisfies_mfa()
    {
        return mfa_required(s);
    }
    issue(s, &session, &requested, field("resource"), None, azpacr)
}

/// Issues the access token for the one requested resource, a new refresh token when
/// `offline_access` was granted and an id token when `openid` was.
fn issue(
    s: &Shared,
    session: &Session,
    requested: &Scopes,
    resource: Option<&str>,
    nonce: Option<&str>,
    azpacr: &str,
) -> Response {
    if resource.is_some_and(|r| !resource_matches(s, r, requested)) {
        let (error, code, text) = invalid_target();
        return error_json(error, code, &text);
    }
    if requested.resources() > 1 {
        return error_json(
            "invalid_scope",
            28_000,
            "Provided value for the input parameter scope is not valid because it contains more than one resource.",
        );
    }
    let Some(user) = s.users.iter().find(|u| u.object_id == session.user_oid) else {
        return invalid_grant(70_000, "The user of this grant no longer exists.");
    };
    let issued = if requested.api.is_empty() {
        graph_token(s, session, requested)
    } else {
        api_token(s, session, requested, user, azpacr)
    };
    let (scope, access_token) = match issued {
        Ok(v) => v,
        Err(Issue::NotGranted) => return consent_required(s),
        Err(Issue::Signing) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let now = unix_now();
    let mut extra = Vec::new();
    if session.scopes.has_oidc("offline_access") {
        let refresh = s.sign_in.issue_refresh_token(session.clone(), now);
        extra.push(("refresh_token", json!(refresh)));
    }
    if session.scopes.has_oidc("openid") {
        match id_token(s, session, user, nonce, now) {
            Ok(t) => extra.push(("id_token", json!(t))),
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
    token_response(s, scope, access_token, extra)
}

enum Issue {
    /// API scopes the user did not grant at authorize.
    NotGranted,
    Signing,
}

impl From<DevError> for Issue {
    fn from(_: DevError) -> Self {
        Self::Signing
    }
}

/// A v2 user token for the dev API, as [`TokenMint`] makes them: `scp` the granted short
/// names, `azp` the redeeming client; `amr` gains `mfa` when the sign-in satisfied the MFA
/// policy, and `acrs`/`xms_cc` follow the `claims` request.
fn api_token(
    s: &Shared,
    session: &Session,
    requested: &Scopes,
    user: &DevUser,
    azpacr: &str,
) -> Result<(String, String), Issue> {
    let granted = &session.scopes.api;
    let names: Vec<String> = if requested.api.iter().any(|n| n == ".default") {
        let all: Vec<String> = granted
            .iter()
            .filter(|n| *n != ".default")
            .cloned()
            .collect();
        if all.is_empty() {
            vec![DEV_SCOPE.to_owned()]
        } else {
            all
        }
    } else {
        requested.api.clone()
    };
    let open = granted.iter().any(|n| n == ".default");
    if !open && names.iter().any(|n| !granted.contains(n)) {
        return Err(Issue::NotGranted);
    }
    let lifetime = s
        .downstream_lifetime
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut mint = TokenMint::user(s, user.clone())
        .scopes(names.clone())
        .lifetime(Duration::from_secs(lifetime))
        .claim("azp", session.client_id.clone())
        .claim("azpacr", azpacr);
    if session.claims.satisfies_mfa() && !user.auth_methods.iter().any(|m| m == "mfa") {
        let mut amr = user.auth_methods.clone();
        amr.push("mfa".to_owned());
        mint = mint.auth_methods(amr);
    }
    if !session.claims.acrs.is_empty() {
        mint = mint.acrs(session.claims.acrs.clone());
    }
    if !session.claims.xms_cc.is_empty() {
        mint = mint.client_capabilities(session.claims.xms_cc.clone());
    }
    let token = mint.mint()?;
    let form = requested
        .api_form
        .clone()
        .unwrap_or_else(|| format!("api://{}", s.api_client_id));
    let scope: Vec<String> = names.iter().map(|n| format!("{form}/{n}")).collect();
    Ok((scope.join(" "), token))
}

/// A Graph token, as on-behalf-of issues them; with only OpenID scopes, `User.Read`.
fn graph_token(
    s: &Shared,
    session: &Session,
    requested: &Scopes,
) -> Result<(String, String), Issue> {
    let scp = if requested.graph.is_empty() {
        "User.Read".to_owned()
    } else if requested.graph.iter().any(|n| n == ".default") {
        GRAPH_DEFAULT_SCOPES.to_owned()
    } else {
        requested.graph.join(" ")
    };
    let token = downstream_token(s, &session.tid, &session.user_oid, GRAPH_RESOURCE, &scp)?;
    let scope: Vec<String> = scp
        .split(' ')
        .map(|n| format!("{GRAPH_RESOURCE}/{n}"))
        .collect();
    Ok((scope.join(" "), token))
}

/// A v2 id token for the client: `name` and `preferred_username` with `profile`, `email`
/// with `email`, `nonce` from authorize.
fn id_token(
    s: &Shared,
    session: &Session,
    user: &DevUser,
    nonce: Option<&str>,
    now: u64,
) -> Result<String, DevError> {
    let mut c = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        c.insert(k.to_owned(), v);
    };
    put("aud", json!(session.client_id));
    put("iss", json!(s.issuer_v2(&session.tid)));
    put("iat", json!(now));
    put("nbf", json!(now));
    put("exp", json!(now + 3600));
    put(
        "sub",
        json!(pairwise_subject(&user.object_id, &session.client_id)),
    );
    put("oid", json!(user.object_id));
    put("tid", json!(session.tid));
    put("ver", json!("2.0"));
    put("uti", json!(uuid::Uuid::new_v4().to_string()));
    if session.scopes.has_oidc("profile") {
        put("name", json!(user.name));
        put("preferred_username", json!(user.upn));
    }
    if session.scopes.has_oidc("email") {
        put("email", json!(user.upn));
    }
    if let Some(n) = nonce {
        put("nonce", json!(n));
    }
    s.sign(&Value::Object(c))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "tests fail loudly"
    )]

    use super::*;

    struct Entry(u64);

    impl Expiring for Entry {
        fn expires_at(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn bounded_drops_expired_then_oldest() {
        let mut b = Bounded::new(2);
        b.insert("a".into(), Entry(10), 0);
        b.insert("b".into(), Entry(20), 0);
        b.insert("c".into(), Entry(30), 0);
        assert!(!b.entries.contains_key("a"), "the first to expire goes");
        assert_eq!(b.entries.len(), 2);
        b.insert("d".into(), Entry(40), 25);
        assert!(!b.entries.contains_key("b"), "expired at 25");
        assert!(b.entries.contains_key("c") && b.entries.contains_key("d"));
    }

    #[test]
    fn s256_matches_rfc_7636_example() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn claims_request_reads_value_and_values() {
        let c = ClaimsRequest::parse(
            r#"{"access_token":{"acrs":{"essential":true,"value":"c1"},"xms_cc":{"values":["cp1"]}}}"#,
        )
        .unwrap();
        assert_eq!(c.acrs, ["c1"]);
        assert_eq!(c.xms_cc, ["cp1"]);
        assert!(!c.satisfies_mfa());
        assert!(ClaimsRequest::parse(MFA_CLAIMS).unwrap().satisfies_mfa());
        assert!(ClaimsRequest::parse("not json").is_none());
        assert!(ClaimsRequest::parse("[1]").is_none());
    }

    #[test]
    fn opaque_handles_differ() {
        assert_ne!(opaque(), opaque());
        assert!(opaque().len() > 40);
    }

    #[test]
    fn escape_covers_markup() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
