//! Policy slicing: evaluate only the policies whose scope can match a request.
//!
//! Cedar's authorizer evaluates every policy it is given. A policy whose scope names another
//! action, another resource, or a principal group the caller is not in can never be
//! satisfied (nor fail), so leaving it out changes no decision. At load, each policy's scope
//! is indexed; per request, the slice for (action, resource, the caller's scope groups) is
//! built once and cached in the snapshot.

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint,
};
use moka::sync::Cache;

/// The narrowing a policy's scope allows.
#[derive(Debug)]
struct Scope {
    /// The principal must be this entity or in it; `None`: any principal.
    principal: Option<EntityUid>,
    /// One of these actions; `None`: any action.
    actions: Option<Vec<EntityUid>>,
    /// Exactly this resource; `None`: any (or an `in`/`is` scope, kept conservatively).
    resource: Option<EntityUid>,
}

/// Slice cache key: action, resource, and which principal scopes the caller matches.
type Key = (EntityUid, EntityUid, Vec<u64>);

#[derive(Debug)]
pub(crate) struct Slicer {
    policies: Vec<(Policy, Scope)>,
    /// Every distinct principal-scope entity, indexed for the key's bitset.
    principals: Vec<EntityUid>,
    slices: Cache<Key, Arc<PolicySet>, foldhash::fast::RandomState>,
}

impl Slicer {
    pub(crate) fn new(set: &PolicySet) -> Self {
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
                    },
                )
            })
            .collect();
        Self {
            policies,
            principals,
            slices: Cache::builder()
                .name("idguard-policy-slices")
                .max_capacity(20_000)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// The policies that can apply to `caller` (its uid and parents) doing `action` on
    /// `resource`.
    pub(crate) fn slice(
        &self,
        caller: &HashSet<EntityUid>,
        action: &EntityUid,
        resource: &EntityUid,
    ) -> Result<Arc<PolicySet>, String> {
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
        let chosen = self.policies.iter().filter(|(_, s)| {
            s.principal.as_ref().is_none_or(|p| caller.contains(p))
                && s.actions.as_ref().is_none_or(|a| a.contains(action))
                && s.resource.as_ref().is_none_or(|r| r == resource)
        });
        let set =
            PolicySet::from_policies(chosen.map(|(p, _)| p.clone())).map_err(|e| e.to_string())?;
        let set = Arc::new(set);
        self.slices.insert(key, set.clone());
        Ok(set)
    }
}
