//! What a new user meets on the way from the first `cargo run` to a real tenant (issue 16),
//! each as a real process or real HTTP on loopback:
//!
//! - the dev banner's shell lines are not configuration, so pasting them keeps dev mode;
//!   an `IDGUARD_*` variable that turns dev mode off is named in the error, and dev mode
//!   takes its options as flags (`--denials`, `--dev`);
//! - `config check` and `serve` refuse the same configurations, every problem at once,
//!   each named as written (file key, variable or option);
//! - metadata and challenges name the scope to ask for; refusals say why;
//! - CORS on the endpoints browsers fetch, `localhost` for a `127.0.0.1` resource, and a
//!   sign-in through the consent page in a real headless Chromium;
//! - the small things: broken pipes, colours in logs, `token mint` for apps and other
//!   tenants, `entra doctor`, `entra consent-url`, `policy explain` and `policy schema`.
//!
//! The browser test needs Chromium (`chromium`, `chromium-browser`, `google-chrome`, or
//! the path in `CHROMIUM`); without one it is skipped, except under CI (`CI` set).
//!
//! Over 800 lines: one test per step of the newcomer path (issue 16), each against the real
//! binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Launch, Proc, ROOT, Workdir, first_line, idguard, lines, mcp, tool_names};
use idguard_dev::DevEntra;
use serde_json::{Value, json};

/// A scratch directory with a copy of the sample policies.
fn workdir(name: &str) -> Workdir {
    Workdir::with_policies(&format!("new-{name}"))
}

/// `idguard args` in `dir` with `env`, its standard error read line by line.
fn spawn(args: &[&str], dir: Workdir, env: &[(&str, &str)]) -> Proc {
    Launch::in_dir(args, dir).env(env).stderr_lines().spawn()
}

/// `idguard --port 0` in dev mode: the process, the MCP URL and the exported lines.
fn dev(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, String, Vec<(String, String)>) {
    let mut all = vec!["--port", "0"];
    all.extend_from_slice(args);
    let proc = spawn(&all, workdir(name), env);
    let mut exports = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while exports.len() < 3 {
        let left = deadline.checked_duration_since(Instant::now()).unwrap();
        let line = proc.stdout().recv_timeout(left).unwrap();
        if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
            exports.push((k.to_owned(), v.to_owned()));
        }
    }
    let url = exports
        .iter()
        .find(|(k, _)| k == "MCP_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    (proc, url, exports)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

// ------------------------------------------------------------------ 1, 2, 7: dev mode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_prints_shell_lines_that_are_not_configuration() {
    let (proc, url, exports) = dev("banner", &[], &[]);
    let names: Vec<&str> = exports.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["MCP_URL", "ALICE", "BOB"]);
    // The printed commands work as printed: `cargo run --` under cargo, else a path or
    // `idguard` (installed).
    let mint = first_line(proc.stdout(), "with token mint", |l| {
        l.contains("token mint")
    });
    let command = mint.trim().split("token mint").next().unwrap().trim();
    assert!(
        command.starts_with("cargo run ") && command.ends_with(" --")
            || command == "idguard"
            || Path::new(command).is_file(),
        "{command:?} cannot be run as printed"
    );

    // Pasting the lines into the next start keeps dev mode.
    let pasted: Vec<(&str, &str)> = exports
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (_again, url2, _) = dev("banner-again", &[], &pasted);
    let alice = &exports[1].1;
    assert_eq!(tool_names(&http(), &url, alice).await.len(), 6);
    assert_ne!(url, url2);
}

#[test]
fn an_idguard_variable_turns_dev_mode_off_and_the_error_names_it() {
    for (var, value) in [
        ("IDGUARD_MCP_URL", "http://127.0.0.1:8400/mcp"),
        ("IDGUARD_MCP_DENIALS", "visible"),
    ] {
        let (status, err) = spawn(&["--port", "0"], workdir("by-env"), &[(var, value)])
            .ended(Duration::from_secs(30));
        assert!(!status.success());
        assert!(
            err.contains(&format!("`{var}`")) || err.contains(var),
            "{err}"
        );
        assert!(err.contains("dev mode") && err.contains("--dev"), "{err}");
        assert!(!err.contains("mcp.url"), "named as written: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_takes_its_options_as_flags() {
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "transfer_funds", "arguments": {"to": "x", "amount": 50000}}});
    // Default: a denied call looks like an unknown tool.
    let (_p, url, exports) = dev("hidden", &[], &[]);
    let reply = mcp(&http(), &url, &exports[1].1, &call).await;
    assert!(
        !reply.to_string().contains("second approver"),
        "hidden: {reply}"
    );
    // --denials visible: the policy's reason.
    let (_p, url, exports) = dev("visible", &["--denials", "visible"], &[]);
    let reply = mcp(&http(), &url, &exports[1].1, &call).await;
    assert!(reply.to_string().contains("second approver"), "{reply}");
    // --dev keeps the emulator with configuration around ([mcp] still applies).
    let (_p, url, exports) = dev("forced", &["--dev"], &[("IDGUARD_MCP_DENIALS", "visible")]);
    let reply = mcp(&http(), &url, &exports[1].1, &call).await;
    assert!(reply.to_string().contains("second approver"), "{reply}");
}

