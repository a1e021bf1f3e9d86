//! Microsoft Graph on behalf of the caller: `/me`, and group membership for tokens with a
//! groups overage (`_claim_names.groups` instead of `groups`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::client::{OboClient, backoff, retry_after};
use super::{GRAPH_API, OboError};
use crate::principal::Principal;
use crate::token::BearerToken;

/// How long a profile or a resolved membership is reused.
const GRAPH_TTL: Duration = Duration::from_secs(5 * 60);
/// The longest `Retry-After` idguard waits out itself; longer ones are passed on.
const MAX_GRAPH_WAIT: Duration = Duration::from_secs(5);
/// `checkMemberGroups` takes at most 20 ids per request.
const CHECK_CHUNK: usize = 20;

type UserKey = (String, String);

pub(crate) struct Graph {
    base: String,
    overage: Option<Vec<String>>,
    profiles: moka::future::Cache<UserKey, Arc<Value>>,
    groups: moka::future::Cache<UserKey, Membership>,
}

/// Resolved groups, kept for [`GRAPH_TTL`] but never past the token they were resolved for.
#[derive(Clone)]
struct Membership {
    groups: Arc<[String]>,
    ttl: Duration,
}

struct MembershipExpiry;

impl moka::Expiry<UserKey, Membership> for MembershipExpiry {
    fn expire_after_create(
        &self,
        _key: &UserKey,
        value: &Membership,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl Graph {
    pub(crate) fn new(base: String, overage: Option<Vec<String>>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            overage,
            profiles: user_cache(),
            groups: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(MembershipExpiry)
                .build(),
        }
    }
}

fn user_cache<V: Clone + Send + Sync + 'static>() -> moka::future::Cache<UserKey, V> {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(GRAPH_TTL)
        .build()
}

fn user_key(p: &Principal) -> UserKey {
    (p.tenant_id().to_owned(), p.object_id().to_owned())
}

impl OboClient {
    /// The caller's Graph profile (`GET /v1.0/me`), cached per (tenant, object id) for five
    /// minutes. Uses the API named `graph`.
    ///
    /// # Errors
    ///
    /// [`OboError`] from the exchange or from Graph.
    pub async fn graph_me(
        &self,
        principal: &Principal,
        assertion: &BearerToken,
    ) -> Result<Value, OboError> {
        let g = &self.inner.graph;
        let value = g
            .profiles
            .try_get_with(user_key(principal), async {
                let token = self.token_for(principal, assertion, GRAPH_API).await?;
                let url = format!("{}/v1.0/me", g.base);
                self.graph_call(token.expose_secret(), &url, None)
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone())?;
        Ok(Value::clone(&value))
    }

    /// The caller's group ids from Graph: transitive membership, or, when the policies'
    /// group ids are configured (`obo.overage_group_ids`), `checkMemberGroups` for those.
    /// Cached per (tenant, object id) for five minutes, never past the caller's token.
    ///
    /// # Errors
    ///
    /// [`OboError`] from the exchange or from Graph.
    pub async fn member_groups(
        &self,
        principal: &Principal,
        assertion: &BearerToken,
    ) -> Result<Arc<[String]>, OboError> {
        let g = &self.inner.graph;
        g.groups
            .try_get_with(user_key(principal), async {
                let token = self.token_for(principal, assertion, GRAPH_API).await?;
                let token = token.expose_secret();
                let groups = match g.overage.as_deref() {
                    Some(ids) if !ids.is_empty() => self.check_member_groups(token, ids).await?,
                    _ => self.transitive_groups(token).await?,
                };
                let left = principal.expires_at().saturating_sub(self.unix_now());
                Ok::<_, OboError>(Membership {
                    groups: Arc::from(groups),
                    ttl: GRAPH_TTL.min(Duration::from_secs(left)),
                })
            })
            .await
            .map(|m| m.groups)
            .map_err(|e| (*e).clone())
    }

    /// Whether overage resolution is configured.
    pub(crate) fn resolves_overage(&self) -> bool {
        self.inner.graph.overage.is_some()
    }

    /// `principal` with its groups from Graph when its token has a groups overage.
    pub(crate) async fn resolve_overage(
        &self,
        principal: &Principal,
        assertion: &BearerToken,
    ) -> Result<Principal, OboError> {
        if !principal.groups_overage() || principal.is_app_only() {
            return Ok(principal.clone());
        }
        let groups = self.member_groups(principal, assertion).await?;
        Ok(principal.with_resolved_groups(groups.to_vec()))
    }

    async fn transitive_groups(&self, token: &str) -> Result<Vec<String>, OboError> {
        let base = &self.inner.graph.base;
        let mut url =
            format!("{base}/v1.0/me/transitiveMemberOf/microsoft.graph.group?$select=id&$top=999");
        let mut out = Vec::new();
        loop {
            let page = self.graph_call(token, &url, None).await?;
            out.extend(
                page.get("value")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.get("id").and_then(Value::as_str))
                    .map(str::to_owned),
            );
            match page.get("@odata.nextLink").and_then(Value::as_str) {
                // Follow only links to the configured Graph: the token goes with them.
                Some(next) if next.starts_with(&format!("{base}/")) => next.clone_into(&mut url),
                Some(_) => return Err(OboError::Graph { status: 502 }),
                None => return Ok(out),
            }
        }
    }

