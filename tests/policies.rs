//! The policy engine over the sample policies in `policies/` and over broken copies of
//! them: located load errors, hot reload, the list cache, obligations.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idguard::Principal;
use idguard::policy::cases::{caller, run_cases};
use idguard::policy::{
    ARGUMENTS_SCHEMA_FILE, Decision, Item, Phase, PolicyCacheCapacities, PolicyEngine, ToolInfo,
    generate_arguments_schema,
};
use serde_json::{Map, json};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A scratch copy of `policies/` that a test may break.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("idguard-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(samples()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
            }
        }
        Self(dir)
    }

    /// Replaces a file atomically (write + rename), as editors do.
    fn write(&self, file: &str, text: &str) {
        let tmp = self.0.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.0.join(file)).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn user(name: &str) -> Principal {
    caller(&idguard_dev::named_callers(), Some(name), &Map::new(), None).unwrap()
}

fn tool(name: &str) -> Item {
    Item::Tool(ToolInfo::new(name).read_only(true))
}

#[test]
fn every_sample_case_passes() {
    let engine = PolicyEngine::from_dir(samples()).unwrap();
    let outcomes = run_cases(&engine, &samples(), &idguard_dev::named_callers()).unwrap();
    assert!(outcomes.len() >= 20, "{} cases", outcomes.len());
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn caches_of_one_entry_decide_like_the_default_ones() {
    let one = PolicyCacheCapacities::default()
        .with_lists(1)
        .with_calls(1)
        .with_entities(1)
        .with_slices(1);
    let tiny = PolicyEngine::from_dir(samples())
        .unwrap()
        .with_cache_capacities(one);
    assert_eq!(tiny.cache_capacities(), one);
    let usual = PolicyEngine::from_dir(samples()).unwrap();
    // Every sample case, again and again: each run evicts what the one before cached.
    for _ in 0..3 {
        let outcomes = run_cases(&tiny, &samples(), &idguard_dev::named_callers()).unwrap();
        let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }
    // Callers and tools interleaved, so every lookup may find another key's entry.
    let mut callers: Vec<Principal> = ["alice", "bob", "carol"].into_iter().map(user).collect();
    callers.push(caller(&idguard_dev::named_callers(), None, &Map::new(), Some(true)).unwrap());
    let tools: Vec<Item> = [
        "whoami",
        "list_documents",
        "read_document",
        "delete_document",
        "transfer_funds",
        "my_profile",
    ]
    .into_iter()
    .flat_map(|name| {
        [
            Item::Tool(ToolInfo::new(name).read_only(true)),
            Item::Tool(ToolInfo::new(name).destructive(true)),
        ]
    })
    .collect();
    for round in 0..3 {
        for (i, p) in callers.iter().enumerate() {
            for t in tools.iter().cycle().skip(i + round).take(tools.len()) {
                assert_eq!(
                    tiny.decide(p, t, Phase::Call, None),
                    usual.decide(p, t, Phase::Call, None),
                    "{p:?} {t:?}"
                );
            }
            assert_eq!(tiny.visible(p, &tools), usual.visible(p, &tools));
        }
    }
}

#[test]
fn committed_arguments_schema_matches_the_tools() {
    let tools: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(samples().join("tools.json")).unwrap())
            .unwrap();
    let (generated, _) = generate_arguments_schema(&tools).unwrap();
    let committed = std::fs::read_to_string(samples().join(ARGUMENTS_SCHEMA_FILE)).unwrap();
    assert_eq!(
        generated, committed,
        "run `idguard policy schema --tools policies/tools.json`"
    );
}

