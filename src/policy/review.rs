//! Reviewing policies as a whole: who may see and use what ([`matrix`]), and what a change
//! of the policies changes ([`diff`]). `idguard policy matrix` and `idguard policy diff`
//! print them.
//!
//! Both look at a [`Catalog`]: callers ([`Subject`]s: the callers of the policy test cases
//! and any given in a principals file) and items (the tools of a `tools/list` result, and
//! the resources and prompts the test cases name). Every caller is decided against every
//! item in the list phase and in the call phase (without arguments); [`diff`] also replays
//! the test cases that carry tool arguments, since policies on arguments only show there.
//!
//! ```
//! use idguard::policy::PolicyEngine;
//! use idguard::policy::review::{Catalog, diff};
//!
//! let schema = include_str!("../../policies/schema.cedarschema");
//! let old = PolicyEngine::from_sources(schema, None, [("a.cedar",
//!     r#"@id("readers") permit (principal in Role::"Reader", action == Action::"call_tool", resource) when { resource.read_only };"#)])?;
//! let new = PolicyEngine::from_sources(schema, None, [("a.cedar",
//!     r#"@id("readers") permit (principal in Role::"Reader", action == Action::"call_tool", resource);"#)])?;
//! let mut catalog = Catalog::new();
//! catalog.add_subject("reader", serde_json::json!({"tid": "t", "oid": "r", "roles": ["Reader"]}))?;
//! catalog.add_tools(&serde_json::json!({"tools": [
//!     {"name": "search", "annotations": {"readOnlyHint": true}},
//!     {"name": "delete"}
//! ]}));
//! let flips = diff(&old, &new, &catalog);
//! // `delete` becomes visible and callable; `search` does not change.
//! assert_eq!(flips.len(), 2);
//! assert!(flips.iter().all(|f| catalog.items()[f.item].id() == "delete" && f.after.is_allow()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cases::{self, CaseError, NamedCallers};
use super::{Decision, Item, Phase, PolicyEngine, ToolInfo};
use crate::principal::Principal;

/// A caller to decide for, with a label for people.
#[derive(Debug, Clone)]
pub struct Subject {
    /// How reports name the caller (`bob`, `alice (no mfa)`, `caller {roles=[]}`).
    pub label: String,
    /// The caller's token claims (unvalidated: a description, not a credential).
    pub claims: Map<String, Value>,
    principal: Principal,
}

impl Subject {
    /// A caller described by token claims.
    ///
    /// # Errors
    ///
    /// A message when the claims do not describe a caller.
    pub fn new(label: impl Into<String>, claims: Map<String, Value>) -> Result<Self, String> {
        let principal = Principal::from_unvalidated_claims(&Value::Object(claims.clone()))
            .map_err(|e| format!("caller: {e}"))?;
        Ok(Self {
            label: label.into(),
            claims,
            principal,
        })
    }

    /// The caller as policies see it.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
}

/// A test case's call with arguments, replayed by [`diff`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CaseCall {
    /// The case name.
    pub name: String,
    /// Index into [`Catalog::subjects`].
    pub subject: usize,
    /// Index into [`Catalog::items`].
    pub item: usize,
    /// The tool arguments.
    pub arguments: Map<String, Value>,
}

/// Callers and items to decide about.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    subjects: Vec<Subject>,
    items: Vec<Item>,
    calls: Vec<CaseCall>,
}

/// One entry of a principals file (`[[principal]]` in TOML, or a JSON array).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    name: Option<String>,
    user: Option<String>,
    #[serde(default)]
    claims: Map<String, Value>,
    mfa: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalFile {
    #[serde(default)]
    principal: Vec<PrincipalEntry>,
}

impl Catalog {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The callers, in the order added.
    pub fn subjects(&self) -> &[Subject] {
        &self.subjects
    }

    /// The items, in the order added.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The test cases' calls with arguments.
    pub fn calls(&self) -> &[CaseCall] {
        &self.calls
    }

    /// Adds a caller described by `claims` (a JSON object); one with the same claims as a
    /// caller already added is that caller. Returns its index.
    ///
    /// # Errors
    ///
    /// A message when `claims` is not an object or does not describe a caller.
    pub fn add_subject(
        &mut self,
        label: impl Into<String>,
        claims: Value,
    ) -> Result<usize, String> {
        let Value::Object(claims) = claims else {
            return Err("caller: the claims are not a JSON object".into());
        };
        if let Some(i) = self.subjects.iter().position(|s| s.claims == claims) {
            return Ok(i);
        }
        let mut label = label.into();
        if self.subjects.iter().any(|s| s.label == label) {
            let n = (2..)
                .find(|n| {
                    !self
                        .subjects
                        .iter()
                        .any(|s| s.label == format!("{label} #{n}"))
                })
                .unwrap_or_default();
            label = format!("{label} #{n}");
        }
        self.subjects.push(Subject::new(label, claims)?);
        Ok(self.subjects.len() - 1)
    }

