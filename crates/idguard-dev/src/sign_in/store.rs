//! The sign-in state: registered redirect URIs, the default user, per-user failures, and
//! the outstanding codes and refresh tokens (opaque handles in bounded stores).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::claims::ClaimsRequest;
use super::scopes::Scopes;
use crate::DevSignInFailure;

/// How long a code may be redeemed (Entra: about ten minutes).
pub(super) const CODE_LIFETIME: u64 = 600;
/// A refresh token unused this long has expired (Entra: 90 days).
const REFRESH_INACTIVITY: u64 = 90 * 24 * 3600;
const MAX_CODES: usize = 1024;
const MAX_REFRESH_TOKENS: usize = 4096;

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

    /// Whether `uri` is a registered redirect URI (compared exactly).
    pub(super) fn redirect_allowed(&self, uri: &str) -> bool {
        read(&self.redirect_uris).iter().any(|r| r == uri)
    }

    /// Who authorize signs in without a `login_hint` (`None`: the user picker).
    pub(super) fn default_user(&self) -> Option<String> {
        read(&self.default_user).clone()
    }

    /// How sign-in fails for user `oid`, if it does.
    pub(super) fn failure(&self, oid: &str) -> Option<DevSignInFailure> {
        lock(&self.failures).get(oid).copied()
    }

    /// Takes a code for redemption: it is spent whatever the redemption's outcome.
    pub(super) fn take_code(&self, code: &str, now: u64) -> Result<Code, Refusal> {
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
    pub(super) fn use_refresh_token(&self, token: &str, now: u64) -> Result<Session, Refusal> {
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

    /// Stores `code`; returns its handle.
    pub(super) fn issue_code(&self, code: Code, now: u64) -> String {
        let handle = opaque();
        lock(&self.codes).insert(handle.clone(), code, now);
        handle
    }

    /// Stores a refresh token for `session`; returns its handle.
    pub(super) fn issue_refresh_token(&self, session: Session, now: u64) -> String {
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
pub(super) enum Refusal {
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
pub(super) struct Session {
    pub(super) client_id: String,
    pub(super) user_oid: String,
    pub(super) tid: String,
    pub(super) scopes: Scopes,
    pub(super) claims: ClaimsRequest,
}

/// An authorization code: the sign-in it grants and what authorize bound it to.
#[derive(Clone, Debug)]
pub(super) struct Code {
    pub(super) session: Session,
    pub(super) redirect_uri: String,
    /// The PKCE S256 `code_challenge`.
    pub(super) challenge: Option<String>,
    /// The tenant path segment of the authorize request, lower case.
    pub(super) segment: String,
    pub(super) nonce: Option<String>,
    /// Authorize had `prompt=consent`.
    pub(super) consented: bool,
    pub(super) expires_at: u64,
    pub(super) redeemed: bool,
}

impl Expiring for Code {
    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

/// A refresh token: the sign-in it carries on, when it was last used, whether it is revoked.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    struct Entry(u64);

    impl Expiring for Entry {
        fn expires_at(&self) -> u64 {
            self.0
        }
    }

    fn session(oid: &str) -> Session {
        Session {
            client_id: "client".to_owned(),
            user_oid: oid.to_owned(),
            tid: "tenant".to_owned(),
            scopes: Scopes::default(),
            claims: ClaimsRequest::default(),
        }
    }

    fn code(expires_at: u64) -> Code {
        Code {
            session: session("user"),
            redirect_uri: "http://127.0.0.1:9/cb".to_owned(),
            challenge: None,
            segment: "tenant".to_owned(),
            nonce: None,
            consented: false,
            expires_at,
            redeemed: false,
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
    fn opaque_handles_differ() {
        assert_ne!(opaque(), opaque());
        assert!(opaque().len() > 40);
    }

    #[test]
    fn a_code_is_spent_by_its_first_redemption() {
        let store = SignIn::new(Vec::new());
        let handle = store.issue_code(code(100), 0);
        assert_eq!(store.take_code(&handle, 50).unwrap().expires_at, 100);
        assert_eq!(store.take_code(&handle, 51).unwrap_err(), Refusal::Redeemed);
        assert_eq!(
            store.take_code("0.Aother", 51).unwrap_err(),
            Refusal::Unknown
        );
    }

    #[test]
    fn an_expired_code_is_refused_and_stays_unspent() {
        let store = SignIn::new(Vec::new());
        let handle = store.issue_code(code(100), 0);
        assert_eq!(store.take_code(&handle, 100).unwrap_err(), Refusal::Expired);
        assert_eq!(store.take_code(&handle, 200).unwrap_err(), Refusal::Expired);
    }

    #[test]
    fn a_refresh_token_expires_unused_and_each_use_renews_it() {
        let store = SignIn::new(Vec::new());
        let token = store.issue_refresh_token(session("user"), 0);
        let later = REFRESH_INACTIVITY - 1;
        assert_eq!(
            store.use_refresh_token(&token, later).unwrap().user_oid,
            "user"
        );
        assert!(
            store
                .use_refresh_token(&token, later + REFRESH_INACTIVITY - 1)
                .is_ok(),
            "the use at `later` renewed it"
        );
        assert_eq!(
            store
                .use_refresh_token(&token, later + 3 * REFRESH_INACTIVITY)
                .unwrap_err(),
            Refusal::Expired
        );
        assert_eq!(
            store.use_refresh_token("0.Aother", 0).unwrap_err(),
            Refusal::Unknown
        );
    }

    #[test]
    fn revoking_refuses_that_users_tokens_once_and_no_one_elses() {
        let store = SignIn::new(Vec::new());
        let first = store.issue_refresh_token(session("a"), 0);
        let _second = store.issue_refresh_token(session("a"), 0);
        let other = store.issue_refresh_token(session("b"), 0);
        assert_eq!(store.revoke("a"), 2);
        assert_eq!(store.revoke("a"), 0, "already revoked");
        assert_eq!(
            store.use_refresh_token(&first, 1).unwrap_err(),
            Refusal::Revoked
        );
        assert!(store.use_refresh_token(&other, 1).is_ok());
        let fresh = store.issue_refresh_token(session("a"), 1);
        assert!(store.use_refresh_token(&fresh, 2).is_ok());
    }

    #[test]
    fn redirect_uris_are_compared_exactly_and_registered_once() {
        let store = SignIn::new(vec!["http://127.0.0.1:9/cb".to_owned()]);
        store.allow_redirect_uri("http://127.0.0.1:9/cb".to_owned());
        store.allow_redirect_uri("http://localhost:9/cb".to_owned());
        assert!(store.redirect_allowed("http://127.0.0.1:9/cb"));
        assert!(store.redirect_allowed("http://localhost:9/cb"));
        assert!(!store.redirect_allowed("http://127.0.0.1:9/cb/"));
        assert!(!store.redirect_allowed("HTTP://127.0.0.1:9/cb"));
        assert_eq!(read(&store.redirect_uris).len(), 2);
    }

    #[test]
    fn debug_shows_how_many_credentials_not_which() {
        let store = SignIn::new(Vec::new());
        let handle = store.issue_code(code(100), 0);
        store.set_default_user(Some("alice".to_owned()));
        assert_eq!(store.default_user().as_deref(), Some("alice"));
        let text = format!("{store:?}");
        assert!(text.contains("codes: 1"), "{text}");
        assert!(!text.contains(&handle), "{text}");
    }
}