// ------------------------------------------------------------------ 3: one validation

/// `config check` and `serve` on `text` (and `env`): both refuse; what each printed.
fn both_refuse(name: &str, text: &str, env: &[(&str, &str)]) -> (String, String) {
    let dir = workdir(name);
    std::fs::write(dir.join("idguard.toml"), text).unwrap();
    let check = idguard()
        .args(["config", "check"])
        .envs(env.iter().copied())
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!check.status.success(), "config check accepted {text}");
    let (status, serve) = Launch::new(&["--port", "0"], &dir)
        .env(env)
        .stderr_lines()
        .spawn()
        .ended(Duration::from_secs(30));
    assert!(!status.success(), "serve started with {text}");
    (String::from_utf8(check.stdout).unwrap(), serve)
}

const TOKEN: &str = "[token]\ntenant = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"8c1a5e6f-0000-4000-8000-000000000001\"\nresource = \"https://mcp.contoso.com/mcp\"\n";

#[test]
fn config_check_and_serve_refuse_the_same_configurations() {
    let cases: &[(&str, &str, &str)] = &[
        ("listen", "[server]\nlisten = \"8400\"\n", "`server.listen`"),
        (
            "path",
            "[server]\nmcp_path = \"mcp\"\n",
            "`server.mcp_path`",
        ),
        (
            "policies",
            "[server]\npolicies = \"nowhere\"\n",
            "`server.policies`",
        ),
        ("denials", "[mcp]\ndenials = \"loud\"\n", "`mcp.denials`"),
        (
            "unknown",
            "[mcp]\nunknown_methods = \"ignore\"\n",
            "`mcp.unknown_methods`",
        ),
        (
            "session",
            "[mcp]\nsession_keys = [\"short\"]\n",
            "`mcp.session_keys`",
        ),
        (
            "upstream",
            "[server]\nupstream = \"127.0.0.1:9000/mcp\"\n",
            "`server.upstream`",
        ),
        ("qualified", "", "`token.required_scopes`"),
        (
            "placeholder",
            "[obo]\nclient_secret = \"s3cr3t-value\"\n[oauth]\nscopes = [\"mcp.tools\"]\nkeys = [\"change-me-to-48-random-bytes-from-openssl-rand-base64-48\"]\n",
            "`oauth.keys`",
        ),
        (
            "type",
            "[server]\nmax_connections = \"many\"\n",
            "`server.max_connections`",
        ),
        (
            "capacity",
            "[mcp]\nrequests_per_session = 0\n",
            "`mcp.requests_per_session`",
        ),
    ];
    for (name, extra, key) in cases {
        let token = if *name == "qualified" {
            format!(
                "{TOKEN}required_scopes = [\"api://8c1a5e6f-0000-4000-8000-000000000001/mcp.tools\"]\n"
            )
        } else {
            TOKEN.to_owned()
        };
        let (check, serve) = both_refuse(name, &format!("{token}{extra}"), &[]);
        assert!(check.contains(key), "{name}: config check: {check}");
        assert!(serve.contains(key), "{name}: serve: {serve}");
    }

    // Everything at once: an unknown key hides nothing, and a variable is named as such.
    let (check, serve) = both_refuse(
        "all",
        &format!(
            "{TOKEN}[mcp]\ndenyals = \"visible\"\ndenials = \"loud\"\n[server]\nlisten = \"x\"\n"
        ),
        &[("IDGUARD_TOKEN_LEEWAY", "soon")],
    );
    for text in [&check, &serve] {
        for needle in [
            "`mcp.denyals`",
            "did you mean `denials`",
            "`mcp.denials`",
            "`server.listen`",
            "environment: `IDGUARD_TOKEN_LEEWAY`",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        assert!(!text.contains("token.leeway"), "{text}");
    }
}

#[test]
fn the_annotated_example_checks_clean_once_its_placeholder_key_is_replaced() {
    let out = idguard()
        .args(["config", "check", "--config", "idguard.example.toml"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!out.status.success());
    assert!(
        text.contains("`oauth.keys`") && text.contains("placeholder"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "the placeholder only: {text}");
    let out = idguard()
        .args(["config", "check", "--config", "idguard.example.toml"])
        .env(
            "IDGUARD_OAUTH_KEYS",
            "k3Jx9Qv0P1u5e8ZbN2m7R4t6Y0w3S5d8F1h4J7l0Z2x5C8v1B4n7M0q3W6e9R2t5",
        )
        .current_dir(ROOT)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
}

// ------------------------------------------------------------------ 4, 6: scopes, reasons

/// A configured guard against `entra`, served on loopback: (base URL, MCP URL).
async fn configured(entra: &DevEntra, oauth: bool) -> String {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut builder = idguard::IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/mcp"));
    if oauth {
        entra.allow_redirect_uri(format!("{base}/callback"));
        builder = builder
            .obo(idguard::OboConfig {
                client_secret: Some(idguard::obo::Secret::new(entra.client_secret())),
                ..idguard::OboConfig::default()
            })
            .oauth(idguard::OAuthConfig {
                keys: vec![idguard::obo::Secret::new("k".repeat(48))],
                scopes: Some(vec!["mcp.tools".into()]),
                cimd_allow_loopback: true,
                ..idguard::OAuthConfig::default()
            });
    }
    let guard = builder.build().await.unwrap();
    let app = axum::Router::new()
        .route(
            "/mcp",
            axum::routing::get(|p: idguard::Principal| async move { axum::Json(p) }),
        )
        .route_layer(guard.validate_token_layer())
        .merge(guard.oauth_router());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn challenge(res: &reqwest::Response) -> String {
    res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn metadata_and_challenges_name_the_scope_and_refusals_say_why() {
    let entra = DevEntra::builder().start().await.unwrap();
    let base = configured(&entra, false).await;
    let scope = format!("api://{}/mcp.tools", entra.api_client_id());
    let prm: Value = http()
        .get(format!("{base}/.well-known/oauth-protected-resource/mcp"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["scopes_supported"], json!([scope]));
    let anonymous = http().get(format!("{base}/mcp")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(
        challenge(&anonymous).contains(&format!("scope=\"{scope}\"")),
        "{}",
        challenge(&anonymous)
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = entra
        .token_for("bob")
        .unwrap()
        .issued_at(now - 7200)
        .lifetime(Duration::from_secs(3600))
        .mint()
        .unwrap();
    let other_tenant = entra.token_for("carol").unwrap().mint().unwrap();
    let oversized = format!("{}{}", "a".repeat(20_000), ".b.c");
    for (token, reason) in [
        (expired.as_str(), "expired"),
        ("garbled.token.text", "not a well-formed JWT"),
        (other_tenant.as_str(), "tenant is not allowed"),
        (oversized.as_str(), "longer than"),
    ] {
        let res = http()
            .get(format!("{base}/mcp"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let ch = challenge(&res);
        assert!(ch.starts_with("Bearer error=\"invalid_token\""), "{ch}");
        assert!(
            ch.contains("error_description=\"") && ch.contains(reason),
            "{reason}: {ch}"
        );
        let head: String = token.chars().take(12).collect();
        assert!(!ch.contains(&head), "the token is never echoed: {ch}");
    }
}

// ------------------------------------------------------------------ 8: browsers and hosts

#[tokio::test]
async fn browsers_may_fetch_metadata_register_and_redeem_from_any_origin() {
    let entra = DevEntra::builder().start().await.unwrap();
    let base = configured(&entra, true).await;
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server",
        "/register",
        "/token",
        "/revoke",
    ] {
        let res = http()
            .request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("origin", "http://127.0.0.1:5173")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "{path}");
        assert_eq!(res.headers()["access-control-allow-origin"], "*", "{path}");
        assert!(
            res.headers()["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("content-type"),
            "{path}"
        );
    }
    let res = http()
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .header("origin", "http://127.0.0.1:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    // Pages a browser navigates to need no CORS, and get none.
    let res = http()
        .request(reqwest::Method::OPTIONS, format!("{base}/authorize"))
        .header("origin", "http://127.0.0.1:5173")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_resource_is_named_as_the_client_reached_it() {
    let (_p, url, _) = dev("localhost", &[], &[]);
    let port = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|r| r.strip_suffix("/mcp"))
        .unwrap();
    let local = format!("http://localhost:{port}/mcp");
    let client = reqwest::Client::builder()
        .no_proxy()
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)))
        .build()
        .unwrap();
    // The 401 points at metadata under the name used, and that metadata names the URL used.
    let res = client
        .post(&local)
        .header("content-type", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let ch = challenge(&res);
    let prm_url = format!("http://localhost:{port}/.well-known/oauth-protected-resource/mcp");
    assert!(
        ch.contains(&format!("resource_metadata=\"{prm_url}\"")),
        "{ch}"
    );
    let prm: Value = client
        .get(&prm_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], local);
    // Under its own name, the configured one.
    let prm: Value = client
        .get(format!(
            "http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], url);
}

// ------------------------------------------------------------------ 9: the small things

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let mut child = idguard()
        .args(["policy", "test", "policies"])
        .current_dir(ROOT)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line (`| head -0`).
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(141), "{err}");
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let proc = spawn(&["--port", "0"], workdir("colour"), &[]);
    let line = first_line(proc.stderr(), "saying listening", |l| {
        l.contains("listening")
    });
    assert!(!line.contains('\u{1b}'), "{line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mint_knows_apps_and_says_why_another_tenant_is_refused() {
    let (_p, url, _) = dev("mint", &[], &[]);
    let base = url.trim_end_matches("/mcp").to_owned();
    let mint = |who: &str| {
        idguard()
            .args(["token", "mint", "--user", who, "--url", &base])
            .output()
            .unwrap()
    };
    let reporter = mint("reporter");
    assert!(reporter.status.success(), "{reporter:?}");
    let token = String::from_utf8(reporter.stdout).unwrap();
    let me = http()
        .get(format!("{base}/me"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "the app's token is accepted");

    let carol = mint("carol");
    assert!(carol.status.success());
    let note = String::from_utf8(carol.stderr).unwrap();
    assert!(
        note.contains("Fabrikam") && note.contains("refuses"),
        "{note}"
    );
    let token = String::from_utf8(carol.stdout).unwrap();
    let res = http()
        .get(format!("{base}/me"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(challenge(&res).contains("tenant is not allowed"));

    let nobody = mint("mallory");
    assert!(!nobody.status.success());
    let err = String::from_utf8(nobody.stderr).unwrap();
    assert!(err.contains("reporter") && err.contains("alice"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_doctor_notices_a_trailing_slash() {
    let entra = DevEntra::builder().start().await.unwrap();
    let dir = workdir("doctor");
    let write = |resource: &str| {
        std::fs::write(
            dir.join("idguard.toml"),
            format!(
                "[token]\nauthority = \"{}\"\ntenant = \"{}\"\nclient_id = \"{}\"\nresource = \"{resource}\"\n",
                entra.url(),
                entra.tenant_id(),
                entra.api_client_id()
            ),
        )
        .unwrap();
    };
    let doctor = || {
        let dir = dir.to_path_buf();
        async move {
            tokio::task::spawn_blocking(move || {
                idguard()
                    .args(["entra", "doctor"])
                    .current_dir(dir)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    write("http://127.0.0.1:8400/mcp/");
    let out = doctor().await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("FAIL `token.resource`"), "{text}");
    write("http://127.0.0.1:8400/mcp");
    let out = doctor().await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
}

#[test]
fn entra_consent_url_has_a_redirect_uri_and_the_apis_scopes() {
    let dir = workdir("consent");
    std::fs::write(
        dir.join("idguard.toml"),
        format!("{TOKEN}[obo]\nclient_secret = \"s\"\n[obo.apis]\ngraph = [\"https://graph.microsoft.com/User.Read\"]\n"),
    )
    .unwrap();
    let out = idguard()
        .args(["entra", "consent-url"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let url = reqwest::Url::parse(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(
        url.path(),
        "/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0/adminconsent"
    );
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "8c1a5e6f-0000-4000-8000-000000000001");
    assert_eq!(q["scope"], "https://graph.microsoft.com/User.Read");
    assert_eq!(q["redirect_uri"], "https://mcp.contoso.com/admin-consent");
    assert!(!q["state"].is_empty());
}

#[test]
fn policy_tools_say_what_they_do_with_unknown_names_and_missing_directories() {
    let out = idguard()
        .args([
            "policy",
            "explain",
            "--user",
            "alice",
            "--tool",
            "delet_document",
        ])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("`delet_document` is not a tool") && err.contains("`delete_document`"),
        "{err}"
    );

    let dir = Workdir::empty("new-schema");
    std::fs::write(
        dir.join("tools.json"),
        json!({"tools": [{"name": "delete_document", "inputSchema": {"type": "object",
            "properties": {"id": {"type": "string"}}}, "_meta": {"fastmcp": {"tags": ["documents"]}}}]})
        .to_string(),
    )
    .unwrap();
    let out = idguard()
        .args(["policy", "schema", "--tools", "tools.json"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text} {out:?}");
    assert!(dir.join("policies/schema.cedarschema").is_file(), "{text}");
    assert!(
        dir.join("policies/arguments.cedarschema").is_file(),
        "{text}"
    );
}

#[test]
fn fastmcp_tags_are_tool_tags() {
    let tool = json!({"name": "list_documents", "_meta": {"fastmcp": {"tags": ["documents"]}}});
    let info = idguard::policy::ToolInfo::from_mcp(&tool).unwrap();
    assert_eq!(info.tags, ["documents"]);
    let both = json!({"name": "t", "_meta": {"tags": ["a"], "fastmcp": {"tags": ["b"]}}});
    assert_eq!(
        idguard::policy::ToolInfo::from_mcp(&both).unwrap().tags,
        ["a", "b"]
    );
}

// ------------------------------------------------------------------ 8: a real browser

/// Chromium, or `None` (then the browser test is skipped, unless under CI).
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
    })
}

/// A minimal Chrome DevTools Protocol client over one WebSocket (RFC 6455: masked text
/// frames out, unmasked frames in).
struct Cdp {
    stream: tokio::net::TcpStream,
    next_id: u64,
}

impl Cdp {
    async fn connect(ws_url: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = ws_url.strip_prefix("ws://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Self { stream, next_id: 0 }
    }

    async fn send_text(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | u8::try_from(n).unwrap()),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = *uuid::Uuid::new_v4().as_bytes();
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn read_message(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.unwrap();
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.stream.read_exact(&mut b).await.unwrap();
                    usize::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.stream.read_exact(&mut b).await.unwrap();
                    usize::try_from(u64::from_be_bytes(b)).unwrap()
                }
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.unwrap();
            match opcode {
                0 | 1 => message.extend_from_slice(&payload),
                8 => panic!("the browser closed the connection"),
                _ => continue, // ping/pong: Chrome sends none unasked
            }
            if fin {
                return String::from_utf8(message).unwrap();
            }
        }
    }

    /// Calls `method` and returns its `result` (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send_text(&json!({"id": id, "method": method, "params": params}).to_string())
            .await;
        loop {
            let message: Value = serde_json::from_str(&self.read_message().await).unwrap();
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy (20 s at most); its value.
    async fn until(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self
                .eval(&format!(
                    "(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()"
                ))
                .await;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            let href = self.eval("location.href").await;
            assert!(
                Instant::now() < deadline,
                "{what}: never true; at {href}: {}",
                self.eval("document.body && document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The page of a browser-based MCP client on its own origin: discovers the server from its
/// MCP URL (as given: `localhost`), registers, sends the browser to the consent page, and
/// back on `/cb` redeems the code — every call a cross-origin `fetch`.
const CLIENT_PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>browser client</title>
<body><script>
const MCP_URL = "__MCP_URL__";
const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
async function start() {
  const u = new URL(MCP_URL);
  const prm = await (await fetch(`${u.origin}/.well-known/oauth-protected-resource${u.pathname}`)).json();
  if (prm.resource !== MCP_URL) throw new Error(`resource ${prm.resource} does not match ${MCP_URL}`);
  const as = await (await fetch(`${prm.authorization_servers[0]}/.well-known/oauth-authorization-server`)).json();
  const reg = await (await fetch(as.registration_endpoint, {method: "POST",
    headers: {"content-type": "application/json"},
    body: JSON.stringify({client_name: "Browser test client", redirect_uris: [`${location.origin}/cb`],
      token_endpoint_auth_method: "none", grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"]})})).json();
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  sessionStorage.setItem("flow", JSON.stringify({verifier, client_id: reg.client_id,
    token_endpoint: as.token_endpoint, resource: prm.resource}));
  const q = new URLSearchParams({response_type: "code", client_id: reg.client_id,
    redirect_uri: `${location.origin}/cb`, code_challenge: challenge, code_challenge_method: "S256",
    state: "st", scope: prm.scopes_supported.join(" "), resource: prm.resource});
  location.href = `${as.authorization_endpoint}?${q}`;
}
async function finish() {
  const flow = JSON.parse(sessionStorage.getItem("flow"));
  const q = new URLSearchParams(location.search);
  const res = await fetch(flow.token_endpoint, {method: "POST",
    headers: {"content-type": "application/x-www-form-urlencoded"},
    body: new URLSearchParams({grant_type: "authorization_code", code: q.get("code"),
      redirect_uri: `${location.origin}/cb`, client_id: flow.client_id, code_verifier: flow.verifier,
      resource: flow.resource})});
  window.result = {status: res.status, state: q.get("state"), body: await res.json()};
}
(location.pathname === "/cb" ? finish() : start()).catch((e) => { window.result = {error: String(e)}; });
</script></body>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_through_the_consent_page_in_dev_mode() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs Chromium for the browser test"
        );
        eprintln!("skipped: no Chromium (install `chromium`, or set CHROMIUM)");
        return;
    };
    let (_idguard, url, _) = dev("browser", &[], &[]);
    let port = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|r| r.strip_suffix("/mcp"))
        .unwrap()
        .to_owned();
    // The client names the server as users often do: localhost.
    let mcp_url = format!("http://localhost:{port}/mcp");

    // The client's own origin.
    let page = CLIENT_PAGE.replace("__MCP_URL__", &mcp_url);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let client_origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || {
        let page = page.clone();
        async move { axum::response::Html(page) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let profile = std::env::temp_dir().join(format!("idguard-chromium-{}", uuid::Uuid::new_v4()));
    let mut browser = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-port=0",
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(Child, PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let err = lines(browser.stderr.take().unwrap());
    let _browser = Kill(browser, profile);
    let line = first_line(&err, "with the DevTools address", |l| {
        l.starts_with("DevTools listening on ")
    });
    let ws = line.trim_start_matches("DevTools listening on ").trim();
    let devtools = ws
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .unwrap();
    let targets: Value = http()
        .get(format!("http://{devtools}/json/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page_ws = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .unwrap()
        .to_owned();
    let mut cdp = Cdp::connect(&page_ws).await;
    cdp.call("Page.enable", json!({})).await;
    cdp.call("Network.enable", json!({})).await;

    // Discovery and registration (cross-origin fetches), then the consent page.
    cdp.call("Page.navigate", json!({"url": format!("{client_origin}/")}))
        .await;
    let consent = format!("http://127.0.0.1:{port}/authorize");
    cdp.until(
        "the consent page",
        &format!(
            "location.href.startsWith('{consent}') && document.querySelector('button[value=approve]') !== null"
        ),
    )
    .await;
    let text = cdp.eval("document.body.innerText").await;
    assert!(
        text.as_str().unwrap().contains("Browser test client"),
        "{text}"
    );
    // The consent page's cookie (`__Host-`, `Secure`) is kept over http on loopback.
    let cookies = cdp.call("Network.getAllCookies", json!({})).await;
    assert!(
        cookies["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "__Host-idguard-csrf"),
        "{cookies}"
    );
    cdp.eval("document.querySelector('button[value=approve]').click()")
        .await;
    // The emulator's account picker: Contoso's users.
    let alice = cdp
        .until(
            "the account picker",
            "[...document.querySelectorAll('a')].some(a => a.href.includes('alice'))",
        )
        .await;
    assert_eq!(alice, json!(true));
    cdp.eval("[...document.querySelectorAll('a')].find(a => a.href.includes('alice')).click()")
        .await;
    // Back at the client, which redeems its code.
    let result = cdp.until("the client's result", "window.result").await;
    assert!(result.get("error").is_none(), "{result}");
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["state"], "st");
    let token = result["body"]["access_token"].as_str().unwrap().to_owned();
    assert!(result["body"]["refresh_token"].is_string(), "{result}");

    // The token is alice's.
    assert_eq!(
        tool_names(&http(), &url, &token).await.len(),
        6,
        "alice's tools"
    );
}