    /// Adds an item; one with the same action and id as an item already added is that item.
    /// Returns its index.
    pub fn add_item(&mut self, item: Item) -> usize {
        if let Some(i) = self
            .items
            .iter()
            .position(|i| i.action() == item.action() && i.id() == item.id())
        {
            return i;
        }
        self.items.push(item);
        self.items.len() - 1
    }

    /// Adds the tools of a `tools/list` result (`{"tools": [...]}`, a whole JSON-RPC reply,
    /// or a bare array). Returns how many tools it held.
    pub fn add_tools(&mut self, list: &Value) -> usize {
        let tools = list
            .get("result")
            .unwrap_or(list)
            .get("tools")
            .or(Some(list))
            .and_then(Value::as_array);
        let tools: Vec<ToolInfo> = tools
            .into_iter()
            .flatten()
            .filter_map(ToolInfo::from_mcp)
            .collect();
        let n = tools.len();
        for tool in tools {
            self.add_item(Item::Tool(tool));
        }
        n
    }

    /// Adds the callers and items of the test cases in `dir/tests/*.toml`, and their calls
    /// with arguments.
    ///
    /// # Errors
    ///
    /// [`CaseError`] when a case file cannot be read, or names a caller that cannot be made.
    pub fn add_cases(&mut self, dir: &Path, callers: &NamedCallers) -> Result<(), CaseError> {
        for request in cases::case_requests(dir)? {
            let claims = cases::caller_claims(
                callers,
                request.user.as_deref(),
                &request.claims,
                request.mfa,
            )
            .and_then(|claims| {
                let label = case_label(request.user.as_deref(), &request.claims, request.mfa);
                self.add_subject(label, Value::Object(claims))
            });
            let subject = claims.map_err(|message| CaseError::File {
                file: format!("{}/tests/{}", dir.display(), request.file),
                message: format!("case `{}`: {message}", request.name),
            })?;
            let item = self.add_item(request.item);
            if let (Phase::Call, Some(arguments)) = (request.phase, request.arguments) {
                let known = self
                    .calls
                    .iter()
                    .any(|c| c.subject == subject && c.item == item && c.arguments == arguments);
                if known {
                    continue;
                }
                self.calls.push(CaseCall {
                    name: request.name,
                    subject,
                    item,
                    arguments,
                });
            }
        }
        Ok(())
    }

