//! Demo MCP tools: what `idguard` serves in dev mode and what the sample policies govern.
//!
//! | tool | annotations | does |
//! |---|---|---|
//! | `whoami` | read-only | the caller's identity, as idguard validated it |
//! | `list_documents` | read-only, tag `documents` | the documents in an in-memory store |
//! | `read_document` | read-only, tag `documents` | one document, with its owner's email |
//! | `delete_document` | destructive, tag `documents` | removes one document |
//! | `transfer_funds` | open-world, tag `finance` | pretends to transfer `amount` to `to` |
//! | `my_profile` | read-only, open-world | the caller's Microsoft Graph profile, fetched on their behalf (on-behalf-of) when the guard has `[obo]` with a `graph` API |
//!
//! Resources `docs://public/handbook` and `docs://private/payroll`, and a `summarize`
//! prompt. [`DemoServer::calls`] counts tool invocations, so tests can prove a denied call
//! never reached the tool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
    ListPromptsResult, ListResourcesResult, MetaObject, PaginatedRequestParams, Prompt,
    PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, Role, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::json;

use idguard::Principal;
use idguard::mcp::rmcp::principal;
use idguard::obo::{Obo, OboClient};

/// `read_document` / `delete_document` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DocumentId {
    /// The document id, e.g. `doc-1`.
    pub id: String,
}

/// `transfer_funds` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Transfer {
    /// Whole currency units.
    pub amount: i64,
    /// The payee.
    pub to: String,
}

#[derive(Debug)]
struct Document {
    title: String,
    body: String,
    owner_email: String,
}

#[derive(Debug, Default)]
struct State {
    documents: Mutex<BTreeMap<String, Document>>,
    calls: Mutex<BTreeMap<String, u64>>,
    total_calls: AtomicU64,
}

/// The demo MCP server (an rmcp [`ServerHandler`]). Cloning shares the state.
#[derive(Clone, Debug)]
pub struct DemoServer {
    state: Arc<State>,
    tool_router: ToolRouter<Self>,
}

impl Default for DemoServer {
    fn default() -> Self {
        Self::new()
    }
}

fn tags(tags: &[&str]) -> MetaObject {
    let mut meta = serde_json::Map::new();
    meta.insert("tags".into(), json!(tags));
    MetaObject(meta)
}

fn text(value: &serde_json::Value) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(value.to_string())])
}

fn who(parts: &http::request::Parts) -> Result<Principal, ErrorData> {
    parts
        .extensions
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("unauthenticated request", None))
}

#[tool_router]
impl DemoServer {
    /// A server with three sample documents.
    pub fn new() -> Self {
        let state = State::default();
        if let Ok(mut docs) = state.documents.lock() {
            for (id, title, owner) in [
                ("doc-1", "Quarterly plan", "alice@contoso.example"),
                ("doc-2", "Onboarding notes", "bob@contoso.example"),
                ("doc-3", "Vendor contract", "alice@contoso.example"),
            ] {
                docs.insert(
                    id.to_owned(),
                    Document {
                        title: title.to_owned(),
                        body: format!("The text of {title}."),
                        owner_email: owner.to_owned(),
                    },
                );
            }
        }
        Self {
            state: Arc::new(state),
            tool_router: Self::tool_router(),
        }
    }

    /// How many times tool `name` ran.
    pub fn calls(&self, name: &str) -> u64 {
        self.state
            .calls
            .lock()
            .map(|c| c.get(name).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// How many tool calls ran in all.
    pub fn total_calls(&self) -> u64 {
        self.state.total_calls.load(Ordering::Relaxed)
    }

    fn count(&self, name: &str) {
        self.state.total_calls.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.state.calls.lock() {
            *c.entry(name.to_owned()).or_default() += 1;
        }
    }

    #[tool(
        description = "Who is calling: the identity idguard validated.",
        annotations(read_only_hint = true, idempotent_hint = true)
    )]
    async fn whoami(
        &self,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        self.count("whoami");
        let p = who(&parts)?;
        Ok(text(&json!({
            "tenant_id": p.tenant_id(),
            "object_id": p.object_id(),
            "name": p.name(),
            "upn": p.upn(),
            "roles": p.roles(),
            "scopes": p.scopes(),
            "app_only": p.is_app_only(),
            "mfa": p.mfa(),
        })))
    }

