//! Policy test cases: `policies/tests/*.toml`, run by `idguard policy test`.
//!
//! Each file holds `[[case]]` tables. A case describes a caller (a dev user by name, and/or
//! token claims), an item (tool, resource or prompt), optional arguments and phase, and the
//! expected decision with its obligations:
//!
//! ```toml
//! [[case]]
//! name = "bob cannot delete documents"
//! user = "bob"                    # a dev emulator user; or give `claims = { roles = [...] }`
//! tool = "delete_document"        # annotations come from `tools.json` next to the policies
//! expect = "deny"
//!
//! [[case]]
//! name = "transfers above the cap are refused with a reason"
//! user = "alice"
//! tool = "transfer_funds"
//! arguments = { amount = 50000, to = "ACME" }
//! expect = "deny"
//! reason = "transfers above 10000 need a second approver"
//! ```
//!
//! Optional keys: `claims` (merged over the user's claims), `mfa` (sets `amr`), `phase`
//! (`"call"`, default, or `"list"`), `annotations` (override the tool's), `redact`,
//! `reason`, `step_up`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Decision, Item, Phase, PolicyEngine, PromptInfo, ResourceInfo, ToolInfo};
use crate::principal::Principal;

/// The file that describes the server's tools (a `tools/list` result), next to the policies.
pub const TOOLS_FILE: &str = "tools.json";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    user: Option<String>,
    #[serde(default)]
    claims: Map<String, Value>,
    mfa: Option<bool>,
    tool: Option<String>,
    resource: Option<String>,
    prompt: Option<String>,
    annotations: Option<Annotations>,
    arguments: Option<Map<String, Value>>,
    #[serde(default = "call")]
    phase: PhaseName,
    expect: Expect,
    redact: Option<Vec<String>>,
    reason: Option<String>,
    step_up: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Annotations {
    read_only: Option<bool>,
    destructive: Option<bool>,
    idempotent: Option<bool>,
    open_world: Option<bool>,
    tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum PhaseName {
    Call,
    List,
}

fn call() -> PhaseName {
    PhaseName::Call
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The case file.
    pub file: String,
    /// The case name.
    pub name: String,
    /// Whether the decision matched.
    pub passed: bool,
    /// What was decided (and, on failure, what was expected).
    pub detail: String,
}

/// Why the cases could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaseError {
    /// A file could not be read or parsed.
    #[error("{file}: {message}")]
    File {
        /// The file.
        file: String,
        /// What went wrong.
        message: String,
    },
}

/// The tools described by `tools.json` in `dir`, by name (empty if there is none).
///
/// # Errors
///
/// [`CaseError::File`] when the file exists but is not a tools list.
pub fn load_tools(dir: &Path) -> Result<BTreeMap<String, ToolInfo>, CaseError> {
    let path = dir.join(TOOLS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(file_error(&path, e.to_string())),
    };
    let json: Value = serde_json::from_str(&text).map_err(|e| file_error(&path, e.to_string()))?;
    let tools = json
        .get("result")
        .unwrap_or(&json)
        .get("tools")
        .or(Some(&json))
        .and_then(Value::as_array)
        .ok_or_else(|| file_error(&path, "expected a tools/list result".into()))?;
    Ok(tools
        .iter()
        .filter_map(ToolInfo::from_mcp)
        .map(|t| (t.name.clone(), t))
        .collect())
}

fn file_error(path: &Path, message: String) -> CaseError {
    CaseError::File {
        file: path.display().to_string(),
        message,
    }
}

/// Runs every case in `dir/tests/*.toml` against `engine`; `callers` are the callers the
/// cases may name.
///
/// # Errors
///
/// [`CaseError`] when a case file cannot be read or parsed.
pub fn run_cases(
    engine: &PolicyEngine,
    dir: &Path,
    callers: &NamedCallers,
) -> Result<Vec<CaseOutcome>, CaseError> {
    let tools = load_tools(dir)?;
    Ok(read_cases(dir)?
        .into_iter()
        .map(|(file, case)| run_case(engine, &tools, callers, &file, case))
        .collect())
}

