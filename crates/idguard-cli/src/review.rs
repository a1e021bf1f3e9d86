//! `idguard policy diff` and `idguard policy matrix`: the reviewer's view of policies.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Value, json};

use idguard::policy::cases::TOOLS_FILE;
use idguard::policy::review::{self, Catalog, Cell, Change, Flip};
use idguard::policy::{Decision, Item, PolicyEngine};

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// For people at a terminal.
    Text,
    /// For machines.
    Json,
    /// For a pull-request comment.
    Markdown,
}

/// Where callers and items come from (shared by `diff` and `matrix`).
#[derive(Debug, clap::Args)]
pub(crate) struct Inputs {
    /// The tool catalog: a tools/list result as a JSON file, or the URL of a running MCP
    /// server (default: tools.json in the policy directory).
    #[arg(long)]
    tools: Option<String>,
    /// A bearer token for the server (with a URL).
    #[arg(long)]
    token: Option<String>,
    /// More callers: a TOML file of `[[principal]]` tables (`name`, `user`, `claims`,
    /// `mfa`) or a JSON array of them. Repeatable.
    #[arg(long)]
    principals: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// `idguard policy diff` options.
#[derive(Debug, clap::Args)]
pub(crate) struct DiffArgs {
    /// The policies in force (a policy directory).
    old: PathBuf,
    /// The proposed policies (a policy directory).
    new: PathBuf,
    #[command(flatten)]
    inputs: Inputs,
}

/// `idguard policy matrix` options.
#[derive(Debug, clap::Args)]
pub(crate) struct MatrixArgs {
    /// The policy directory.
    #[arg(default_value = "policies")]
    dir: PathBuf,
    #[command(flatten)]
    inputs: Inputs,
    /// Also write a self-contained HTML page (sortable, filterable) to this file.
    #[arg(long)]
    html: Option<PathBuf>,
}

/// Exit code when a policy directory does not load (1 means "something differs").
const LOAD_FAILED: u8 = 2;

/// Callers of the test cases in `dirs` and of `--principals`; the tool catalog, then the
/// resources and prompts the cases name.
async fn catalog(dirs: &[&Path], inputs: &Inputs) -> Result<Catalog, Box<dyn Error>> {
    let mut catalog = Catalog::new();
    let list = match &inputs.tools {
        Some(t) if t.starts_with("http://") || t.starts_with("https://") => {
            Some(super::policy::fetch_tools_list(t, inputs.token.as_deref()).await?)
        }
        Some(file) => Some(serde_json::from_str(&std::fs::read_to_string(file)?)?),
        None => dirs
            .iter()
            .rev()
            .map(|d| d.join(TOOLS_FILE))
            .find(|p| p.exists())
            .map(|p| -> Result<Value, Box<dyn Error>> {
                Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?)
            })
            .transpose()?,
    };
    if let Some(list) = &list {
        catalog.add_tools(list);
    }
    for dir in dirs {
        catalog.add_cases(dir, &idguard_dev::named_callers())?;
    }
    for file in &inputs.principals {
        catalog.add_principals_file(file, &idguard_dev::named_callers())?;
    }
    if catalog.subjects().is_empty() {
        return Err("no callers: add test cases (DIR/tests/*.toml) or --principals".into());
    }
    if catalog.items().is_empty() {
        return Err("no items: give --tools, or put tools.json next to the policies".into());
    }
    Ok(catalog)
}

