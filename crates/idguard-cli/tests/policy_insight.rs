//! Seeing what a policy change will do before it is enforced: shadow policies (never
//! obeyed, disagreements counted and traced), the live decision trace, `idguard policy
//! diff` and `idguard policy matrix`, and the admin endpoint `/admin/decisions`.
//!
//! Over 800 lines: the shadow, diff and trace tests (issue 17), each against the real
//! binary, and their property test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Proc, ROOT, Workdir, copy_dir, health, mcp, metrics, samples};
use idguard::Principal;
use idguard::policy::cases::caller;
use idguard::policy::{
    Decision, DecisionEvent, Disagreement, Item, Outcome, Phase, PolicyEngine, PromptInfo,
    ResourceInfo, ToolInfo, TraceError, TraceFilter,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn schema() -> String {
    std::fs::read_to_string(samples().join("schema.cedarschema")).unwrap()
}

fn user(name: &str) -> Principal {
    caller(&idguard_dev::named_callers(), Some(name), &Map::new(), None).unwrap()
}

fn sample_tools() -> Vec<Item> {
    idguard::policy::cases::load_tools(&samples())
        .unwrap()
        .into_values()
        .map(Item::Tool)
        .collect()
}

fn tool(name: &str) -> Item {
    sample_tools().into_iter().find(|i| i.id() == name).unwrap()
}

/// The sample policies in force, and as shadow the samples where readers may also
/// transfer funds and no field is redacted.
fn shadowed() -> (PolicyEngine, Workdir) {
    let next = Workdir::with_samples("shadow");
    next.write(
        "extra.cedar",
        r#"@id("readers-transfer")
permit (principal in Role::"Tools.Read", action == Action::"call_tool", resource == Tool::"transfer_funds");
"#,
    );
    next.edit("redaction.cedar", "@redact(\"owner_email\")\n", "");
    let engine = PolicyEngine::from_dir(samples())
        .unwrap()
        .with_shadow(PolicyEngine::from_dir(next.path()).unwrap());
    (engine, next)
}

#[test]
fn shadow_disagreements_are_counted_by_phase_direction_and_item() {
    let (engine, _next) = shadowed();
    let bob = user("bob");
    let alice = user("alice");
    let transfer = tool("transfer_funds");
    let read = tool("read_document");
    let args = json!({"amount": 250, "to": "ACME"});

    // The enforced answers are the samples' answers.
    let d = engine.decide(&bob, &transfer, Phase::Call, args.as_object());
    assert!(!d.is_allow(), "{d:?}");
    let d = engine.decide(&bob, &read, Phase::Call, None);
    assert_eq!(
        d,
        PolicyEngine::from_dir(samples())
            .unwrap()
            .decide(&bob, &read, Phase::Call, None)
    );
    // Again, answered by the call cache on both sides: counted again.
    engine.decide(&bob, &read, Phase::Call, None);
    // Agreement is not counted as a disagreement.
    assert!(
        engine
            .decide(&alice, &transfer, Phase::Call, args.as_object())
            .is_allow()
    );
    // A list: bob does not see transfer_funds; the shadow would show it.
    let tools = sample_tools();
    let visible = engine.visible(&bob, &tools);
    let shown: BTreeSet<&str> = tools
        .iter()
        .zip(&visible)
        .filter(|(_, v)| **v)
        .map(|(t, _)| t.id())
        .collect();
    assert!(!shown.contains("transfer_funds"), "{shown:?}");
    // The same list again comes from the cache on both sides, and still compares.
    engine.visible(&bob, &tools);

    let stats = engine.shadow_stats().unwrap();
    assert_eq!(stats.call_compared, 4);
    assert_eq!(stats.list_compared, 2 * tools.len() as u64);
    // [enforced allow/shadow deny, enforced deny/shadow allow, obligations]
    assert_eq!(stats.call_disagreements, [0, 1, 2], "{stats:?}");
    assert_eq!(stats.list_disagreements, [0, 2, 0], "{stats:?}");
    let by_item: Vec<(&str, [u64; 3])> = stats
        .items
        .iter()
        .map(|i| (i.item.as_str(), i.counts))
        .collect();
    assert_eq!(
        by_item,
        [("read_document", [0, 0, 2]), ("transfer_funds", [0, 3, 0])]
    );
    assert_eq!(
        Disagreement::ALL.map(Disagreement::as_str),
        [
            "enforced_allow_shadow_deny",
            "enforced_deny_shadow_allow",
            "obligations"
        ]
    );
}

#[test]
fn no_shadow_set_no_shadow_work() {
    let engine = PolicyEngine::from_dir(samples()).unwrap();
    assert!(engine.shadow().is_none());
    assert!(engine.shadow_stats().is_none());
    engine.decide(&user("bob"), &tool("whoami"), Phase::Call, None);
    engine.visible(&user("bob"), &sample_tools());
    assert!(engine.shadow_stats().is_none());
}

#[test]
fn the_shadow_set_reloads_on_its_own() {
    let next = Workdir::with_samples("shadow-reload");
    let engine = PolicyEngine::from_dir(samples())
        .unwrap()
        .with_shadow(PolicyEngine::from_dir(next.path()).unwrap());
    let bob = user("bob");
    let transfer = tool("transfer_funds");
    engine.decide(&bob, &transfer, Phase::Call, None);
    assert_eq!(engine.shadow_stats().unwrap().call_disagreements, [0, 0, 0]);

    next.write(
        "extra.cedar",
        r#"@id("readers-transfer") permit (principal in Role::"Tools.Read", action, resource == Tool::"transfer_funds");"#,
    );
    let shadow = engine.shadow().unwrap();
    assert_eq!(shadow.reload().unwrap(), 2);
    assert_eq!(shadow.status().epoch, 2);
    assert_eq!(engine.epoch(), 1, "the policies in force did not change");
    assert!(!engine.decide(&bob, &transfer, Phase::Call, None).is_allow());
    assert_eq!(engine.shadow_stats().unwrap().call_disagreements, [0, 1, 0]);

    // A broken shadow edit keeps the shadow policies loaded and says so.
    next.write("broken.cedar", "permit (");
    assert!(shadow.reload().is_err());
    assert!(shadow.status().last_error.is_some());
    assert!(engine.status().last_error.is_none());
}

#[tokio::test]
async fn the_trace_shows_decisions_with_the_shadow_answer_and_no_arguments() {
    let (engine, _next) = shadowed();
    let bob = user("bob");
    let mut trace = engine.trace();
    let args = json!({"amount": 250, "to": "SECRET-PAYEE-7f3a"});
    engine.decide(&bob, &tool("transfer_funds"), Phase::Call, args.as_object());
    let event = trace.recv().await.unwrap();
    assert_eq!(event.item, "transfer_funds");
    assert_eq!(event.phase, Phase::Call);
    assert_eq!(event.answer.decision, Outcome::Deny);
    assert!(!event.cached);
    let shadow = event.shadow.as_ref().unwrap();
    assert!(!shadow.agrees);
    assert_eq!(shadow.answer.decision, Outcome::Allow);
    assert_eq!(shadow.answer.policies, ["readers-transfer"]);
    let text = serde_json::to_string(&*event).unwrap();
    assert!(!text.contains("SECRET-PAYEE"), "{text}");
    assert!(!text.contains("arguments"), "{text}");
    assert_eq!(
        event.caller.upn.as_deref(),
        bob.upn(),
        "the caller is named: {text}"
    );

    // A call answered by the cache says so; a redaction is an obligation.
    let read = tool("read_document");
    engine.decide(&bob, &read, Phase::Call, None);
    let first = trace.recv().await.unwrap();
    assert!(!first.cached);
    assert_eq!(first.answer.redact, ["owner_email"]);
    assert!(
        !first.shadow.as_ref().unwrap().agrees,
        "the shadow redacts nothing"
    );
    engine.decide(&bob, &read, Phase::Call, None);
    assert!(trace.recv().await.unwrap().cached);

    // A list: one event per item, evaluated first, from the cache the second time.
    let tools = sample_tools();
    engine.visible(&bob, &tools);
    let mut listed = Vec::new();
    for _ in &tools {
        listed.push(trace.recv().await.unwrap());
    }
    assert!(listed.iter().all(|e| e.phase == Phase::List && !e.cached));
    let transfer = listed.iter().find(|e| e.item == "transfer_funds").unwrap();
    assert_eq!(transfer.answer.decision, Outcome::Deny);
    assert_eq!(
        transfer.shadow.as_ref().unwrap().answer.decision,
        Outcome::Allow
    );
    let whoami = listed.iter().find(|e| e.item == "whoami").unwrap();
    assert_eq!(
        whoami.answer.policies,
        ["contoso-everyone-whoami", "readers-use-read-only-tools"]
    );
    engine.visible(&bob, &tools);
    for _ in &tools {
        assert!(trace.recv().await.unwrap().cached);
    }
    assert!(trace.try_recv().unwrap().is_none());
}

#[test]
fn trace_filters_match_caller_item_outcome_phase_and_disagreement() {
    let (engine, _next) = shadowed();
    let mut trace = engine.trace();
    engine.decide(&user("bob"), &tool("transfer_funds"), Phase::Call, None);
    engine.decide(&user("alice"), &tool("whoami"), Phase::List, None);
    let bob: DecisionEvent = (*trace.try_recv().unwrap().unwrap()).clone();
    let alice: DecisionEvent = (*trace.try_recv().unwrap().unwrap()).clone();
    let filter = |q: Value| -> TraceFilter { serde_json::from_value(q).unwrap() };
    let upn = user("bob").upn().unwrap().to_uppercase();
    for (q, bob_passes, alice_passes) in [
        (json!({}), true, true),
        (json!({"caller": upn}), true, false),
        (json!({"caller": user("alice").object_id()}), false, true),
        (json!({"item": "whoami"}), false, true),
        (json!({"outcome": "deny"}), true, false),
        (json!({"phase": "list"}), false, true),
        (json!({"disagreements": true}), true, false),
    ] {
        let f = filter(q.clone());
        assert_eq!(f.matches(&bob), bob_passes, "{q}");
        assert_eq!(f.matches(&alice), alice_passes, "{q}");
    }
}

#[test]
fn a_slow_listener_loses_events_and_never_slows_decisions() {
    let engine = PolicyEngine::from_dir(samples()).unwrap();
    let bob = user("bob");
    let whoami = tool("whoami");
    let mut slow = engine.trace();
    let started = Instant::now();
    for _ in 0..10_000 {
        engine.decide(&bob, &whoami, Phase::Call, None);
    }
    // Bounded, and nobody waited for the listener.
    assert!(started.elapsed() < Duration::from_secs(30));
    match slow.try_recv() {
        Err(TraceError::Lagged(n)) => assert!(n >= 10_000 - 4096, "{n}"),
        other => panic!("expected lag, got {other:?}"),
    }
    // After the lag report, the newest events are there.
    assert!(slow.try_recv().unwrap().is_some());
}

#[test]
fn without_a_listener_no_event_is_kept() {
    let engine = PolicyEngine::from_dir(samples()).unwrap();
    let bob = user("bob");
    let whoami = tool("whoami");
    drop(engine.trace());
    engine.decide(&bob, &whoami, Phase::Call, None);
    let mut late = engine.trace();
    assert!(
        late.try_recv().unwrap().is_none(),
        "decided before listening"
    );
    engine.decide(&bob, &whoami, Phase::Call, None);
    assert!(late.try_recv().unwrap().is_some());
}

// ---------------------------------------------------------------------------------------
// Property: a shadow set never changes an enforced answer.

const ROLES: [&str; 3] = ["R0", "R1", "R2"];
const TOOLS: [&str; 3] = ["t0", "t1", "t2"];

fn arb_policy() -> impl Strategy<Value = String> {
    let principal = prop_oneof![
        Just("principal".to_owned()),
        (0..ROLES.len()).prop_map(|r| format!("principal in Role::\"{}\"", ROLES[r])),
    ];
    // Conditions on tools only apply to `call_tool` (strict validation).
    let tool_scope = (
        prop_oneof![
            Just("resource".to_owned()),
            (0..TOOLS.len()).prop_map(|t| format!("resource == Tool::\"{}\"", TOOLS[t])),
        ],
        prop_oneof![
            Just(String::new()),
            Just("when { resource.read_only }".to_owned()),
            Just("when { resource.destructive && context.phase == \"call\" }".to_owned()),
            Just("unless { context.mfa }".to_owned()),
            Just("when { resource.tags.contains(\"x\") }".to_owned()),
            Just(
                "when { context has arguments && context.arguments has amount && context.arguments.amount > 10 }"
                    .to_owned()
            ),
        ],
    )
        .prop_map(|(r, c)| format!("action == Action::\"call_tool\", {r}) {c}"));
    let other_scope = prop_oneof![
        Just("action, resource)".to_owned()),
        Just("action == Action::\"read_resource\", resource) when { resource.uri like \"docs://public/*\" }".to_owned()),
        Just("action == Action::\"get_prompt\", resource == Prompt::\"p\")".to_owned()),
    ];
    let scope = prop_oneof![3 => tool_scope, 1 => other_scope];
    (any::<bool>(), principal, scope, 0..4u8).prop_map(|(permit, principal, scope, note)| {
        let (effect, annotation) = if permit {
            (
                "permit",
                match note {
                    0 => "@redact(\"secret\")\n",
                    1 => "@redact(\"a,b\")\n",
                    _ => "",
                },
            )
        } else {
            (
                "forbid",
                match note {
                    0 => "@reason(\"no\")\n",
                    1 => "@reason(\"mfa please\")\n@step_up(\"mfa\")\n",
                    _ => "",
                },
            )
        };
        format!("{annotation}{effect} ({principal}, {scope};")
    })
}

fn arb_policies() -> impl Strategy<Value = String> {
    prop::collection::vec(arb_policy(), 0..7).prop_map(|ps| {
        ps.iter()
            .enumerate()
            .map(|(i, p)| format!("@id(\"p{i}\")\n{p}\n"))
            .collect()
    })
}

fn arb_item() -> impl Strategy<Value = Item> {
    prop_oneof![
        3 => (0..TOOLS.len(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(t, ro, de, x)| {
            let mut tool = ToolInfo::new(TOOLS[t]).read_only(ro).destructive(de);
            if x {
                tool.tags = vec!["x".into()];
            }
            Item::Tool(tool)
        }),
        1 => prop_oneof![Just("docs://public/a"), Just("docs://private/b")]
            .prop_map(|u| Item::Resource(ResourceInfo { uri: u.into() })),
        1 => prop_oneof![Just("p"), Just("q")].prop_map(|n| Item::Prompt(PromptInfo { name: n.into() })),
    ]
}

fn arb_caller() -> impl Strategy<Value = Principal> {
    (
        prop::collection::vec(any::<bool>(), ROLES.len()),
        any::<bool>(),
        0..3u8,
    )
        .prop_map(|(held, mfa, who)| {
            let roles: Vec<&str> = ROLES
                .iter()
                .zip(held)
                .filter(|(_, h)| *h)
                .map(|(r, _)| *r)
                .collect();
            Principal::from_unvalidated_claims(&json!({
                "tid": "t", "oid": format!("o{who}"), "scp": "s", "roles": roles,
                "amr": if mfa { json!(["pwd", "mfa"]) } else { json!(["pwd"]) },
            }))
            .unwrap()
        })
}

fn engine(schema: &str, arguments: &str, policies: &str) -> PolicyEngine {
    PolicyEngine::from_sources(schema, Some(arguments), [("p.cedar", policies)])
        .unwrap_or_else(|e| panic!("{e}\n{policies}"))
}

const ARGUMENTS: &str = r#"type Arguments = { "amount"?: Long };"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_shadow_set_never_changes_an_enforced_answer(
        enforced in arb_policies(),
        shadow in arb_policies(),
        requests in prop::collection::vec(
            (arb_caller(), arb_item(), prop::option::of(0..30i64)), 1..12),
    ) {
        let schema = schema();
        let alone = engine(&schema, ARGUMENTS, &enforced);
        let watched = engine(&schema, ARGUMENTS, &enforced)
            .with_shadow(engine(&schema, ARGUMENTS, &shadow));
        // A listener too: tracing must not change answers either.
        let mut trace = watched.trace();
        for (caller, item, amount) in &requests {
            let args = amount.map(|a| json!({"amount": a}));
            let args = args.as_ref().and_then(Value::as_object);
            for phase in [Phase::List, Phase::Call] {
                // Twice: evaluated, then (where allowed) from the call cache.
                for _ in 0..2 {
                    prop_assert_eq!(
                        alone.decide(caller, item, phase, args),
                        watched.decide(caller, item, phase, args),
                        "{:?} {:?} {:?}\nenforced:\n{}\nshadow:\n{}", caller.roles(), item, phase, enforced, shadow
                    );
                }
            }
        }
        let items: Vec<Item> = requests.iter().map(|(_, i, _)| i.clone()).collect();
        for (caller, _, _) in &requests {
            for _ in 0..2 {
                prop_assert_eq!(alone.visible(caller, &items), watched.visible(caller, &items));
            }
        }
        prop_assert!(watched.shadow_stats().unwrap().call_compared >= requests.len() as u64);
        while let Ok(Some(_)) | Err(TraceError::Lagged(_)) = trace.try_recv() {}
    }
}

