//! `idguard serve` in gateway mode with `[upstream] credential = "token_exchange"` from its
//! configuration file: the client secret read from `client_secret_file`, the actor token
//! signed with the key whose JWKS the binary serves, against the real RFC 8693 server
//! `tests/upstreams/exchange_as.py` and the whoami upstream that verifies the issued token.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;
#[path = "../../../tests/support/python_server.rs"]
mod python_server;

use common::{Proc, Workdir};
use idguard_dev::DevEntra;
use python_server::PyServer;
use serde_json::json;

const AUD: &str = "urn:contoso:upstream";

/// The RFC 8693 server and the whoami upstream behind it, on one emulator.
struct Peers {
    entra: DevEntra,
    authz: PyServer,
    up: PyServer,
    secret_file: std::path::PathBuf,
    dir: Workdir,
}

async fn peers(name: &str) -> Peers {
    let entra = DevEntra::builder().start().await.unwrap();
    let api = entra.api_client_id().to_owned();
    let authz = PyServer::start(
        "tests/upstreams/exchange_as.py",
        &[
            (
                "EXCHANGE_SUBJECT_JWKS",
                &format!("{}/{}/discovery/v2.0/keys", entra.url(), entra.tenant_id()),
            ),
            (
                "EXCHANGE_SUBJECT_ISSUER",
                &entra.issuer_v2(entra.tenant_id()),
            ),
            ("EXCHANGE_SUBJECT_AUDIENCES", &format!("{api},api://{api}")),
            ("EXCHANGE_CLIENT_ID", "idguard-gateway"),
            ("EXCHANGE_CLIENT_SECRET", "from a file: s3cret"),
            ("EXCHANGE_AUDIENCE", AUD),
        ],
    );
    let up = PyServer::start(
        "tests/upstreams/whoami_server.py",
        &[
            ("WHOAMI_AUDIENCE", AUD),
            ("WHOAMI_JWKS_URL", &authz.url("/jwks.json")),
        ],
    );
    let dir = Workdir::with_policies(name);
    dir.write("as-secret", "from a file: s3cret\n");
    let secret_file = dir.path().join("as-secret");
    Peers {
        entra,
        authz,
        up,
        secret_file,
        dir,
    }
}

impl Peers {
    /// The credential keys of `[upstream]` or an `[[upstream]]` entry.
    fn credential(&self) -> String {
        format!(
            "credential = \"token_exchange\"\ntoken_endpoint = \"{}\"\naudience = \"{AUD}\"\nscopes = [\"tools.read\"]\nclient_id = \"idguard-gateway\"\nclient_secret_file = \"{}\"\nactor_token = \"identity_assertion\"\n",
            self.authz.url("/token"),
            self.secret_file.display()
        )
    }

    /// Starts `idguard serve` with `server` and `upstream` configuration; its MCP URL.
    async fn serve(&self, server: &str, upstream: &str) -> (Proc, String) {
        self.dir.config(
            self.entra.url(),
            &self.entra,
            "",
            &format!("{server}\n{upstream}"),
        );
        let proc = Proc::spawn(&["--port", "0"], &self.dir);
        let line = proc.line("idguard: gateway ");
        let url = line.split(" -> ").next().unwrap().to_owned();
        // The server checks the actor token against the JWKS the binary serves.
        let jwks = url.replace("/mcp", "/.well-known/idguard-jwks.json");
        self.authz
            .post_json("/_probe/actor", &json!({"jwks": jwks}))
            .await;
        (proc, url)
    }

    /// `whoami` (named `tool`) through `url` as alice: what the upstream saw, checked.
    async fn whoami_as_alice(&self, url: &str, tool: &str) {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let alice = self.entra.token_for("alice").unwrap().mint().unwrap();
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}});
        let res = common::mcp_post(&http, url, &alice, &init)
            .send()
            .await
            .unwrap();
        let session = res.headers().get("mcp-session-id").cloned();
        let text = res.text().await.unwrap();
        assert!(text.contains("\"result\""), "{text}");
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": tool, "arguments": {}}});
        let mut req = common::mcp_post(&http, url, &alice, &call);
        if let Some(session) = session {
            req = req.header("mcp-session-id", session);
        }
        let text = req.send().await.unwrap().text().await.unwrap();
        let reply = common::messages(&text)
            .next()
            .unwrap_or_else(|| panic!("{text}"));
        let who = &reply["result"]["structuredContent"];
        let bearer = &who["bearer"];
        assert_eq!(bearer["valid"], true, "{reply}");
        let oid = self
            .entra
            .users()
            .iter()
            .find(|u| u.key == "alice")
            .unwrap()
            .object_id
            .clone();
        assert_eq!(bearer["claims"]["oid"], oid.as_str(), "{reply}");
        assert_eq!(bearer["claims"]["act"]["sub"], "http://127.0.0.1/mcp");
        assert_eq!(bearer["claims"]["scope"], "tools.read");
        assert_eq!(who["saw_foreign_token"], false);
        let stats = self.authz.get_json("/_probe/stats").await;
        assert_eq!(stats["requests"], 1, "{stats}");
        assert!(!self.up.bearers().await.contains(&alice));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exchanges_each_callers_token_at_the_configured_server() {
    let p = peers("bin-exchange").await;
    let server = format!("upstream = \"{}\"\n", p.up.url("/mcp"));
    let (_proc, url) = p
        .serve(&server, &format!("[upstream]\n{}", p.credential()))
        .await;
    p.whoami_as_alice(&url, "whoami").await;
}

/// The same exchange for an `[[upstream]]` entry (several upstreams behind one endpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exchanges_for_an_upstream_entry() {
    let p = peers("bin-exchange-entry").await;
    let entry = format!(
        "[[upstream]]\nname = \"who\"\nurl = \"{}\"\n{}",
        p.up.url("/mcp"),
        p.credential()
    );
    let (_proc, url) = p.serve("", &entry).await;
    p.whoami_as_alice(&url, "who__whoami").await;
}
