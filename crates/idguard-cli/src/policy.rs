//! `idguard policy …`: the policy author's tools.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Map, Value};

use idguard::policy::cases::{self, CaseOutcome};
use idguard::policy::{
    ARGUMENTS_SCHEMA_FILE, Decision, Item, Phase, PolicyEngine, PromptInfo, ResourceInfo, ToolInfo,
    generate_arguments_schema,
};

/// `idguard policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCommand {
    /// Load and strictly validate every policy; print each problem with file:line:column.
    Validate {
        /// The policy directory.
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// Run the test cases in DIR/tests/*.toml and print a pass/fail table.
    Test {
        /// The policy directory.
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// Explain one decision: which policies determined it, where they are, obligations.
    Explain(ExplainArgs),
    /// Show every decision that differs between two policy directories, with the policies
    /// that determined each side. Exits 1 when something differs.
    Diff(super::review::DiffArgs),
    /// One table of callers × items: list and call decisions with obligations (`--html`
    /// writes a page for reviewers).
    Matrix(super::review::MatrixArgs),
    /// Generate the Cedar type of tool arguments (arguments.cedarschema) from tools/list.
    Schema {
        /// A tools/list result as a JSON file, or the URL of a running MCP server.
        #[arg(long)]
        tools: String,
        /// A bearer token for the server (with a URL).
        #[arg(long)]
        token: Option<String>,
        /// The policy directory to write arguments.cedarschema into.
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
}

/// `idguard policy explain` options.
#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// The policy directory.
    #[arg(long, default_value = "policies")]
    dir: PathBuf,
    /// The caller: a dev emulator user (alice, bob, carol).
    #[arg(long)]
    user: Option<String>,
    /// The caller: a JSON file of token claims (merged over --user's).
    #[arg(long)]
    claims: Option<PathBuf>,
    /// The caller: a token whose claims are read without validation (dev tokens).
    #[arg(long)]
    token: Option<String>,
    /// The tool to decide about (annotations from DIR/tools.json).
    #[arg(long)]
    tool: Option<String>,
    /// The resource URI to decide about.
    #[arg(long)]
    resource: Option<String>,
    /// The prompt to decide about.
    #[arg(long)]
    prompt: Option<String>,
    /// Tool arguments as a JSON object.
    #[arg(long)]
    arguments: Option<String>,
    /// Decide for the list phase instead of the call.
    #[arg(long)]
    list: bool,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(command: PolicyCommand) -> Result<ExitCode, Box<dyn Error>> {
    match command {
        PolicyCommand::Validate { dir } => Ok(validate(&dir)),
        PolicyCommand::Test { dir } => test(&dir),
        PolicyCommand::Explain(args) => explain(&args),
        PolicyCommand::Schema { tools, token, dir } => schema(&tools, token.as_deref(), &dir).await,
        PolicyCommand::Diff(args) => super::review::diff(&args).await,
        PolicyCommand::Matrix(args) => super::review::matrix(&args).await,
    }
}

pub(super) fn load(dir: &Path) -> Option<PolicyEngine> {
    match PolicyEngine::from_dir(dir) {
        Ok(engine) => Some(engine),
        Err(e) => {
            for p in e.problems() {
                println!("{}", located(dir, p));
            }
            println!("{} problem(s) in {}", e.problems().len(), dir.display());
            None
        }
    }
}

fn located(dir: &Path, p: &idguard::policy::PolicyProblem) -> String {
    format!("{}/{p}", dir.display())
}

fn validate(dir: &Path) -> ExitCode {
    match load(dir) {
        Some(engine) => {
            println!(
                "ok: {} policies in {} validate against the schema",
                engine.policy_ids().len(),
                dir.display()
            );
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

fn test(dir: &Path) -> Result<ExitCode, Box<dyn Error>> {
    let Some(engine) = load(dir) else {
        return Ok(ExitCode::FAILURE);
    };
    let outcomes = cases::run_cases(&engine, dir, &idguard_dev::named_callers())?;
    print_table(&outcomes);
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    Ok(if failed == 0 && !outcomes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_table(outcomes: &[CaseOutcome]) {
    let width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(4);
    for o in outcomes {
        let mark = if o.passed { "pass" } else { "FAIL" };
        println!("{mark}  {:<width$}  {}", o.name, o.detail);
    }
}

fn explain(args: &ExplainArgs) -> Result<ExitCode, Box<dyn Error>> {
    let Some(engine) = load(&args.dir) else {
        return Ok(ExitCode::FAILURE);
    };
    let mut claims = Map::new();
    if let Some(token) = &args.token {
        let payload = token.split('.').nth(1).ok_or("--token is not a JWT")?;
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)?;
        if let Value::Object(map) = serde_json::from_slice(&bytes)? {
            claims.extend(map);
        }
    }
    if let Some(path) = &args.claims {
        if let Value::Object(map) = serde_json::from_str(&std::fs::read_to_string(path)?)? {
            claims.extend(map);
        } else {
            return Err("--claims must hold a JSON object".into());
        }
    }
    if args.user.is_none() && claims.is_empty() {
        return Err("name the caller with --user, --claims or --token".into());
    }
    let principal = cases::caller(
        &idguard_dev::named_callers(),
        args.user.as_deref(),
        &claims,
        None,
    )?;
    let item = match (&args.tool, &args.resource, &args.prompt) {
        (Some(tool), None, None) => {
            let mut known = cases::load_tools(&args.dir)?;
            Item::Tool(known.remove(tool).unwrap_or_else(|| {
                super::scaffold::warn_unknown_tool(tool, &known, &args.dir);
                ToolInfo::new(tool.clone())
            }))
        }
        (None, Some(uri), None) => Item::Resource(ResourceInfo { uri: uri.clone() }),
        (None, None, Some(name)) => Item::Prompt(PromptInfo { name: name.clone() }),
        _ => return Err("give exactly one of --tool, --resource, --prompt".into()),
    };
    let arguments: Option<Map<String, Value>> = match &args.arguments {
        Some(text) => match serde_json::from_str(text)? {
            Value::Object(map) => Some(map),
            _ => return Err("--arguments must be a JSON object".into()),
        },
        None => None,
    };
    let phase = if args.list { Phase::List } else { Phase::Call };
    let decision = engine.decide(&principal, &item, phase, arguments.as_ref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&decision)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "caller    {} {} in tenant {}",
        if principal.is_app_only() {
            "app"
        } else {
            "user"
        },
        principal.upn().unwrap_or(principal.object_id()),
        principal.tenant_id()
    );
    println!(
        "request   {} {:?} ({} phase)",
        item.action().as_str(),
        item.id(),
        if args.list { "list" } else { "call" }
    );
    println!("decision  {}", cases::describe(&decision));
    for id in decision.policies() {
        match engine.origin(id) {
            Some(o) => println!(
                "  policy  {id}  {}/{}:{}",
                args.dir.display(),
                o.file,
                o.line
            ),
            None => println!("  policy  {id}"),
        }
    }
    match &decision {
        Decision::Allow(a) if !a.redact.is_empty() => {
            println!("  redact  {}", a.redact.join(", "));
        }
        Decision::Deny(d) => {
            if let Some(r) = &d.reason {
                println!("  reason  {r}");
            }
            if let Some(s) = &d.step_up {
                println!("  step-up {s}");
            }
            for e in &d.errors {
                println!("  error   {e}");
            }
        }
        Decision::Allow(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn schema(tools: &str, token: Option<&str>, dir: &Path) -> Result<ExitCode, Box<dyn Error>> {
    let list = if tools.starts_with("http://") || tools.starts_with("https://") {
        fetch_tools_list(tools, token).await?
    } else {
        serde_json::from_str(&std::fs::read_to_string(tools)?)?
    };
    match generate_arguments_schema(&list) {
        Ok((schema, notes)) => {
            for n in notes {
                println!("note: {n}");
            }
            for n in super::scaffold::prepare_policy_dir(dir)? {
                println!("{n}");
            }
            if tools.starts_with("http://") || tools.starts_with("https://") {
                println!("{}", super::scaffold::save_tools(dir, &list)?);
            }
            let path = dir.join(ARGUMENTS_SCHEMA_FILE);
            std::fs::write(&path, schema)?;
            println!("wrote {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            for p in problems {
                println!("error: {p}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `initialize`, `notifications/initialized`, then `tools/list` against a Streamable HTTP
/// server; reads JSON or SSE replies.
pub(super) async fn fetch_tools_list(
    url: &str,
    token: Option<&str>,
) -> Result<Value, Box<dyn Error>> {
    let http = reqwest::Client::new();
    let mut session: Option<String> = None;
    let mut call = async |body: Value| -> Result<Option<Value>, Box<dyn Error>> {
        let mut req = http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(s) = &session {
            req = req.header("mcp-session-id", s);
        }
        let res = req.send().await?;
        if let Some(s) = res.headers().get("mcp-session-id") {
            session = Some(s.to_str()?.to_owned());
        }
        let status = res.status();
        if !status.is_success() {
            return Err(format!("{url} answered {status}").into());
        }
        let text = res.text().await?;
        let json = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .chain(std::iter::once(text.trim()))
            .find_map(|d| {
                serde_json::from_str::<Value>(d)
                    .ok()
                    .filter(|v| v.get("id").is_some())
            });
        Ok(json)
    };
    call(
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "idguard-policy-schema", "version": env!("CARGO_PKG_VERSION")}}}),
    )
    .await?;
    call(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await?;
    let reply = call(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await?
        .ok_or("no tools/list reply")?;
    reply.get("result").cloned().ok_or_else(|| {
        format!(
            "tools/list failed: {}",
            reply.get("error").cloned().unwrap_or_default()
        )
        .into()
    })
}