#[test]
fn obligations_and_reasons_come_back_from_decide() {
    let engine = PolicyEngine::from_dir(samples()).unwrap();
    let tools = idguard::policy::cases::load_tools(&samples()).unwrap();
    let read = Item::Tool(tools["read_document"].clone());
    match engine.decide(&user("bob"), &read, Phase::Call, None) {
        Decision::Allow(a) => assert_eq!(a.redact, ["owner_email"]),
        other => panic!("{other:?}"),
    }
    let transfer = Item::Tool(tools["transfer_funds"].clone());
    let args = json!({"amount": 20000, "to": "ACME"});
    match engine.decide(&user("alice"), &transfer, Phase::Call, args.as_object()) {
        Decision::Deny(d) => {
            assert_eq!(
                d.reason.as_deref(),
                Some("transfers above 10000 need a second approver")
            );
            assert_eq!(d.policies, ["transfer-cap"]);
            assert_eq!(d.step_up, None);
        }
        other => panic!("{other:?}"),
    }
    let delete = Item::Tool(tools["delete_document"].clone());
    let no_mfa = caller(
        &idguard_dev::named_callers(),
        Some("alice"),
        &Map::new(),
        Some(false),
    )
    .unwrap();
    match engine.decide(&no_mfa, &delete, Phase::Call, None) {
        Decision::Deny(d) => assert_eq!(d.step_up.as_deref(), Some("mfa")),
        other => panic!("{other:?}"),
    }
    // Bob would be refused even with MFA: no step-up is offered.
    match engine.decide(&user("bob"), &delete, Phase::Call, None) {
        Decision::Deny(d) => assert_eq!((d.step_up, d.reason), (None, None)),
        other => panic!("{other:?}"),
    }
    let origin = engine.origin("transfer-cap").unwrap();
    assert_eq!((origin.file.as_str(), origin.line), ("limits.cedar", 6));
}

#[test]
fn broken_reload_keeps_serving_and_says_where() {
    let dir = Scratch::new("broken");
    let engine = PolicyEngine::from_dir(&dir.0).unwrap();
    let before = engine.epoch();
    assert!(
        engine
            .decide(&user("bob"), &tool("list_documents"), Phase::Call, None)
            .is_allow()
    );

    dir.write(
        "roles.cedar",
        "@id(\"readers-use-read-only-tools\")\npermit (principal in Role::\"Tools.Read\", action == Action::\"call_tool\", resource)\nwhen { resource.read_only &&& };\n",
    );
    let err = engine.reload().unwrap_err();
    let problem = &err.problems()[0];
    assert_eq!(problem.file, "roles.cedar");
    assert_eq!(problem.line, Some(3));
    assert!(err.to_string().contains("roles.cedar:3:"), "{err}");

    assert_eq!(engine.epoch(), before);
    let status = engine.status();
    assert!(status.last_error.unwrap().contains("roles.cedar:3:"));
    assert!(
        engine
            .decide(&user("bob"), &tool("list_documents"), Phase::Call, None)
            .is_allow()
    );
}

#[test]
fn ids_are_required_and_unique_across_files() {
    let dir = Scratch::new("ids");
    dir.write(
        "zz-extra.cedar",
        "// a copy\n@id(\"transfer-cap\")\npermit (principal, action, resource);\n\npermit (principal, action, resource);\n",
    );
    let err = PolicyEngine::from_dir(&dir.0).unwrap_err().to_string();
    assert!(
        err.contains(
            "zz-extra.cedar:2: policy id `transfer-cap` is already used in limits.cedar:6"
        ),
        "{err}"
    );
    assert!(
        err.contains("zz-extra.cedar:5: policy has no `@id"),
        "{err}"
    );
}

#[test]
fn unknown_annotations_and_misplaced_obligations_fail_to_load() {
    let dir = Scratch::new("annotations");
    dir.write(
        "extra.cedar",
        "@id(\"x\")\n@redcat(\"ssn\")\npermit (principal, action, resource);\n@id(\"y\")\n@redact(\"ssn\")\nforbid (principal, action, resource);\n",
    );
    let err = PolicyEngine::from_dir(&dir.0).unwrap_err().to_string();
    assert!(
        err.contains("extra.cedar:1: unknown annotation `@redcat`"),
        "{err}"
    );
    assert!(
        err.contains("extra.cedar:4: `@redact` belongs on permit policies"),
        "{err}"
    );
}

