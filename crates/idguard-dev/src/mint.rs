//! Minting access tokens in Entra's v1 and v2 shapes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::{DEV_CLIENT_APP_ID, DEV_SCOPE, DevApp, DevError, DevUser, Shared, issuer_v1};
use idguard::TokenVersion;

enum Subject {
    User(DevUser),
    App(DevApp),
}

/// A token being minted. Start with [`DevEntra::token_for`](super::DevEntra::token_for) or
/// [`DevEntra::app_token`](super::DevEntra::app_token), adjust, then [`mint`](Self::mint).
///
/// Everything can be overridden, including into invalid tokens, which is what tests of a
/// validator need: [`claim`](Self::claim), [`remove_claim`](Self::remove_claim) and
/// [`header`](Self::header) apply last.
#[must_use]
pub struct TokenMint<'a> {
    shared: &'a Shared,
    subject: Subject,
    version: TokenVersion,
    tenant: Option<String>,
    audience: Option<String>,
    scopes: Option<Vec<String>>,
    roles: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    groups_overage: bool,
    auth_methods: Option<Vec<String>>,
    client_capabilities: Vec<String>,
    acrs: Vec<String>,
    lifetime: Duration,
    issued_at: Option<u64>,
    kid: Option<String>,
    claims: Map<String, Value>,
    removed: Vec<String>,
    header: Map<String, Value>,
}

