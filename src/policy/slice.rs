//! Policy slicing: evaluate only the policies whose scope can match a request.
//!
//! Cedar's authorizer evaluates every policy it is given. A policy whose scope names another
//! action, another resource, or a principal group the caller is not in can never be
//! satisfied (nor fail), so leaving it out changes no decision. At load, each policy's scope
//! is indexed; per request, the slice for (action, resource, the caller's scope groups) is
//! built once and cached in the snapshot.
//!
//! Each slice also records whether any of its policies reads something of the request
//! beyond the caller, action and resource (`context.arguments`, `context.now`, or `context`
//! in any way we do not recognise): decisions under a slice that does not can be cached per
//! (caller, item).

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint,
};
use moka::sync::Cache;

/// The narrowing a policy's scope allows.
#[derive(Clone, Debug)]
struct Scope {
    /// The principal must be this entity or in it; `None`: any principal.
    principal: Option<EntityUid>,
    /// One of these actions; `None`: any action.
    actions: Option<Vec<EntityUid>>,
    /// Exactly this resource; `None`: any (or an `in`/`is` scope, kept conservatively).
    resource: Option<EntityUid>,
    /// The policy reads per-request context (see [`reads_request`]).
    reads_request: bool,
}

/// The policies that can apply to one (caller, action, resource).
#[derive(Debug)]
pub(crate) struct Slice {
    pub(crate) set: PolicySet,
    /// Some policy in `set` reads per-request context: its decisions must not be reused.
    pub(crate) reads_request: bool,
}

/// Context attributes that are functions of the caller and the phase alone (see
/// `entities::requests`): `phase`, `mfa` (from `amr`), `client_app` (from `azp`).
const CALLER_CONTEXT: [&str; 3] = ["phase", "mfa", "client_app"];

/// True unless every use of `context` in the policy reads one of [`CALLER_CONTEXT`]
/// (`context.mfa`, `context has phase`). Anything else, `context.arguments`, `context.now`,
/// `context` as a whole, or a policy we cannot inspect, counts as reading the request.
pub(crate) fn reads_request(policy: &Policy) -> bool {
    policy
        .to_json()
        .map_or(true, |est| !only_caller_context(&est))
}

/// Walks a policy's JSON form (Cedar's EST): `context.a` is `{".": {"left": {"Var":
/// "context"}, "attr": "a"}}`, `context has a` the same under `"has"`.
fn only_caller_context(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            if m.len() == 1 {
                for op in [".", "has"] {
                    if let Some(Value::Object(access)) = m.get(op)
                        && access.len() == 2
                        && access
                            .get("left")
                            .and_then(|l| l.get("Var"))
                            .and_then(Value::as_str)
                            == Some("context")
                    {
                        return access
                            .get("attr")
                            .and_then(Value::as_str)
                            .is_some_and(|a| CALLER_CONTEXT.contains(&a));
                    }
                }
            }
            if m.get("Var").and_then(Value::as_str) == Some("context") {
                return false;
            }
            m.values().all(only_caller_context)
        }
        Value::Array(a) => a.iter().all(only_caller_context),
        _ => true,
    }
}

/// Slice cache key: action, resource, and which principal scopes the caller matches.
type Key = (EntityUid, EntityUid, Vec<u64>);

#[derive(Debug)]
pub(crate) struct Slicer {
    policies: Vec<(Policy, Scope)>,
    /// Every distinct principal-scope entity, indexed for the key's bitset.
    principals: Vec<EntityUid>,
    slices: Cache<Key, Arc<Slice>, foldhash::fast::RandomState>,
}

/// A slice cache holding at most `capacity` slices.
fn slice_cache(capacity: u64) -> Cache<Key, Arc<Slice>, foldhash::fast::RandomState> {
    Cache::builder()
        .name("idguard-policy-slices")
        .max_capacity(capacity)
        .build_with_hasher(foldhash::fast::RandomState::default())
}