#[test]
fn reading_arguments_needs_the_generated_schema() {
    let dir = Scratch::new("arguments");
    std::fs::remove_file(dir.0.join(ARGUMENTS_SCHEMA_FILE)).unwrap();
    let err = PolicyEngine::from_dir(&dir.0).unwrap_err().to_string();
    assert!(err.contains("limits.cedar:"), "{err}");
    assert!(err.contains("idguard policy schema --tools"), "{err}");

    let tools: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.0.join("tools.json")).unwrap()).unwrap();
    let (schema, _) = generate_arguments_schema(&tools).unwrap();
    dir.write(ARGUMENTS_SCHEMA_FILE, &schema);
    PolicyEngine::from_dir(&dir.0).unwrap();
}

#[test]
fn a_reload_invalidates_list_decisions_at_once() {
    let dir = Scratch::new("list-cache");
    let engine = PolicyEngine::from_dir(&dir.0).unwrap();
    let bob = user("bob");
    let items = [tool("list_documents"), tool("whoami")];
    assert_eq!(engine.visible(&bob, &items), [true, true]);
    assert_eq!(engine.visible(&bob, &items), [true, true], "cached");

    dir.write("roles.cedar", "// readers lost their permit\n");
    engine.reload().unwrap();
    assert_eq!(engine.visible(&bob, &items), [false, true]);
}

#[test]
fn a_reload_changes_cached_call_decisions_at_once() {
    let dir = Scratch::new("call-cache");
    let engine = PolicyEngine::from_dir(&dir.0).unwrap();
    let bob = user("bob");
    let list = tool("list_documents");
    assert!(engine.decide(&bob, &list, Phase::Call, None).is_allow());
    assert!(engine.decide(&bob, &list, Phase::Call, None).is_allow());
    let before = engine.stats();
    assert_eq!(
        before.call_cached, 1,
        "the second call is answered from the cache"
    );
    assert_eq!(before.allowed, 2, "cached calls are still counted");

    dir.write("roles.cedar", "// readers lost their permit\n");
    engine.reload().unwrap();
    assert!(!engine.decide(&bob, &list, Phase::Call, None).is_allow());
    assert!(!engine.decide(&bob, &list, Phase::Call, None).is_allow());
    assert_eq!(
        engine.stats().call_cached,
        2,
        "the deny is cached in the new epoch"
    );

    dir.write(
        "extra.cedar",
        "@id(\"all\")\npermit (principal, action, resource);\n",
    );
    engine.reload().unwrap();
    assert!(engine.decide(&bob, &list, Phase::Call, None).is_allow());
}

#[test]
fn call_decisions_are_cached_per_caller_and_tool() {
    let engine = PolicyEngine::from_dir(samples()).unwrap();
    let tools = idguard::policy::cases::load_tools(&samples()).unwrap();
    let delete = Item::Tool(tools["delete_document"].clone());
    // The same person, with and without MFA, with and without a role: different callers.
    let with_mfa = caller(
        &idguard_dev::named_callers(),
        Some("alice"),
        &Map::new(),
        Some(true),
    )
    .unwrap();
    let no_mfa = caller(
        &idguard_dev::named_callers(),
        Some("alice"),
        &Map::new(),
        Some(false),
    )
    .unwrap();
    let no_role = caller(
        &idguard_dev::named_callers(),
        Some("alice"),
        &serde_json::from_value(json!({"roles": []})).unwrap(),
        Some(true),
    )
    .unwrap();
    for _ in 0..3 {
        assert!(
            engine
                .decide(&with_mfa, &delete, Phase::Call, None)
                .is_allow()
        );
        match engine.decide(&no_mfa, &delete, Phase::Call, None) {
            Decision::Deny(d) => assert_eq!(d.step_up.as_deref(), Some("mfa")),
            other => panic!("{other:?}"),
        }
        assert!(
            !engine
                .decide(&no_role, &delete, Phase::Call, None)
                .is_allow()
        );
    }
    // The same name with other annotations is another tool.
    let mut harmless = tools["delete_document"].clone();
    harmless.destructive = false;
    assert!(
        engine
            .decide(&no_mfa, &Item::Tool(harmless), Phase::Call, None)
            .is_allow()
    );
    assert_eq!(engine.stats().call_cached, 6);
}