impl std::fmt::Debug for TokenMint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMint")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<'a> TokenMint<'a> {
    fn new(shared: &'a Shared, subject: Subject) -> Self {
        Self {
            shared,
            subject,
            version: TokenVersion::V2,
            tenant: None,
            audience: None,
            scopes: None,
            roles: None,
            groups: None,
            groups_overage: false,
            auth_methods: None,
            client_capabilities: Vec::new(),
            acrs: Vec::new(),
            lifetime: Duration::from_secs(3600),
            issued_at: None,
            kid: None,
            claims: Map::new(),
            removed: Vec::new(),
            header: Map::new(),
        }
    }

    pub(crate) fn user(shared: &'a Shared, user: DevUser) -> Self {
        Self::new(shared, Subject::User(user))
    }

    pub(crate) fn app(shared: &'a Shared, app: DevApp) -> Self {
        Self::new(shared, Subject::App(app))
    }

    /// v1 or v2 shape (default v2).
    pub fn version(mut self, version: TokenVersion) -> Self {
        self.version = version;
        self
    }

    /// Issue for another tenant than the subject's home tenant (`tid` and `iss`).
    pub fn tenant(mut self, tid: impl Into<String>) -> Self {
        self.tenant = Some(tid.into());
        self
    }

    /// `aud` (default: the API's client id in v2, `api://{client id}` in v1).
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audience = Some(aud.into());
        self
    }

    /// Delegated scopes (`scp`), default [`DEV_SCOPE`]. An empty list leaves `scp` out.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// App roles (`roles`), default the subject's.
    pub fn roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.roles = Some(roles.into_iter().map(Into::into).collect());
        self
    }

    /// Group ids (`groups`), default the user's.
    pub fn groups<I: IntoIterator<Item = S>, S: Into<String>>(mut self, groups: I) -> Self {
        self.groups = Some(groups.into_iter().map(Into::into).collect());
        self
    }

    /// Leave out `groups` and emit the overage indicator (`_claim_names`/`_claim_sources`)
    /// as Entra does for users in more than 200 groups.
    pub fn groups_overage(mut self) -> Self {
        self.groups_overage = true;
        self
    }

    /// Authentication methods (`amr`), default the user's.
    pub fn auth_methods<I: IntoIterator<Item = S>, S: Into<String>>(mut self, amr: I) -> Self {
        self.auth_methods = Some(amr.into_iter().map(Into::into).collect());
        self
    }

    /// Client capabilities (`xms_cc`), e.g. `["cp1"]`.
    pub fn client_capabilities<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        caps: I,
    ) -> Self {
        self.client_capabilities = caps.into_iter().map(Into::into).collect();
        self
    }

    /// Satisfied authentication contexts (`acrs`).
    pub fn acrs<I: IntoIterator<Item = S>, S: Into<String>>(mut self, acrs: I) -> Self {
        self.acrs = acrs.into_iter().map(Into::into).collect();
        self
    }

    /// Lifetime from `iat` to `exp` (default one hour).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// `iat` and `nbf` (seconds since the epoch; default now).
    pub fn issued_at(mut self, unix_secs: u64) -> Self {
        self.issued_at = Some(unix_secs);
        self
    }

    /// Sign with this key (default: the active key). Unpublished keys work too.
    pub fn key(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// Sets or overrides a claim, after everything else.
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// Removes a claim, after everything else.
    pub fn remove_claim(mut self, name: impl Into<String>) -> Self {
        self.removed.push(name.into());
        self
    }

    /// Sets or overrides a header field (e.g. `kid`, `alg`), after everything else. The
    /// signature is still RS256 by the chosen key.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.header.insert(name.into(), value.into());
        self
    }

    /// The claims this mint would sign.
    pub fn claims(&self) -> Map<String, Value> {
        let now = self.issued_at.unwrap_or_else(unix_now);
        let exp = now + self.lifetime.as_secs();
        let api = self.shared.api_client_id.as_str();
        let v2 = self.version == TokenVersion::V2;
        let (home, oid) = match &self.subject {
            Subject::User(u) => (&u.tenant_id, &u.object_id),
            Subject::App(a) => (&a.tenant_id, &a.object_id),
        };
        let tid = self.tenant.as_deref().unwrap_or(home);
        let iss = if v2 {
            self.shared.issuer_v2(tid)
        } else {
            issuer_v1(tid)
        };
        let aud = self.audience.clone().unwrap_or_else(|| {
            if v2 {
                api.to_owned()
            } else {
                format!("api://{api}")
            }
        });
        let mut c = Map::new();
        let mut put = |k: &str, v: Value| {
            c.insert(k.to_owned(), v);
        };
        put("aud", json!(aud));
        put("iss", json!(iss));
        put("iat", json!(now));
        put("nbf", json!(now));
        put("exp", json!(exp));
        put("tid", json!(tid));
        put("oid", json!(oid));
        put("uti", json!(random_id()));
        put("ver", json!(if v2 { "2.0" } else { "1.0" }));
        let (client_claim, acr_claim) = if v2 {
            ("azp", "azpacr")
        } else {
            ("appid", "appidacr")
        };
        match &self.subject {
            Subject::User(u) => {
                put(client_claim, json!(DEV_CLIENT_APP_ID));
                put(acr_claim, json!("0"));
                put("sub", json!(pairwise_subject(oid, api)));
                put("name", json!(u.name));
                if v2 {
                    put("preferred_username", json!(u.upn));
                } else {
                    put("upn", json!(u.upn));
                    put("unique_name", json!(u.upn));
                    put("acr", json!("1"));
                }
                let scopes = self
                    .scopes
                    .clone()
                    .unwrap_or_else(|| vec![DEV_SCOPE.to_owned()]);
                if !scopes.is_empty() {
                    put("scp", json!(scopes.join(" ")));
                }
                put(
                    "amr",
                    json!(
                        self.auth_methods
                            .clone()
                            .unwrap_or_else(|| u.auth_methods.clone())
                    ),
                );
                let roles = self.roles.clone().unwrap_or_else(|| u.roles.clone());
                if !roles.is_empty() {
                    put("roles", json!(roles));
                }
                if self.groups_overage {
                    put("_claim_names", json!({"groups": "src1"}));
                    put(
                        "_claim_sources",
                        json!({"src1": {"endpoint": format!(
                            "https://graph.windows.net/{tid}/users/{oid}/getMemberObjects"
                        )}}),
                    );
                } else {
                    let groups = self.groups.clone().unwrap_or_else(|| u.groups.clone());
                    if !groups.is_empty() {
                        put("groups", json!(groups));
                    }
                }
            }
            Subject::App(a) => {
                put(client_claim, json!(a.app_id));
                put(acr_claim, json!("1"));
                put("sub", json!(oid));
                put("idtyp", json!("app"));
                let roles = self.roles.clone().unwrap_or_else(|| a.roles.clone());
                if !roles.is_empty() {
                    put("roles", json!(roles));
                }
            }
        }
        if !self.client_capabilities.is_empty() {
            put("xms_cc", json!(self.client_capabilities));
        }
        if !self.acrs.is_empty() {
            put("acrs", json!(self.acrs));
        }
        for (k, v) in &self.claims {
            c.insert(k.clone(), v.clone());
        }
        for k in &self.removed {
            c.remove(k);
        }
        c
    }

    /// Signs and returns the compact JWT.
    ///
    /// # Errors
    ///
    /// [`DevError::UnknownKey`] for a `kid` the emulator never made, or a signing error.
    pub fn mint(self) -> Result<String, DevError> {
        let claims = self.claims();
        let key = {
            let ring = self
                .shared
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let kid = self.kid.as_deref().unwrap_or(&ring.active);
            ring.find(kid)
                .cloned()
                .ok_or_else(|| DevError::UnknownKey(kid.to_owned()))?
        };
        let mut header = Map::new();
        header.insert("typ".into(), json!("JWT"));
        header.insert("alg".into(), json!("RS256"));
        if self.version == TokenVersion::V1 {
            header.insert("x5t".into(), json!(key.kid));
        }
        header.insert("kid".into(), json!(key.kid));
        for (k, v) in self.header {
            header.insert(k, v);
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string())
        );
        let sig = key.sign(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Entra's `sub` is pairwise: stable per (user, application), opaque.
pub(crate) fn pairwise_subject(oid: &str, app: &str) -> String {
    let d = digest::digest(&digest::SHA256, format!("{oid}|{app}").as_bytes());
    URL_SAFE_NO_PAD.encode(d.as_ref())
}

fn random_id() -> String {
    URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}