    async fn check_member_groups(
        &self,
        token: &str,
        ids: &[String],
    ) -> Result<Vec<String>, OboError> {
        let url = format!("{}/v1.0/me/checkMemberGroups", self.inner.graph.base);
        let mut out = Vec::new();
        for chunk in ids.chunks(CHECK_CHUNK) {
            let reply = self
                .graph_call(token, &url, Some(json!({ "groupIds": chunk })))
                .await?;
            out.extend(
                reply
                    .get("value")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned),
            );
        }
        Ok(out)
    }

    /// One Graph request (GET, or POST with a JSON body), honouring `Retry-After` on `429`
    /// and `503`/`504` (waiting it out when short), retrying `5xx` with backoff.
    async fn graph_call(
        &self,
        token: &str,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, OboError> {
        let mut attempt = 0;
        loop {
            let req = match &body {
                Some(b) => self.http().post(url).json(b),
                None => self.http().get(url),
            };
            let res = req.bearer_auth(token).send().await;
            let (wait, error) = match res {
                Ok(res) if res.status().is_success() => {
                    return res
                        .json()
                        .await
                        .map_err(|_| OboError::Unavailable("graph (unreadable reply)".into()));
                }
                Ok(res) => {
                    let status = res.status().as_u16();
                    let wait = retry_after(res.headers());
                    match status {
                        429 | 503 | 504 => (
                            Some(wait.unwrap_or_else(|| backoff(attempt))),
                            if status == 429 {
                                OboError::Throttled {
                                    retry_after: wait.unwrap_or(Duration::from_secs(5)),
                                }
                            } else {
                                OboError::Unavailable("graph".into())
                            },
                        ),
                        s if s >= 500 => (
                            Some(backoff(attempt)),
                            OboError::Unavailable("graph".into()),
                        ),
                        s => (None, OboError::Graph { status: s }),
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "idguard::obo", error = %e.without_url(), attempt, "graph unreachable");
                    (
                        Some(backoff(attempt)),
                        OboError::Unavailable("graph".into()),
                    )
                }
            };
            match wait {
                Some(w) if attempt < self.inner.max_retries && w <= MAX_GRAPH_WAIT => {
                    tracing::debug!(target: "idguard::obo", wait_ms = w.as_millis() as u64, attempt, "graph asked to wait; retrying");
                    tokio::time::sleep(w).await;
                    attempt += 1;
                }
                _ => return Err(error),
            }
        }
    }
}