    /// Adds the callers of a principals file: TOML with `[[principal]]` tables, or JSON (an
    /// array of the same entries). Each entry has optional `name`, `user` (a dev emulator
    /// user), `claims` (merged over the user's) and `mfa`.
    ///
    /// # Errors
    ///
    /// [`CaseError::File`] when the file cannot be read or an entry cannot be made.
    pub fn add_principals_file(
        &mut self,
        path: &Path,
        callers: &NamedCallers,
    ) -> Result<(), CaseError> {
        let fail = |message: String| CaseError::File {
            file: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let entries = if path.extension().is_some_and(|e| e == "json") {
            match serde_json::from_str::<Value>(&text).map_err(|e| fail(e.to_string()))? {
                Value::Array(a) => serde_json::from_value::<Vec<PrincipalEntry>>(Value::Array(a)),
                other => serde_json::from_value::<PrincipalFile>(other).map(|f| f.principal),
            }
            .map_err(|e| fail(e.to_string()))?
        } else {
            toml::from_str::<PrincipalFile>(&text)
                .map_err(|e| fail(e.to_string()))?
                .principal
        };
        for (n, entry) in entries.into_iter().enumerate() {
            let label = entry
                .name
                .clone()
                .unwrap_or_else(|| case_label(entry.user.as_deref(), &entry.claims, entry.mfa));
            cases::caller_claims(callers, entry.user.as_deref(), &entry.claims, entry.mfa)
                .and_then(|claims| self.add_subject(label, Value::Object(claims)))
                .map_err(|m| fail(format!("principal {}: {m}", n + 1)))?;
        }
        Ok(())
    }
}

/// A caller's label from how a case describes it: the user, the claims it sets, `mfa`.
fn case_label(user: Option<&str>, claims: &Map<String, Value>, mfa: Option<bool>) -> String {
    let app = claims.get("idtyp").and_then(Value::as_str) == Some("app");
    let mut label = user
        .unwrap_or(if app { "app" } else { "caller" })
        .to_owned();
    let shown: Vec<String> = claims
        .iter()
        .filter(|(k, _)| !(app && k.as_str() == "idtyp"))
        .map(|(k, v)| format!("{k}={}", short(v)))
        .collect();
    if !shown.is_empty() {
        label.push_str(&format!(" {{{}}}", shown.join(", ")));
    }
    match mfa {
        Some(true) => label.push_str(" (mfa)"),
        Some(false) => label.push_str(" (no mfa)"),
        None => {}
    }
    label
}

/// A claim value, ids shortened to their first eight characters.
fn short(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > 12 && s.contains('-') => {
            format!("{}…", s.get(..8).unwrap_or(s))
        }
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(short).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

/// One caller and one item: the list-phase and call-phase decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// Whether the item is listed, and by which policies.
    pub list: Decision,
    /// Whether a call (without arguments) is allowed, by which policies, with which
    /// obligations.
    pub call: Decision,
}

/// Every caller against every item: `[subject][item]`.
pub fn matrix(engine: &PolicyEngine, catalog: &Catalog) -> Vec<Vec<Cell>> {
    catalog
        .subjects
        .iter()
        .map(|s| {
            catalog
                .items
                .iter()
                .map(|item| Cell {
                    list: engine.decide_quiet(&s.principal, item, Phase::List, None),
                    call: engine.decide_quiet(&s.principal, item, Phase::Call, None),
                })
                .collect()
        })
        .collect()
}

/// How a decision changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Denied before, allowed after.
    Allowed,
    /// Allowed before, denied after.
    Denied,
    /// The same outcome with other obligations (redaction, reason, step-up).
    Obligations,
}

impl Change {
    /// How `after` differs from `before`, decisions of `phase`, if it does in outcome or
    /// (calls only) obligations; other determining policies alone are no change.
    pub fn between(phase: Phase, before: &Decision, after: &Decision) -> Option<Self> {
        use super::Disagreement as D;
        super::Disagreement::between(phase, before, after).map(|d| match d {
            D::EnforcedAllowShadowDeny => Change::Denied,
            D::EnforcedDenyShadowAllow => Change::Allowed,
            D::Obligations => Change::Obligations,
        })
    }

    /// `allowed`, `denied` or `obligations`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Allowed => "allowed",
            Change::Denied => "denied",
            Change::Obligations => "obligations",
        }
    }
}

/// A decision that differs between two policy sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flip {
    /// Index into [`Catalog::subjects`].
    pub subject: usize,
    /// Index into [`Catalog::items`].
    pub item: usize,
    /// The phase.
    pub phase: Phase,
    /// The test case whose call (with its arguments) this is; `None` for the grid's calls
    /// without arguments.
    pub case: Option<String>,
    /// How it changed.
    pub change: Change,
    /// The old policies' decision.
    pub before: Decision,
    /// The new policies' decision.
    pub after: Decision,
}

/// Every (caller, item, phase) of `catalog`, and every test case call with arguments, whose
/// decision differs between `old` and `new`: in grid order (caller, item, list before
/// call), then the case calls.
pub fn diff(old: &PolicyEngine, new: &PolicyEngine, catalog: &Catalog) -> Vec<Flip> {
    let mut flips = Vec::new();
    let compare = |subject: usize,
                   item: usize,
                   phase: Phase,
                   case: Option<&CaseCall>,
                   flips: &mut Vec<Flip>| {
        let (Some(s), Some(i)) = (catalog.subjects.get(subject), catalog.items.get(item)) else {
            return;
        };
        let arguments = case.map(|c| &c.arguments);
        let before = old.decide_quiet(&s.principal, i, phase, arguments);
        let after = new.decide_quiet(&s.principal, i, phase, arguments);
        if let Some(change) = Change::between(phase, &before, &after) {
            flips.push(Flip {
                subject,
                item,
                phase,
                case: case.map(|c| c.name.clone()),
                change,
                before,
                after,
            });
        }
    };
    for subject in 0..catalog.subjects.len() {
        for item in 0..catalog.items.len() {
            for phase in [Phase::List, Phase::Call] {
                compare(subject, item, phase, None, &mut flips);
            }
        }
    }
    for call in &catalog.calls {
        compare(call.subject, call.item, Phase::Call, Some(call), &mut flips);
    }
    flips
}