/// One request a test case describes: for tools that look at many decisions at once
/// (`idguard policy diff`, `matrix`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CaseRequest {
    /// The case file.
    pub file: String,
    /// The case name.
    pub name: String,
    /// The dev user the caller starts from, if any.
    pub user: Option<String>,
    /// Claims written in the case (merged over the user's).
    pub claims: Map<String, Value>,
    /// The case's `mfa`.
    pub mfa: Option<bool>,
    /// The item, with the annotations `tools.json` and the case give it.
    pub item: Item,
    /// The phase.
    pub phase: Phase,
    /// The tool arguments.
    pub arguments: Option<Map<String, Value>>,
}

/// The requests of every case in `dir/tests/*.toml` (cases that name no single item are
/// left out; `policy test` reports them).
///
/// # Errors
///
/// [`CaseError`] when a case file or `tools.json` cannot be read or parsed.
pub fn case_requests(dir: &Path) -> Result<Vec<CaseRequest>, CaseError> {
    let tools = load_tools(dir)?;
    Ok(read_cases(dir)?
        .into_iter()
        .filter_map(|(file, case)| {
            let item = case_item(&case, &tools)?;
            Some(CaseRequest {
                file,
                item,
                phase: case.phase.phase(),
                name: case.name,
                user: case.user,
                claims: case.claims,
                mfa: case.mfa,
                arguments: case.arguments,
            })
        })
        .collect())
}

impl PhaseName {
    fn phase(self) -> Phase {
        match self {
            PhaseName::Call => Phase::Call,
            PhaseName::List => Phase::List,
        }
    }
}

/// Every case of `dir/tests/*.toml` with its file name, files in name order.
fn read_cases(dir: &Path) -> Result<Vec<(String, Case)>, CaseError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("tests"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e.to_string()))?;
        let file: CaseFile = toml::from_str(&text).map_err(|e| file_error(&path, e.to_string()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        cases.extend(file.cases.into_iter().map(|case| (name.clone(), case)));
    }
    Ok(cases)
}

/// The item a case names, with `tools.json`'s annotations under the case's; `None` unless
/// it names exactly one.
fn case_item(case: &Case, tools: &BTreeMap<String, ToolInfo>) -> Option<Item> {
    Some(match (&case.tool, &case.resource, &case.prompt) {
        (Some(tool), None, None) => {
            let mut info = tools
                .get(tool)
                .cloned()
                .unwrap_or_else(|| ToolInfo::new(tool.clone()));
            if let Some(a) = &case.annotations {
                info.read_only = a.read_only.unwrap_or(info.read_only);
                info.destructive = a.destructive.unwrap_or(info.destructive);
                info.idempotent = a.idempotent.unwrap_or(info.idempotent);
                info.open_world = a.open_world.unwrap_or(info.open_world);
                if let Some(tags) = &a.tags {
                    info.tags.clone_from(tags);
                }
            }
            Item::Tool(info)
        }
        (None, Some(uri), None) => Item::Resource(ResourceInfo { uri: uri.clone() }),
        (None, None, Some(name)) => Item::Prompt(PromptInfo { name: name.clone() }),
        _ => return None,
    })
}

fn run_case(
    engine: &PolicyEngine,
    tools: &BTreeMap<String, ToolInfo>,
    callers: &NamedCallers,
    file: &str,
    case: Case,
) -> CaseOutcome {
    let fail = |detail: String| CaseOutcome {
        file: file.to_owned(),
        name: case.name.clone(),
        passed: false,
        detail,
    };
    let principal = match caller(callers, case.user.as_deref(), &case.claims, case.mfa) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let Some(item) = case_item(&case, tools) else {
        return fail("give exactly one of `tool`, `resource`, `prompt`".into());
    };
    let phase = case.phase.phase();
    let decision = engine.decide(&principal, &item, phase, case.arguments.as_ref());
    let mut problems = Vec::new();
    let got = if decision.is_allow() {
        Expect::Allow
    } else {
        Expect::Deny
    };
    if got != case.expect {
        problems.push(format!("expected {:?}", case.expect).to_lowercase());
    }
    match &decision {
        Decision::Allow(a) => {
            if let Some(redact) = &case.redact
                && *redact != a.redact
            {
                problems.push(format!("expected redact {redact:?}"));
            }
        }
        Decision::Deny(d) => {
            if case.reason.is_some() && case.reason != d.reason {
                problems.push(format!("expected reason {:?}", case.reason));
            }
            if case.step_up.is_some() && case.step_up != d.step_up {
                problems.push(format!("expected step_up {:?}", case.step_up));
            }
        }
    }
    let detail = describe(&decision);
    CaseOutcome {
        file: file.to_owned(),
        name: case.name,
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            detail
        } else {
            format!("got {detail}; {}", problems.join("; "))
        },
    }
}

