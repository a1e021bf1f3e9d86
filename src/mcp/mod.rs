//! MCP interception: per-caller lists, authorized calls, customized replies.
//!
//! [`AuthorizeMcpLayer`] sits after [`ValidateTokenLayer`](crate::ValidateTokenLayer) in
//! front of any Streamable HTTP MCP service (an in-process rmcp `StreamableHttpService`, or
//! the gateway's proxy to an upstream server). For each POST it reads the JSON-RPC body
//! (size-limited: `413` past it, `400` for what is not JSON-RPC) and:
//!
//! - decides `tools/call`, `resources/read` and `prompts/get` **before** the server sees
//!   them; a denied call is answered by idguard, by default exactly like an unknown item
//!   ([`Denials::Hidden`]), or with the policy's `@reason` ([`Denials::Visible`]); a denial
//!   that MFA would lift is a `401 insufficient_user_authentication` challenge;
//! - filters `tools/list`, `resources/list`, `resources/templates/list` and `prompts/list`
//!   replies for the caller, in `application/json` and in `text/event-stream` replies,
//!   rewriting SSE event by event as it streams (only the reply to the list request is
//!   touched; progress and other events pass as they are; cursors are kept; a reply with a
//!   cache scope is marked private);
//! - removes `@redact` fields from allowed tool results (`structuredContent`, and text
//!   content that is JSON);
//! - binds an MCP session id to the caller (tenant + object id) that created it, refusing
//!   (`403`) anyone else who presents it; the same caller with a refreshed token continues;
//! - checks the 2026-07-28 `Mcp-Method`/`Mcp-Name` headers against the body (`400`).
//!
//! Tool annotations for call decisions come from the server's own `tools/list` (learned as
//! lists pass by, fetched in the caller's session when a tool is called before it was
//! listed); a tool the server does not list is refused.

mod catalog;
mod filter;
mod jsonrpc;
mod layer;
#[cfg(feature = "rmcp")]
pub mod rmcp;
mod sse;

pub use layer::{AuthorizeMcp, AuthorizeMcpLayer, DEFAULT_MAX_BODY_BYTES, Denials, FORBIDDEN_CODE};

use crate::guard::IdGuard;
use crate::policy::PolicyEngine;

impl IdGuard {
    /// The MCP authorization layer for `engine`, whose step-up challenges point at this
    /// guard's protected-resource metadata.
    pub fn authorize_mcp_layer(&self, engine: PolicyEngine) -> AuthorizeMcpLayer {
        AuthorizeMcpLayer::new(engine, self.resource_metadata_url())
    }
}