    #[tool(
        description = "List the documents in the demo store.",
        annotations(read_only_hint = true, idempotent_hint = true),
        meta = tags(&["documents"])
    )]
    async fn list_documents(&self) -> Result<CallToolResult, ErrorData> {
        self.count("list_documents");
        let docs = self
            .state
            .documents
            .lock()
            .map_err(|_| ErrorData::internal_error("store unavailable", None))?;
        let list: Vec<_> = docs
            .iter()
            .map(|(id, d)| json!({"id": id, "title": d.title}))
            .collect();
        Ok(text(&json!({ "documents": list })))
    }

    #[tool(
        description = "Read one document.",
        annotations(read_only_hint = true, idempotent_hint = true),
        meta = tags(&["documents"])
    )]
    async fn read_document(
        &self,
        Parameters(DocumentId { id }): Parameters<DocumentId>,
    ) -> Result<CallToolResult, ErrorData> {
        self.count("read_document");
        let docs = self
            .state
            .documents
            .lock()
            .map_err(|_| ErrorData::internal_error("store unavailable", None))?;
        let Some(d) = docs.get(&id) else {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "no document `{id}`"
            ))]));
        };
        let value =
            json!({"id": id, "title": d.title, "body": d.body, "owner_email": d.owner_email});
        let mut result = CallToolResult::structured(value);
        result.content = vec![ContentBlock::text(
            result
                .structured_content
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        )];
        Ok(result)
    }

    #[tool(
        description = "Delete one document.",
        annotations(destructive_hint = true, read_only_hint = false),
        meta = tags(&["documents"])
    )]
    async fn delete_document(
        &self,
        Parameters(DocumentId { id }): Parameters<DocumentId>,
    ) -> Result<CallToolResult, ErrorData> {
        self.count("delete_document");
        let removed = self
            .state
            .documents
            .lock()
            .map_err(|_| ErrorData::internal_error("store unavailable", None))?
            .remove(&id)
            .is_some();
        Ok(text(&json!({"id": id, "deleted": removed})))
    }

    #[tool(
        description = "Transfer an amount to a payee (pretend).",
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = true),
        meta = tags(&["finance"])
    )]
    async fn transfer_funds(
        &self,
        Parameters(Transfer { amount, to }): Parameters<Transfer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.count("transfer_funds");
        Ok(text(&json!({"transferred": amount, "to": to})))
    }

    #[tool(
        description = "The caller's Microsoft Graph profile, fetched on their behalf.",
        annotations(read_only_hint = true, open_world_hint = true)
    )]
    async fn my_profile(
        &self,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        self.count("my_profile");
        let p = who(&parts)?;
        // The guard puts its on-behalf-of client in the request when `[obo]` is configured.
        if parts.extensions.get::<OboClient>().is_none() {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "the Graph profile of {} needs on-behalf-of, which is not configured (`[obo]`)",
                p.upn().unwrap_or(p.object_id())
            ))]));
        }
        let obo = Obo::from_parts(&parts)
            .map_err(|_| ErrorData::internal_error("unauthenticated request", None))?;
        match obo.graph_me().await {
            Ok(profile) => Ok(text(&profile)),
            // Tool errors carry the reason (never a token); consent and step-up are
            // answered as MCP tool errors here, since the HTTP reply has already started.
            Err(e) => Ok(CallToolResult::error(vec![ContentBlock::text(
                e.to_string(),
            )])),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new("docs://public/handbook", "handbook")
                .with_description("The employee handbook"),
            Resource::new("docs://private/payroll", "payroll").with_description("Salaries"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = principal(&context)
            .map(|p| p.upn().unwrap_or(p.object_id()).to_owned())
            .unwrap_or_default();
        let body = match request.uri.as_str() {
            "docs://public/handbook" => format!("Welcome, {caller}. Be kind."),
            "docs://private/payroll" => "alice: 1, bob: 1".to_owned(),
            _ => {
                return Err(ErrorData::resource_not_found(
                    "Resource not found",
                    Some(json!({"uri": request.uri})),
                ));
            }
        };
        Ok(ReadResourceResult::new(vec![ResourceContents::text(body, request.uri)]).into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(vec![
            Prompt::new("summarize", Some("Summarize a document"), None),
            Prompt::new("escalate", Some("Escalate an incident"), None),
        ]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        match request.name.as_str() {
            "summarize" | "escalate" => Ok(GetPromptResult::new(vec![PromptMessage::new_text(
                Role::User,
                format!("Please {} the following.", request.name),
            )])
            .into()),
            other => Err(ErrorData::invalid_params(
                format!("prompt '{other}' not found"),
                None,
            )),
        }
    }
}
