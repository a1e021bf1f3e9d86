//! Loading: files → parse → re-id from `@id` → check annotations → strict validation →
//! an immutable [`Snapshot`]. Every problem carries its file, line and column.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Effect, Policy, PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode, Validator,
};
use miette::Diagnostic;

use super::PolicyOrigin;
use super::arguments::{ARGUMENTS_SCHEMA_FILE, ArgType, EMPTY_ARGUMENTS};
use super::entities::Names;
use super::slice::Slicer;

/// The base schema's file name.
pub(crate) const SCHEMA_FILE: &str = "schema.cedarschema";

/// Annotation keys with a meaning; any other key is a load error.
const KNOWN_ANNOTATIONS: [&str; 5] = ["id", "description", "redact", "reason", "step_up"];

/// Appended to problems caused by reading tool arguments without a generated schema.
const ARGUMENTS_HINT: &str = "; tool arguments are typed by a generated schema: run \
     `idguard policy schema --tools <tools/list JSON or server URL>` to write \
     `arguments.cedarschema` next to `schema.cedarschema`";

/// Step-ups idguard knows how to ask for.
const STEP_UPS: [&str; 1] = ["mfa"];

/// One problem in a policy directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The file, relative to the policy directory.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong, with Cedar's message where Cedar found it.
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Policies that could not be loaded. Lists every problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyLoadError {
    problems: Vec<PolicyProblem>,
}

impl PolicyLoadError {
    /// Every problem, located.
    pub fn problems(&self) -> &[PolicyProblem] {
        &self.problems
    }
}

impl fmt::Display for PolicyLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{n} policy problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyLoadError {}

/// Obligations carried by one policy's annotations.
#[derive(Clone, Debug, Default)]
pub(crate) struct Obligations {
    pub(crate) redact: Vec<String>,
    pub(crate) reason: Option<String>,
    pub(crate) step_up: Option<String>,
}

/// An immutable, validated set of policies.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) epoch: u64,
    pub(crate) names: Names,
    pub(crate) arguments: Option<ArgType>,
    pub(crate) obligations: HashMap<PolicyId, Obligations>,
    pub(crate) slicer: Slicer,
    origins: HashMap<String, PolicyOrigin>,
    texts: Vec<String>,
}

impl Snapshot {
    pub(crate) fn len(&self) -> usize {
        self.origins.len()
    }

    /// The same policies, with an empty slice cache of at most `capacity` slices.
    pub(crate) fn with_slice_capacity(&self, capacity: u64) -> Self {
        Self {
            epoch: self.epoch,
            names: self.names.clone(),
            arguments: self.arguments.clone(),
            obligations: self.obligations.clone(),
            slicer: self.slicer.resized(capacity),
            origins: self.origins.clone(),
            texts: self.texts.clone(),
        }
    }

    pub(crate) fn origin(&self, id: &str) -> Option<PolicyOrigin> {
        self.origins.get(id).cloned()
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.origins.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Entity ids of type `ty` written as literals in the policies (`Role::"x"`).
    pub(crate) fn referenced(&self, ty: &str) -> Vec<String> {
        let needle = format!("{ty}::\"");
        let mut found = BTreeSet::new();
        for text in &self.texts {
            let mut rest = text.as_str();
            while let Some(at) = rest.find(&needle) {
                let after = rest.get(at + needle.len()..).unwrap_or_default();
                let Some(end) = after.find('"') else { break };
                found.insert(after.get(..end).unwrap_or_default().to_owned());
                rest = after.get(end..).unwrap_or_default();
            }
        }
        found.into_iter().collect()
    }
}

/// Loads `schema.cedarschema`, the optional `arguments.cedarschema` and every `*.cedar`
/// file directly in `dir`; the snapshot caches at most `slices` policy slices.
pub(crate) fn load_dir(dir: &Path, epoch: u64, slices: u64) -> Result<Snapshot, PolicyLoadError> {
    let fail = |file: &str, message: String| PolicyLoadError {
        problems: vec![PolicyProblem {
            file: file.to_owned(),
            line: None,
            column: None,
            message,
        }],
    };
    let schema = std::fs::read_to_string(dir.join(SCHEMA_FILE)).map_err(|e| {
        fail(
            SCHEMA_FILE,
            format!("cannot read `{}`: {e}", dir.join(SCHEMA_FILE).display()),
        )
    })?;
    let arguments = match std::fs::read_to_string(dir.join(ARGUMENTS_SCHEMA_FILE)) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail(ARGUMENTS_SCHEMA_FILE, format!("cannot read: {e}"))),
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| fail(".", format!("cannot list `{}`: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "cedar") && path.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| fail(&name, format!("cannot read: {e}")))?;
            files.push((name, text));
        }
    }
    files.sort();
    load_sources(&schema, arguments.as_deref(), &files, epoch, slices)
}