// ---------------------------------------------------------------------------------------
// `idguard policy diff` and `matrix`, run as the binary.

fn idguard(args: &[&str]) -> (i32, String) {
    let out = common::idguard()
        .current_dir(ROOT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// `(change, caller, item, phase, case)` of every flip `policy diff` reports as JSON.
fn flips(old: &Path, new: &Path) -> BTreeSet<(String, String, String, String, String)> {
    let (code, out) = idguard(&[
        "policy",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let flips: BTreeSet<_> = json["flips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
            (s("change"), s("caller"), s("item"), s("phase"), s("case"))
        })
        .collect();
    assert_eq!(code, i32::from(!flips.is_empty()), "{out}");
    assert_eq!(json["differs"], !flips.is_empty());
    // Every side names the policies that determined it.
    for f in json["flips"].as_array().unwrap() {
        for side in ["before", "after"] {
            let d = &f[side];
            assert!(d["decision"] == "allow" || d["decision"] == "deny", "{f}");
            if d["decision"] == "allow" {
                assert!(!d["policies"].as_array().unwrap().is_empty(), "{f}");
            }
        }
    }
    flips
}

fn flip(
    change: &str,
    caller: &str,
    item: &str,
    phase: &str,
    case: &str,
) -> (String, String, String, String, String) {
    (
        change.into(),
        caller.into(),
        item.into(),
        phase.into(),
        case.into(),
    )
}

#[test]
fn diff_of_identical_policies_is_empty_and_exits_zero() {
    assert!(flips(&samples(), &samples()).is_empty());
    let (code, out) = idguard(&["policy", "diff", "policies", "policies"]);
    // Relative to the crate (cargo runs tests there).
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 decisions differ"), "{out}");
}

#[test]
fn diff_reports_exactly_the_flipped_decisions() {
    // The tenant-wide whoami moves to another tenant: only the Contoso caller without
    // roles loses it (readers and admins keep it through other policies).
    let next = Workdir::with_samples("diff-tenant");
    next.edit(
        "tenant.cedar",
        "principal in Tenant::\"b0f1a3c2-7d4e-4f6a-9c8b-1e2d3f4a5b6c\",\n  action == Action::\"call_tool\",\n  resource == Tool::\"whoami\"",
        "principal in Tenant::\"00000000-0000-4000-8000-00000000ffff\",\n  action == Action::\"call_tool\",\n  resource == Tool::\"whoami\"",
    );
    let contoso = "caller {roles=[], tid=b0f1a3c2…}";
    assert_eq!(
        flips(&samples(), next.path()),
        BTreeSet::from([
            flip("denied", contoso, "whoami", "list", ""),
            flip("denied", contoso, "whoami", "call", ""),
        ])
    );

    // No more redaction: an obligation change for every reader's call, and the case that
    // reads a document; lists do not redact, so they do not change.
    let next = Workdir::with_samples("diff-redact");
    next.edit("redaction.cedar", "@redact(\"owner_email\")\n", "");
    let app = "app {azp=7e9d8c6b…, roles=[Tools.Read]}";
    assert_eq!(
        flips(&samples(), next.path()),
        BTreeSet::from([
            flip("obligations", "bob", "read_document", "call", ""),
            flip("obligations", "carol", "read_document", "call", ""),
            flip("obligations", app, "read_document", "call", ""),
            flip(
                "obligations",
                "bob",
                "read_document",
                "call",
                "readers get documents without the owner's email"
            ),
        ])
    );

    // No step-up rule: the admin without MFA may delete, in the grid and in its case.
    let next = Workdir::with_samples("diff-mfa");
    std::fs::remove_file(next.path().join("mfa.cedar")).unwrap();
    assert_eq!(
        flips(&samples(), next.path()),
        BTreeSet::from([
            flip("allowed", "alice (no mfa)", "delete_document", "call", ""),
            flip(
                "allowed",
                "alice (no mfa)",
                "delete_document",
                "call",
                "admin without MFA must step up for a destructive tool"
            ),
        ])
    );

    // A lower cap only shows in the cases that carry arguments.
    let next = Workdir::with_samples("diff-cap");
    next.edit("limits.cedar", "amount > 10000", "amount > 100");
    let finance = "caller {groups=[3a9f7c1e…], roles=[]}";
    let got = flips(&samples(), next.path());
    assert_eq!(
        got,
        BTreeSet::from([
            flip(
                "denied",
                "alice",
                "transfer_funds",
                "call",
                "finance group member transfers a small amount"
            ),
            flip(
                "denied",
                finance,
                "transfer_funds",
                "call",
                "a finance member without the admin role transfers"
            ),
            // Denied either way; now with the cap's reason.
            flip(
                "obligations",
                "bob",
                "transfer_funds",
                "call",
                "someone outside the finance group cannot transfer"
            ),
        ])
    );
}

#[test]
fn diff_speaks_text_and_markdown_and_fails_on_broken_policies() {
    let next = Workdir::with_samples("diff-formats");
    next.edit("redaction.cedar", "@redact(\"owner_email\")\n", "");
    let new = next.path().to_str().unwrap();
    let old = samples();
    let old = old.to_str().unwrap();
    let (code, text) = idguard(&["policy", "diff", old, new]);
    assert_eq!(code, 1);
    assert!(text.contains("4 decisions differ"), "{text}");
    assert!(
        text.contains("OBLIGATIONS bob | tool read_document | call"),
        "{text}"
    );
    assert!(
        text.contains("readers-see-documents-without-owner-email [redaction.cedar:"),
        "the determining policies with their place: {text}"
    );
    let (code, md) = idguard(&["policy", "diff", old, new, "--format", "markdown"]);
    assert_eq!(code, 1);
    assert!(
        md.starts_with("### Policy diff: 4 decisions change"),
        "{md}"
    );
    assert!(
        md.contains("| change | caller | item | phase | before | after |"),
        "{md}"
    );

    next.write("broken.cedar", "permit (");
    let (code, out) = idguard(&["policy", "diff", old, new]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("broken.cedar"), "{out}");
}

#[test]
fn diff_and_matrix_take_more_principals_and_a_tool_catalog() {
    let dir = Workdir::with_samples("principals");
    dir.write(
        "people.toml",
        r#"
[[principal]]
name = "reader without mfa"
claims = { roles = ["Tools.Read"] }
mfa = false

[[principal]]
user = "alice"
claims = { roles = ["Tools.Admin"] }
"#,
    );
    dir.write(
        "catalog.json",
        r#"{"tools": [{"name": "purge", "annotations": {"destructiveHint": true}}, {"name": "peek", "annotations": {"readOnlyHint": true}}]}"#,
    );
    let people = dir.path().join("people.toml");
    let catalog = dir.path().join("catalog.json");
    let (code, out) = idguard(&[
        "policy",
        "matrix",
        samples().to_str().unwrap(),
        "--principals",
        people.to_str().unwrap(),
        "--tools",
        catalog.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let m: Value = serde_json::from_str(&out).unwrap();
    let labels: Vec<&str> = m["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert!(labels.contains(&"reader without mfa"), "{labels:?}");
    let items: Vec<&str> = m["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        items[..2],
        ["purge", "peek"],
        "the catalog first: {items:?}"
    );
    let reader = labels
        .iter()
        .position(|l| *l == "reader without mfa")
        .unwrap();
    let cell = |s: usize, item: &str| {
        let j = items.iter().position(|i| *i == item).unwrap();
        m["cells"][s][j].clone()
    };
    assert_eq!(cell(reader, "peek")["call"]["decision"], "allow");
    assert_eq!(cell(reader, "purge")["list"]["decision"], "deny");
}

#[test]
fn matrix_agrees_with_explain_for_every_cell() {
    let (code, out) = idguard(&[
        "policy",
        "matrix",
        samples().to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let m: Value = serde_json::from_str(&out).unwrap();
    let subjects = m["subjects"].as_array().unwrap();
    let items = m["items"].as_array().unwrap();
    assert!(subjects.len() >= 8 && items.len() >= 9, "{out}");
    let scratch = Workdir::with_samples("explain");
    let mut jobs = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        let claims = scratch.path().join(format!("caller-{i}.json"));
        std::fs::write(&claims, s["claims"].to_string()).unwrap();
        for (j, item) in items.iter().enumerate() {
            for phase in ["list", "call"] {
                jobs.push((i, j, phase, claims.clone(), item.clone()));
            }
        }
    }
    let dir = samples();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let chunks: Vec<_> = jobs.chunks(jobs.len().div_ceil(8)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (dir, m) = (&dir, &m);
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for (i, j, phase, claims, item) in chunk {
                        let flag = match item["kind"].as_str().unwrap() {
                            "tool" => "--tool",
                            "resource" => "--resource",
                            _ => "--prompt",
                        };
                        let mut args = vec![
                            "policy",
                            "explain",
                            "--dir",
                            dir.to_str().unwrap(),
                            "--claims",
                            claims.to_str().unwrap(),
                            flag,
                            item["id"].as_str().unwrap(),
                            "--json",
                        ];
                        if *phase == "list" {
                            args.push("--list");
                        }
                        let (code, out) = idguard(&args);
                        let explained: Value = serde_json::from_str(&out)
                            .unwrap_or_else(|e| panic!("{e}: {code} {out}"));
                        let cell = &m["cells"][*i][*j][*phase];
                        if explained != *cell {
                            failures.push(format!(
                                "{} × {} ({phase}): matrix {cell}, explain {explained}",
                                m["subjects"][*i]["label"], item["id"]
                            ));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(jobs.len(), subjects.len() * items.len() * 2);
}

#[test]
fn matrix_html_is_self_contained() {
    let scratch = Workdir::with_samples("html");
    let page = scratch.path().join("matrix.html");
    let (code, _) = idguard(&[
        "policy",
        "matrix",
        samples().to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("/*DATA*/"), "the data is in");
    assert!(html.contains("\"delete_document\""));
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(external), "loads {external}");
    }
}

// ---------------------------------------------------------------------------------------
// `GET /admin/decisions` on a running dev-mode server.

/// Reads Server-Sent Events (name, data) from a streaming response.
struct Events {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Events {
    fn new(res: reqwest::Response) -> Self {
        Self {
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> (String, String) {
        use futures_util::StreamExt as _;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && name == "message" {
                    continue; // a keep-alive comment
                }
                return (name, data);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.body.next())
                .await
                .expect("an event within 20 s")
                .expect("the stream stays open")
                .unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next `decision` event's JSON.
    async fn decision(&mut self) -> Value {
        loop {
            let (name, data) = self.next().await;
            if name == "decision" {
                return serde_json::from_str(&data).unwrap();
            }
            assert_ne!(name, "lagged", "{data}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_decisions_streams_with_shadow_answers_to_admins_only() {
    let work = Workdir::with_samples("admin");
    copy_dir(&samples(), &work.path().join("policies"));
    copy_dir(&samples(), &work.path().join("policies-next"));
    work.write(
        "policies-next/extra.cedar",
        r#"@id("readers-transfer") permit (principal in Role::"Tools.Read", action == Action::"call_tool", resource == Tool::"transfer_funds");"#,
    );
    let proc = Proc::spawn(
        &["--port", "0", "--shadow-policies", "policies-next"],
        work.path(),
    );
    let url = proc.line("export MCP_URL=").trim().to_owned();
    let base = url.trim_end_matches("/mcp").to_owned();
    let http = reqwest::Client::new();
    let token = async |user: &str| {
        http.get(format!("{base}/dev/token?user={user}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let (alice, bob) = (token("alice").await, token("bob").await);

    let health = health(&http, &base).await;
    assert_eq!(health["shadow_policy"]["epoch"], 1, "{health}");
    assert_eq!(health["shadow_policy"]["policies"], 11, "{health}");

    let admin = format!("{base}/admin/decisions");
    let status = |res: reqwest::Response| res.status().as_u16();
    assert_eq!(status(http.get(&admin).send().await.unwrap()), 401);
    assert_eq!(
        status(http.get(&admin).bearer_auth(&bob).send().await.unwrap()),
        403,
        "bob holds no admin role"
    );

    // Everything, and only transfer_funds: both listeners get their events.
    let all = http.get(&admin).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(all.status(), 200);
    assert_eq!(all.headers()["content-type"], "text/event-stream");
    let mut all = Events::new(all);
    assert_eq!(all.next().await.0, "ready");
    let only = http
        .get(format!("{admin}?item=transfer_funds&phase=call"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let mut only = Events::new(only);
    assert_eq!(only.next().await.0, "ready");

    let listed = mcp(
        &http,
        &url,
        &bob,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await;
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"transfer_funds"),
        "the shadow is never obeyed: {names:?}"
    );
    let refused = mcp(
        &http,
        &url,
        &bob,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "transfer_funds", "arguments": {"amount": 250, "to": "SECRET-PAYEE-91c2"}}}),
    )
    .await;
    assert!(refused.get("error").is_some(), "{refused}");

    // The list: one event per tool, transfer_funds hidden here and shown by the shadow.
    let mut seen = Vec::new();
    let call = loop {
        let e = all.decision().await;
        let text = e.to_string();
        assert!(!text.contains("SECRET-PAYEE"), "{text}");
        assert!(!text.contains(&bob), "no token: {text}");
        if e["phase"] == "call" {
            break e;
        }
        seen.push(e);
    };
    let transfer = seen.iter().find(|e| e["item"] == "transfer_funds").unwrap();
    assert_eq!(transfer["decision"], "deny");
    assert_eq!(transfer["shadow"]["decision"], "allow");
    assert_eq!(transfer["shadow"]["agrees"], false);
    assert_eq!(transfer["caller"]["upn"], user("bob").upn().unwrap());
    assert_eq!(call["item"], "transfer_funds");
    assert_eq!(call["decision"], "deny");
    assert_eq!(call["shadow"]["decision"], "allow");
    assert_eq!(call["shadow"]["policies"], json!(["readers-transfer"]));
    assert_eq!(only.decision().await, call, "the filtered listener");

    let metrics = metrics(&http, &base).await;
    for line in [
        "idguard_policy_shadow_disagreements_total{phase=\"list\",direction=\"enforced_deny_shadow_allow\"} 1",
        "idguard_policy_shadow_disagreements_total{phase=\"call\",direction=\"enforced_deny_shadow_allow\"} 1",
        "idguard_policy_shadow_item_disagreements_total{action=\"call_tool\",item=\"transfer_funds\",direction=\"enforced_deny_shadow_allow\"} 2",
        "idguard_policy_shadow_epoch 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[test]
fn deciding_the_same_thing_twice_gives_the_same_policies_in_the_same_order() {
    // Cedar reports determining policies as a set; decisions sort them.
    let a = PolicyEngine::from_dir(samples()).unwrap();
    let b = PolicyEngine::from_dir(samples()).unwrap();
    let bob = user("bob");
    let read = tool("read_document");
    let da = a.decide(&bob, &read, Phase::Call, None);
    let Decision::Allow(allowed) = &da else {
        panic!("{da:?}")
    };
    let mut sorted = allowed.policies.clone();
    sorted.sort();
    assert_eq!(allowed.policies, sorted);
    assert_eq!(da, b.decide(&bob, &read, Phase::Call, None));
}
