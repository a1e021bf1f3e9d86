//! Helpers for a policy directory that is not there yet, or a name that is not in it
//! (`idguard policy schema`, `idguard policy explain`).

use std::collections::BTreeMap;
use std::path::Path;

use idguard::policy::ToolInfo;

/// idguard's base schema (`policies/schema.cedarschema`): the vocabulary every policy
/// directory starts from.
const BASE_SCHEMA: &str = include_str!("../../../policies/schema.cedarschema");

/// Makes `dir` ready to receive `arguments.cedarschema`: creates it when missing, and
/// writes the base schema when it has none. Returns what it did, for the user.
///
/// # Errors
///
/// What could not be created or written, naming the path.
pub(super) fn prepare_policy_dir(dir: &Path) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create the policy directory `{}`: {e}",
                dir.display()
            )
        })?;
        notes.push(format!("created the policy directory `{}`", dir.display()));
    } else if !dir.is_dir() {
        return Err(format!("`{}` is not a directory", dir.display()));
    }
    let schema = dir.join("schema.cedarschema");
    if !schema.exists() {
        std::fs::write(&schema, BASE_SCHEMA)
            .map_err(|e| format!("cannot write `{}`: {e}", schema.display()))?;
        notes.push(format!(
            "wrote idguard's base schema to {} (users, roles, groups, tools, resources, prompts); add your *.cedar policies next to it",
            schema.display()
        ));
    }
    Ok(notes)
}

/// Saves a server's `tools/list` result as `dir/tools.json`, where `policy test` and
/// `policy explain` read tool annotations and tags. Returns what it did.
///
/// # Errors
///
/// The file could not be written.
pub(super) fn save_tools(dir: &Path, list: &serde_json::Value) -> Result<String, String> {
    let path = dir.join("tools.json");
    let text = serde_json::to_string_pretty(list).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n")
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    Ok(format!(
        "wrote {} (the server's tools: annotations and tags for `policy test` and `policy explain`)",
        path.display()
    ))
}

/// Warns (standard error) that `tool` is not in `dir/tools.json`, so its decision is for a
/// tool without annotations or tags: a mistyped name would otherwise just read "deny".
pub(super) fn warn_unknown_tool(tool: &str, known: &BTreeMap<String, ToolInfo>, dir: &Path) {
    let file = dir.join("tools.json");
    if known.is_empty() {
        eprintln!(
            "note: no tools in {}: `{tool}` is decided as a tool without annotations or tags (save the server's tools/list result there)",
            file.display()
        );
        return;
    }
    let close = known
        .keys()
        .map(|k| (idguard::internals::edit_distance(tool, k), k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    eprintln!(
        "warning: `{tool}` is not a tool in {}{close}; deciding for a tool without annotations or tags",
        file.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_policy_directory_is_created_with_the_base_schema() {
        let dir = std::env::temp_dir().join(format!("idguard-scaffold-{}", uuid::Uuid::new_v4()));
        let notes = prepare_policy_dir(&dir).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join("schema.cedarschema")).unwrap(),
            BASE_SCHEMA
        );
        assert!(
            prepare_policy_dir(&dir).unwrap().is_empty(),
            "nothing twice"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