/// A one-line account of a decision.
pub fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Allow(a) => {
            let mut s = format!("allow by {}", a.policies.join(", "));
            if !a.redact.is_empty() {
                s.push_str(&format!(" (redact {})", a.redact.join(", ")));
            }
            s
        }
        Decision::Deny(d) if !d.errors.is_empty() => {
            format!("deny: evaluation error ({})", d.errors.join("; "))
        }
        Decision::Deny(d) if d.policies.is_empty() => "deny (no policy permits)".into(),
        Decision::Deny(d) => {
            let mut s = format!("deny by {}", d.policies.join(", "));
            if let Some(r) = &d.reason {
                s.push_str(&format!(" ({r})"));
            }
            if let Some(step) = &d.step_up {
                s.push_str(&format!(" [step-up: {step}]"));
            }
            s
        }
    }
}

/// A caller from a dev user name and/or claims; `mfa` sets `amr`.
///
/// # Errors
///
/// A message when the user is unknown or the claims do not describe a caller.
pub fn caller(
    callers: &NamedCallers,
    user: Option<&str>,
    claims: &Map<String, Value>,
    mfa: Option<bool>,
) -> Result<Principal, String> {
    let merged = caller_claims(callers, user, claims, mfa)?;
    Principal::from_unvalidated_claims(&Value::Object(merged)).map_err(|e| format!("caller: {e}"))
}

/// The claims [`caller`] reads: the dev user's (or a minimal caller's), `claims` merged
/// over them, and `amr` from `mfa`.
///
/// # Errors
///
/// A message when the user is unknown.
pub fn caller_claims(
    callers: &NamedCallers,
    user: Option<&str>,
    claims: &Map<String, Value>,
    mfa: Option<bool>,
) -> Result<Map<String, Value>, String> {
    let mut merged = match user {
        Some(name) => callers.claims(name)?,
        None => json!({
            "ver": "2.0",
            "tid": "00000000-0000-4000-8000-000000000000",
            "oid": "00000000-0000-4000-8000-000000000001",
            "sub": "00000000-0000-4000-8000-000000000001",
            "scp": "mcp.tools",
        }),
    };
    if let Some(map) = merged.as_object_mut() {
        for (k, v) in claims {
            map.insert(k.clone(), v.clone());
        }
        if let Some(mfa) = mfa {
            let amr = if mfa {
                json!(["pwd", "mfa"])
            } else {
                json!(["pwd"])
            };
            map.insert("amr".into(), amr);
        }
    }
    match merged {
        Value::Object(map) => Ok(map),
        _ => Err("caller: the claims are not an object".into()),
    }
}

/// The callers a case may name (`user = "alice"`) instead of spelling out their claims.
///
/// idguard's sample policies name the dev emulator's users; `idguard-dev` provides them
/// (`idguard_dev::named_callers()`), and a team testing against its own tenant adds its own.
#[derive(Clone, Debug, Default)]
pub struct NamedCallers {
    claims: BTreeMap<String, Value>,
}

impl NamedCallers {
    /// No named callers: every case describes its caller with `claims`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the caller `name` with its token claims.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, claims: Value) -> Self {
        self.claims.insert(name.into(), claims);
        self
    }

    fn claims(&self, name: &str) -> Result<Value, String> {
        if let Some(claims) = self.claims.get(name) {
            return Ok(claims.clone());
        }
        if self.claims.is_empty() {
            return Err(format!(
                "no named caller `{name}`: describe the caller with `claims`"
            ));
        }
        let known: Vec<&str> = self.claims.keys().map(String::as_str).collect();
        Err(format!(
            "no dev user `{name}` (known: {})",
            known.join(", ")
        ))
    }
}