impl Slicer {
    /// Indexes `set`, caching at most `capacity` slices.
    pub(crate) fn new(set: &PolicySet, capacity: u64) -> Self {
        let mut principals: Vec<EntityUid> = Vec::new();
        let policies = set
            .policies()
            .map(|p| {
                let principal = match p.principal_constraint() {
                    PrincipalConstraint::In(e)
                    | PrincipalConstraint::Eq(e)
                    | PrincipalConstraint::IsIn(_, e) => Some(e),
                    PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
                };
                if let Some(e) = &principal
                    && !principals.contains(e)
                {
                    principals.push(e.clone());
                }
                let actions = match p.action_constraint() {
                    ActionConstraint::Any => None,
                    ActionConstraint::Eq(a) => Some(vec![a]),
                    ActionConstraint::In(all) => Some(all),
                };
                let resource = match p.resource_constraint() {
                    ResourceConstraint::Eq(r) => Some(r),
                    _ => None,
                };
                (
                    p.clone(),
                    Scope {
                        principal,
                        actions,
                        resource,
                        reads_request: reads_request(p),
                    },
                )
            })
            .collect();
        Self {
            policies,
            principals,
            slices: slice_cache(capacity),
        }
    }

    /// How many slices the cache holds at most.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> Option<u64> {
        self.slices.policy().max_capacity()
    }

    /// The same index with an empty cache of at most `capacity` slices.
    pub(crate) fn resized(&self, capacity: u64) -> Self {
        Self {
            policies: self.policies.clone(),
            principals: self.principals.clone(),
            slices: slice_cache(capacity),
        }
    }

    /// The policies that can apply to `caller` (its uid and parents) doing `action` on
    /// `resource`.
    pub(crate) fn slice(
        &self,
        caller: &HashSet<EntityUid>,
        action: &EntityUid,
        resource: &EntityUid,
    ) -> Result<Arc<Slice>, String> {
        let mut bits = vec![0u64; self.principals.len().div_ceil(64)];
        for (i, p) in self.principals.iter().enumerate() {
            if caller.contains(p)
                && let Some(word) = bits.get_mut(i / 64)
            {
                *word |= 1 << (i % 64);
            }
        }
        let key = (action.clone(), resource.clone(), bits);
        if let Some(set) = self.slices.get(&key) {
            return Ok(set);
        }
        let chosen: Vec<&(Policy, Scope)> = self
            .policies
            .iter()
            .filter(|(_, s)| {
                s.principal.as_ref().is_none_or(|p| caller.contains(p))
                    && s.actions.as_ref().is_none_or(|a| a.contains(action))
                    && s.resource.as_ref().is_none_or(|r| r == resource)
            })
            .collect();
        let reads_request = chosen.iter().any(|(_, s)| s.reads_request);
        let set = PolicySet::from_policies(chosen.into_iter().map(|(p, _)| p.clone()))
            .map_err(|e| e.to_string())?;
        let slice = Arc::new(Slice { set, reads_request });
        self.slices.insert(key, slice.clone());
        Ok(slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn reads(src: &str) -> bool {
        reads_request(&Policy::from_str(src).unwrap())
    }

    #[test]
    fn caller_context_is_not_the_request() {
        for src in [
            "permit (principal, action, resource);",
            r#"permit (principal in Role::"R", action, resource) when { resource.read_only };"#,
            "forbid (principal, action, resource) when { context.phase == \"call\" } unless { context.mfa };",
            "permit (principal, action, resource) when { context has client_app && context.client_app == \"x\" };",
        ] {
            assert!(!reads(src), "{src}");
        }
    }

    #[test]
    fn arguments_time_and_whole_context_are_the_request() {
        for src in [
            "forbid (principal, action, resource) when { context has arguments };",
            "forbid (principal, action, resource) when { context has arguments.amount && context.arguments.amount > 1 };",
            "forbid (principal, action, resource) when { context.now > 0 };",
            "permit (principal, action, resource) when { context == {} };",
            "permit (principal, action, resource) when { {a: context}.a.phase == \"call\" };",
            "permit (principal, action, resource) when { context.phase == \"call\" && context.now > 0 };",
            "permit (principal, action, resource) when { context[\"arguments\"] == {} };",
        ] {
            assert!(reads(src), "{src}");
        }
    }
}