#[test]
fn decisions_that_read_arguments_are_never_cached() {
    let engine = PolicyEngine::from_dir(samples()).unwrap();
    let tools = idguard::policy::cases::load_tools(&samples()).unwrap();
    let transfer = Item::Tool(tools["transfer_funds"].clone());
    let alice = user("alice");
    let small = json!({"amount": 250, "to": "ACME"});
    let large = json!({"amount": 20000, "to": "ACME"});
    for _ in 0..3 {
        assert!(
            engine
                .decide(&alice, &transfer, Phase::Call, small.as_object())
                .is_allow()
        );
        assert!(
            !engine
                .decide(&alice, &transfer, Phase::Call, large.as_object())
                .is_allow()
        );
    }
    assert_eq!(engine.stats().call_cached, 0);
}

#[test]
fn decisions_that_read_the_time_are_never_cached() {
    let dir = Scratch::new("call-cache-now");
    // Forbidden from a moment that is always in the past: reads `context.now`.
    dir.write(
        "window.cedar",
        "@id(\"closed\")\nforbid (principal, action, resource == Tool::\"list_documents\") when { context.now > 0 };\n",
    );
    let engine = PolicyEngine::from_dir(&dir.0).unwrap();
    let bob = user("bob");
    for _ in 0..3 {
        assert!(
            !engine
                .decide(&bob, &tool("list_documents"), Phase::Call, None)
                .is_allow()
        );
        assert!(
            engine
                .decide(&bob, &tool("whoami"), Phase::Call, None)
                .is_allow()
        );
    }
    // Only `whoami`, which no time-reading policy can apply to, was answered from the cache.
    assert_eq!(engine.stats().call_cached, 2);
}

#[test]
fn concurrent_decisions_never_see_a_mixed_set() {
    let dir = Scratch::new("mixed");
    for f in std::fs::read_dir(&dir.0).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "cedar") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let v1 = "@id(\"a\")\npermit (principal, action == Action::\"call_tool\", resource == Tool::\"t1\");\n";
    let v2 = "@id(\"b\")\npermit (principal, action == Action::\"call_tool\", resource == Tool::\"t2\");\n";
    dir.write("p.cedar", v1);
    let engine = PolicyEngine::from_dir(&dir.0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let p = caller(
                    &idguard_dev::named_callers(),
                    None,
                    &serde_json::from_value(json!({"oid": format!("u{i}")})).unwrap(),
                    None,
                )
                .unwrap();
                let items = [tool("t1"), tool("t2")];
                let mut seen = 0;
                while !stop.load(Ordering::Relaxed) {
                    let v = engine.visible(&p, &items);
                    assert!(v == [true, false] || v == [false, true], "mixed set: {v:?}");
                    let d = engine.decide(&p, &items[0], Phase::Call, None);
                    if let Decision::Deny(d) = &d {
                        assert!(d.errors.is_empty(), "{d:?}");
                    }
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    for round in 0..40 {
        dir.write("p.cedar", if round % 2 == 0 { v2 } else { v1 });
        engine.reload().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(engine.status().epoch, 41);
}

#[tokio::test]
async fn the_watcher_reloads_edits_and_reports_broken_ones() {
    let dir = Scratch::new("watch");
    let engine = PolicyEngine::from_dir(&dir.0).unwrap();
    let mut changes = engine.subscribe();
    let _watch = engine.watch(Duration::from_millis(20));
    let bob = user("bob");
    assert!(
        engine
            .decide(&bob, &tool("list_documents"), Phase::Call, None)
            .is_allow()
    );

    dir.write("roles.cedar", "// readers lost their permit\n");
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(engine.status().epoch, 2);
    assert!(
        !engine
            .decide(&bob, &tool("list_documents"), Phase::Call, None)
            .is_allow()
    );

    dir.write("roles.cedar", "permit (principal, action, resource) oops");
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .unwrap()
        .unwrap();
    let status = engine.status();
    assert_eq!(status.epoch, 2);
    assert!(status.last_error.unwrap().contains("roles.cedar:1:"));
}