/// Loads policies from memory: `(file name, text)` pairs; the snapshot caches at most
/// `slices` policy slices.
pub(crate) fn load_sources(
    schema_src: &str,
    arguments_src: Option<&str>,
    files: &[(String, String)],
    epoch: u64,
    slices: u64,
) -> Result<Snapshot, PolicyLoadError> {
    let mut problems = Vec::new();

    let mut fragment = |file: &str, src: &str| match SchemaFragment::from_cedarschema_str(src) {
        Ok((fragment, _warnings)) => Some(fragment),
        Err(e) => {
            problems.push(located(file, src, &e, e.to_string()));
            None
        }
    };
    let base = fragment(SCHEMA_FILE, schema_src);
    let generated = arguments_src.is_some();
    let args = fragment(
        ARGUMENTS_SCHEMA_FILE,
        arguments_src.unwrap_or(EMPTY_ARGUMENTS),
    );
    let arguments = match &args {
        Some(f) => ArgType::from_fragment(f).unwrap_or_else(|message| {
            problems.push(PolicyProblem {
                file: ARGUMENTS_SCHEMA_FILE.into(),
                line: None,
                column: None,
                message,
            });
            None
        }),
        None => None,
    };
    let schema = match (base, args) {
        (Some(base), Some(args)) => match Schema::from_schema_fragments([base, args]) {
            Ok(schema) => Some(schema),
            Err(e) => {
                problems.push(PolicyProblem {
                    file: SCHEMA_FILE.into(),
                    line: None,
                    column: None,
                    message: with_help(&e, e.to_string()),
                });
                None
            }
        },
        _ => None,
    };

    let mut policies = Vec::new();
    let mut obligations = HashMap::new();
    let mut origins: HashMap<String, PolicyOrigin> = HashMap::new();
    let mut texts = Vec::new();
    let mut sources: HashMap<String, &str> = HashMap::new();
    for (file, src) in files {
        sources.insert(file.clone(), src);
        let set = match PolicySet::from_str(src) {
            Ok(set) => set,
            Err(errors) => {
                for e in errors.iter() {
                    problems.push(located(file, src, e, e.to_string()));
                }
                continue;
            }
        };
        if set.templates().next().is_some() {
            problems.push(PolicyProblem {
                file: file.clone(),
                line: None,
                column: None,
                message: "policy templates are not supported: write static policies".into(),
            });
        }
        let mut search_from = 0;
        for policy in set.policies() {
            let text = policy.to_cedar().unwrap_or_default();
            let offset = src
                .get(search_from..)
                .and_then(|rest| rest.find(text.as_str()))
                .map_or(search_from, |i| i + search_from);
            search_from = offset + text.len();
            let (line, _) = line_col(src, offset);
            let at = |message: String| PolicyProblem {
                file: file.clone(),
                line: Some(line),
                column: None,
                message,
            };
            let Some(id) = policy.annotation("id") else {
                problems.push(at(
                    "policy has no `@id(\"…\")` annotation; every policy needs a unique id".into(),
                ));
                continue;
            };
            if let Some(first) = origins.get(id) {
                problems.push(at(format!(
                    "policy id `{id}` is already used in {}:{}",
                    first.file, first.line
                )));
                continue;
            }
            match check_annotations(policy) {
                Ok(o) => {
                    obligations.insert(PolicyId::new(id), o);
                }
                Err(messages) => {
                    problems.extend(messages.into_iter().map(&at));
                    continue;
                }
            }
            origins.insert(
                id.to_owned(),
                PolicyOrigin {
                    file: file.clone(),
                    line,
                },
            );
            texts.push(text);
            policies.push(policy.new_id(PolicyId::new(id)));
        }
    }

    let set = match PolicySet::from_policies(policies) {
        Ok(set) => Some(set),
        Err(e) => {
            problems.push(PolicyProblem {
                file: ".".into(),
                line: None,
                column: None,
                message: e.to_string(),
            });
            None
        }
    };

    if let (Some(schema), Some(set)) = (&schema, &set) {
        let result = Validator::new(schema.clone()).validate(set, ValidationMode::Strict);
        for e in result.validation_errors() {
            let id = e.policy_id().to_string();
            let file = origins
                .get(&id)
                .map_or_else(|| "?".to_owned(), |o| o.file.clone());
            let src = sources.get(&file).copied().unwrap_or_default();
            let mut message = with_help(e, e.to_string());
            if !generated && message.contains("arguments") {
                message.push_str(ARGUMENTS_HINT);
            }
            problems.push(located(&file, src, e, message));
        }
        // A policy that can never apply is a bug: most often a read of an argument or an
        // attribute the schema does not declare, hidden behind `has`.
        for w in result.validation_warnings() {
            if let cedar_policy::ValidationWarning::ImpossiblePolicy(_) = w {
                let id = w.policy_id().to_string();
                let file = origins
                    .get(&id)
                    .map_or_else(|| "?".to_owned(), |o| o.file.clone());
                let src = sources.get(&file).copied().unwrap_or_default();
                let mut message = w.to_string();
                if !generated && src.contains("context.arguments") {
                    message.push_str(ARGUMENTS_HINT);
                } else {
                    message.push_str("; check the attribute names against the schema");
                }
                problems.push(located(&file, src, w, message));
            }
        }
    }

    let names = Names::new().map_err(|message| PolicyLoadError {
        problems: vec![PolicyProblem {
            file: SCHEMA_FILE.into(),
            line: None,
            column: None,
            message,
        }],
    })?;
    match set {
        Some(policies) if problems.is_empty() => Ok(Snapshot {
            epoch,
            slicer: Slicer::new(&policies, slices),
            names,
            arguments,
            obligations,
            origins,
            texts,
        }),
        _ => Err(PolicyLoadError { problems }),
    }
}