pub(crate) async fn diff(args: &DiffArgs) -> Result<ExitCode, Box<dyn Error>> {
    let (Some(old), Some(new)) = (
        super::policy::load(&args.old),
        super::policy::load(&args.new),
    ) else {
        return Ok(ExitCode::from(LOAD_FAILED));
    };
    let catalog = catalog(&[&args.old, &args.new], &args.inputs).await?;
    let flips = review::diff(&old, &new, &catalog);
    let sides = Sides {
        old: (&old, &args.old),
        new: (&new, &args.new),
    };
    let out = match args.inputs.format {
        Format::Text => diff_text(&catalog, &flips, &sides),
        Format::Markdown => diff_markdown(&catalog, &flips, &sides),
        Format::Json => serde_json::to_string_pretty(&diff_json(&catalog, &flips, &sides))?,
    };
    println!("{}", out.trim_end());
    Ok(if flips.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

struct Sides<'a> {
    old: (&'a PolicyEngine, &'a Path),
    new: (&'a PolicyEngine, &'a Path),
}

fn counts(flips: &[Flip]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::from([("allowed", 0), ("denied", 0), ("obligations", 0)]);
    for f in flips {
        *counts.entry(f.change.as_str()).or_default() += 1;
    }
    counts
}

fn item_label(item: &Item) -> String {
    let kind = match item {
        Item::Tool(_) => "tool",
        Item::Resource(_) => "resource",
        Item::Prompt(_) => "prompt",
    };
    format!("{kind} {}", item.id())
}

/// `allow by a [roles.cedar:3], b (redact x)`: the decision with where its policies are.
fn describe(decision: &Decision, engine: &PolicyEngine, code: bool) -> String {
    let id = |id: &str| {
        let id = if code {
            format!("`{id}`")
        } else {
            id.to_owned()
        };
        match engine.origin(id.trim_matches('`')) {
            Some(o) => format!("{id} [{}:{}]", o.file, o.line),
            None => id,
        }
    };
    let ids = |ids: &[String]| ids.iter().map(|i| id(i)).collect::<Vec<_>>().join(", ");
    match decision {
        Decision::Allow(a) => {
            let mut s = format!("allow by {}", ids(&a.policies));
            if !a.redact.is_empty() {
                s.push_str(&format!(" (redact {})", a.redact.join(", ")));
            }
            s
        }
        Decision::Deny(d) if !d.errors.is_empty() => {
            format!("deny: {} evaluation error(s)", d.errors.len())
        }
        Decision::Deny(d) if d.policies.is_empty() => "deny (no policy permits)".into(),
        Decision::Deny(d) => {
            let mut s = format!("deny by {}", ids(&d.policies));
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

fn what(catalog: &Catalog, f: &Flip) -> (String, String, String) {
    let subject = catalog
        .subjects()
        .get(f.subject)
        .map(|s| s.label.clone())
        .unwrap_or_default();
    let item = catalog
        .items()
        .get(f.item)
        .map(item_label)
        .unwrap_or_default();
    let phase = match &f.case {
        Some(case) => format!("call (case \"{case}\")"),
        None => f.phase.as_str().to_owned(),
    };
    (subject, item, phase)
}

fn summary(catalog: &Catalog, flips: &[Flip]) -> String {
    let c = counts(flips);
    format!(
        "{} decision{} differ{} ({} allowed, {} denied, {} obligations) over {} callers × {} items and {} case calls",
        flips.len(),
        if flips.len() == 1 { "" } else { "s" },
        if flips.len() == 1 { "s" } else { "" },
        c.get("allowed").copied().unwrap_or_default(),
        c.get("denied").copied().unwrap_or_default(),
        c.get("obligations").copied().unwrap_or_default(),
        catalog.subjects().len(),
        catalog.items().len(),
        catalog.calls().len(),
    )
}

fn diff_text(catalog: &Catalog, flips: &[Flip], sides: &Sides<'_>) -> String {
    let mut out = format!(
        "policy diff {} -> {}: {}\n",
        sides.old.1.display(),
        sides.new.1.display(),
        summary(catalog, flips)
    );
    for f in flips {
        let (subject, item, phase) = what(catalog, f);
        let _ = write!(
            out,
            "\n{:<11} {subject} | {item} | {phase}\n    before  {}\n    after   {}\n",
            f.change.as_str().to_uppercase(),
            describe(&f.before, sides.old.0, false),
            describe(&f.after, sides.new.0, false),
        );
    }
    out
}

/// Table-cell text: no line breaks, `|` escaped.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn diff_markdown(catalog: &Catalog, flips: &[Flip], sides: &Sides<'_>) -> String {
    let mut out = if flips.is_empty() {
        "### Policy diff: no decision changes\n\n".to_owned()
    } else {
        format!(
            "### Policy diff: {} decision{} change{}\n\n",
            flips.len(),
            if flips.len() == 1 { "" } else { "s" },
            if flips.len() == 1 { "s" } else { "" }
        )
    };
    let _ = writeln!(
        out,
        "`{}` → `{}`: {}.\n",
        sides.old.1.display(),
        sides.new.1.display(),
        summary(catalog, flips)
    );
    if flips.is_empty() {
        return out;
    }
    out.push_str(
        "| change | caller | item | phase | before | after |\n|---|---|---|---|---|---|\n",
    );
    for f in flips {
        let (subject, item, phase) = what(catalog, f);
        let mark = match f.change {
            Change::Allowed => "🟢 allowed",
            Change::Denied => "🔴 denied",
            Change::Obligations => "🟡 obligations",
        };
        let _ = writeln!(
            out,
            "| {mark} | {} | {} | {} | {} | {} |",
            cell(&subject),
            cell(&item),
            cell(&phase),
            cell(&describe(&f.before, sides.old.0, true)),
            cell(&describe(&f.after, sides.new.0, true)),
        );
    }
    out
}

/// `{id: "file:line"}` for every policy of `engine`.
fn origins(engine: &PolicyEngine) -> BTreeMap<String, String> {
    engine
        .policy_ids()
        .into_iter()
        .filter_map(|id| {
            let o = engine.origin(&id)?;
            Some((id, format!("{}:{}", o.file, o.line)))
        })
        .collect()
}

fn subjects_json(catalog: &Catalog) -> Vec<Value> {
    catalog
        .subjects()
        .iter()
        .map(|s| {
            let p = s.principal();
            json!({
                "label": s.label,
                "claims": s.claims,
                "roles": p.roles(),
                "groups": p.groups(),
                "tenant": p.tenant_id(),
                "app_only": p.is_app_only(),
                "mfa": p.mfa(),
            })
        })
        .collect()
}

fn items_json(catalog: &Catalog) -> Vec<Value> {
    catalog
        .items()
        .iter()
        .map(|item| match item {
            Item::Tool(t) => json!({
                "kind": "tool", "id": t.name, "action": item.action(),
                "read_only": t.read_only, "destructive": t.destructive,
                "idempotent": t.idempotent, "open_world": t.open_world, "tags": t.tags,
            }),
            Item::Resource(_) => {
                json!({"kind": "resource", "id": item.id(), "action": item.action()})
            }
            Item::Prompt(_) => json!({"kind": "prompt", "id": item.id(), "action": item.action()}),
        })
        .collect()
}

fn diff_json(catalog: &Catalog, flips: &[Flip], sides: &Sides<'_>) -> Value {
    json!({
        "old": sides.old.1,
        "new": sides.new.1,
        "differs": !flips.is_empty(),
        "counts": counts(flips),
        "subjects": subjects_json(catalog),
        "items": items_json(catalog),
        "case_calls": catalog.calls().len(),
        "flips": flips.iter().map(|f| {
            let subject = catalog.subjects().get(f.subject).map(|s| s.label.as_str());
            let item = catalog.items().get(f.item);
            json!({
                "caller": subject,
                "subject": f.subject,
                "item": item.map(Item::id),
                "action": item.map(Item::action),
                "phase": f.phase,
                "case": f.case,
                "change": f.change,
                "before": f.before,
                "after": f.after,
            })
        }).collect::<Vec<_>>(),
        "origins": {"old": origins(sides.old.0), "new": origins(sides.new.0)},
    })
}

pub(crate) async fn matrix(args: &MatrixArgs) -> Result<ExitCode, Box<dyn Error>> {
    let Some(engine) = super::policy::load(&args.dir) else {
        return Ok(ExitCode::from(LOAD_FAILED));
    };
    let catalog = catalog(&[&args.dir], &args.inputs).await?;
    let cells = review::matrix(&engine, &catalog);
    let data = matrix_json(&catalog, &cells, &engine, &args.dir);
    if let Some(path) = &args.html {
        std::fs::write(path, matrix_html(&data)?)?;
        eprintln!("wrote {}", path.display());
    }
    let out = match args.inputs.format {
        Format::Json => serde_json::to_string_pretty(&data)?,
        Format::Text => matrix_grid(&catalog, &cells, false),
        Format::Markdown => matrix_grid(&catalog, &cells, true),
    };
    println!("{}", out.trim_end());
    Ok(ExitCode::SUCCESS)
}

fn matrix_json(catalog: &Catalog, cells: &[Vec<Cell>], engine: &PolicyEngine, dir: &Path) -> Value {
    json!({
        "dir": dir,
        "epoch": engine.epoch(),
        "subjects": subjects_json(catalog),
        "items": items_json(catalog),
        "cells": cells,
        "origins": origins(engine),
    })
}

/// A cell's two-sign code (listed, callable) with obligation marks: `r` redact, `^` step-up,
/// `!` a reason for the denial.
fn code(c: &Cell) -> String {
    let sign = |d: &Decision| if d.is_allow() { '+' } else { '-' };
    let mut s: String = [sign(&c.list), sign(&c.call)].into_iter().collect();
    match &c.call {
        Decision::Allow(a) if !a.redact.is_empty() => s.push('r'),
        Decision::Deny(d) => {
            if d.step_up.is_some() {
                s.push('^');
            } else if d.reason.is_some() {
                s.push('!');
            }
        }
        Decision::Allow(_) => {}
    }
    s
}

const LEGEND: &str = "first sign: listed (+) or hidden (-); second: a call is allowed (+) or \
    denied (-); r: results redacted, ^: step-up (MFA) would allow it, !: denied with a reason";

fn matrix_grid(catalog: &Catalog, cells: &[Vec<Cell>], markdown: bool) -> String {
    let mut out = String::new();
    let n = catalog.subjects().len();
    if markdown {
        let _ = writeln!(
            out,
            "| item |{}",
            (1..=n).map(|i| format!(" {i} |")).collect::<String>()
        );
        let _ = writeln!(out, "|---|{}", "---|".repeat(n));
    } else {
        out.push_str("callers:\n");
        for (i, s) in catalog.subjects().iter().enumerate() {
            let _ = writeln!(out, "  {:>3}  {}", i + 1, s.label);
        }
        out.push('\n');
    }
    let width = catalog
        .items()
        .iter()
        .map(|i| item_label(i).chars().count())
        .max()
        .unwrap_or(4);
    if !markdown {
        let _ = writeln!(
            out,
            "{:<width$}{}",
            "item",
            (1..=n).map(|i| format!("{i:>5}")).collect::<String>()
        );
    }
    for (j, item) in catalog.items().iter().enumerate() {
        let codes: Vec<String> = cells
            .iter()
            .map(|row| row.get(j).map(code).unwrap_or_default())
            .collect();
        if markdown {
            let _ = writeln!(
                out,
                "| {} |{}",
                cell(&item_label(item)),
                codes
                    .iter()
                    .map(|c| format!(" `{c}` |"))
                    .collect::<String>()
            );
        } else {
            let _ = writeln!(
                out,
                "{:<width$}{}",
                item_label(item),
                codes.iter().map(|c| format!("{c:>5}")).collect::<String>()
            );
        }
    }
    if markdown {
        out.push_str("\nCallers: ");
        let names: Vec<String> = catalog
            .subjects()
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{} = {}", i + 1, cell(&s.label)))
            .collect();
        out.push_str(&names.join("; "));
        out.push('\n');
    }
    let _ = write!(out, "\n{LEGEND}\n");
    out
}

/// The page: the template with the data as JSON inside a `<script>` (`<` escaped so no
/// string in the data can end the script).
fn matrix_html(data: &Value) -> Result<String, Box<dyn Error>> {
    let json = serde_json::to_string(data)?.replace('<', "\\u003c");
    Ok(include_str!("matrix.html").replacen("/*DATA*/null", &json, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_data_cannot_close_the_script() {
        let page = matrix_html(&json!({"label": "</script><script>alert(1)</script>"})).unwrap();
        assert!(!page.contains("</script><script>alert"));
        assert!(page.contains("\\u003c/script>"));
    }

    #[test]
    fn markdown_cells_keep_the_table() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
