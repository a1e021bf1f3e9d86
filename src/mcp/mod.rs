//! MCP interception: per-caller lists, authorized calls, customized replies.
//!
//! [`AuthorizeMcpLayer`] sits after [`ValidateTokenLayer`](crate::ValidateTokenLayer) in
//! front of any Streamable HTTP MCP service (an in-process rmcp `StreamableHttpService`, or
//! the gateway's proxy to an upstream server) and mediates everything between them
//! (`SECURITY.md` has the threat model):
//!
//! - **one reading of each request**: `Host`/`Origin` must name the resource's host
//!   (`403`); a `POST` body must be plain `application/json` (`415`), within the size limit
//!   (`413`), and JSON-RPC that idguard and any server read alike (`400`: duplicated
//!   members, arrays for objects, odd or `null` ids, ids shared in a batch, resource URIs
//!   with dot segments); the server gets exactly those bytes, labelled `application/json`;
//! - **every request that names an item is decided before the server sees it**:
//!   `tools/call`, `resources/read`, `resources/subscribe`/`unsubscribe`,
//!   `resources/directory/read`, `prompts/get`, `completion/complete`; a denied one is
//!   answered by idguard, by default exactly like an unknown item ([`Denials::Hidden`]), or
//!   with the policy's `@reason` ([`Denials::Visible`]); a denial that MFA would lift is a
//!   `401 insufficient_user_authentication` challenge; a method idguard does not know is
//!   refused (`-32601`) unless [`UnknownMethods::Pass`];
//! - **every reply stream is filtered** (`POST` replies, `GET` streams, resumed streams),
//!   as JSON or Server-Sent Events rewritten event by event: replies pass only when they
//!   answer a request decided for this caller; lists are filtered (cursors kept, a cache
//!   scope marked private); `@redact` fields are removed from results, and content that
//!   cannot be redacted is withheld; unknown notifications are dropped;
//! - **session and task ids are bound to their creator**: callers see `idg1.…` handles,
//!   an HMAC over the caller and the server's id that any replica with the same
//!   [session keys](AuthorizeMcpLayer::with_session_keys) verifies; anyone else gets `404`
//!   (sessions) or "task not found";
//! - checks the 2026-07-28 `Mcp-Method`/`Mcp-Name`/`MCP-Protocol-Version` headers against
//!   the body (`400`, JSON-RPC `-32020`).
//!
//! Tool annotations for call decisions come from the server's own `tools/list` (learned as
//! lists pass by, fetched in the caller's session and protocol era when a tool is called
//! before it was listed); a tool the server does not list is refused, and an unreachable
//! server is a `502`.

mod binding;
mod catalog;
pub(crate) mod config;
mod filter;
mod jsonrpc;
mod layer;
#[cfg(test)]
mod proptests;
mod retired;
#[cfg(feature = "rmcp")]
pub mod rmcp;
mod sse;

pub use layer::{
    AuthorizeMcp, AuthorizeMcpLayer, DEFAULT_CATALOG_CAPACITY, DEFAULT_LIST_RESULT_CAPACITY,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_REPLY_BYTES, DEFAULT_REQUESTS_PER_SESSION,
    DEFAULT_SESSION_RECORD_CAPACITY, DEFAULT_UNLISTED_CAPACITY, Denials, FORBIDDEN_CODE,
    HEADER_MISMATCH_CODE, METHOD_NOT_FOUND_CODE, McpCacheCapacities, UnknownMethods,
};