/// Reads the meaning of a policy's annotations; unknown keys and misplaced obligations are
/// errors.
fn check_annotations(policy: &Policy) -> Result<Obligations, Vec<String>> {
    let mut errors = Vec::new();
    let mut o = Obligations::default();
    let effect = policy.effect();
    for (key, value) in policy.annotations() {
        match key {
            "id" | "description" => {}
            "redact" if effect == Effect::Permit => {
                o.redact = value
                    .split(',')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .map(str::to_owned)
                    .collect();
                if o.redact.is_empty() {
                    errors
                        .push("`@redact` needs field names, e.g. `@redact(\"ssn,salary\")`".into());
                }
            }
            "reason" if effect == Effect::Forbid => o.reason = Some(value.to_owned()),
            "step_up" if effect == Effect::Forbid => {
                if STEP_UPS.contains(&value) {
                    o.step_up = Some(value.to_owned());
                } else {
                    errors.push(format!(
                        "unknown step-up `{value}`; known: {}",
                        STEP_UPS.join(", ")
                    ));
                }
            }
            "redact" => errors.push("`@redact` belongs on permit policies".into()),
            "reason" | "step_up" => errors.push(format!("`@{key}` belongs on forbid policies")),
            other => errors.push(format!(
                "unknown annotation `@{other}`; known: {}",
                KNOWN_ANNOTATIONS
                    .iter()
                    .map(|k| format!("@{k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    if errors.is_empty() {
        Ok(o)
    } else {
        Err(errors)
    }
}

/// A problem located by the diagnostic's first label.
fn located(file: &str, src: &str, diag: &dyn Diagnostic, message: String) -> PolicyProblem {
    let offset = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    let (line, column) = match offset {
        Some(offset) => {
            let (l, c) = line_col(src, offset);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    PolicyProblem {
        file: file.to_owned(),
        line,
        column,
        message: with_help(diag, message),
    }
}

fn with_help(diag: &dyn Diagnostic, mut message: String) -> String {
    if let Some(help) = diag.help() {
        message.push_str(" (");
        message.push_str(&help.to_string());
        message.push(')');
    }
    message
}

/// 1-based line and column of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset.min(src.len())).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}
