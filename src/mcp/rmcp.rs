//! rmcp integration: read the caller in tool code, and filter in-process.
//!
//! rmcp's `StreamableHttpService` puts the HTTP request parts into every request's
//! context, so whatever [`ValidateTokenLayer`](crate::ValidateTokenLayer) inserted is there:
//! [`principal`] reads it. [`Guarded`] wraps any rmcp [`ServerHandler`] and applies the
//! policies inside the server — lists filtered, denied calls refused as unknown, `@redact`
//! fields removed — with the same pure core as [`AuthorizeMcpLayer`](super::AuthorizeMcpLayer),
//! without re-parsing HTTP bodies. Completions (by their `ref`), subscriptions and
//! resource directory reads are decided like the item they name; custom requests and
//! skills (which no policy can name) are refused; every other handler method is forwarded
//! unchanged.

use std::borrow::Cow;

#[expect(
    deprecated,
    reason = "SetLevelRequestParams: the wrapper forwards the deprecated method"
)]
use rmcp::model::SetLevelRequestParams;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams,
    CancelledNotificationParam, CompleteRequestParams, CompleteResult, CustomNotification,
    CustomRequest, CustomResult, DiscoverResult, GetPromptRequestParams, GetPromptResponse,
    GetSkillRequestParams, GetSkillResult, GetTaskParams, GetTaskResult, InitializeRequestParams,
    InitializeResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListSkillsResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProtocolVersion, ReadResourceDirectoryRequestParams, ReadResourceDirectoryResult,
    ReadResourceRequestParams, ReadResourceResponse, ServerConfig, SubscribeRequestParams,
    SubscriptionFilter, Tool, UnsubscribeRequestParams, UpdateTaskParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};

use super::filter;
use super::jsonrpc::ListKind;
use crate::policy::{Decision, Item, Phase, PolicyEngine, PromptInfo, ResourceInfo, ToolInfo};
use crate::principal::Principal;

/// The validated caller of an rmcp request, if the request came through
/// [`ValidateTokenLayer`](crate::ValidateTokenLayer).
pub fn principal(context: &RequestContext<RoleServer>) -> Option<Principal> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
}

/// An rmcp [`ServerHandler`] with the policies applied in-process.
#[derive(Clone, Debug)]
pub struct Guarded<H> {
    inner: H,
    engine: PolicyEngine,
}

impl<H> Guarded<H> {
    /// Wraps `inner`; decisions come from `engine`.
    pub fn new(inner: H, engine: PolicyEngine) -> Self {
        Self { inner, engine }
    }

    /// The wrapped handler.
    pub fn get_ref(&self) -> &H {
        &self.inner
    }

    /// `Ok` when `p` may use `item` (call phase); otherwise the server's own "not found".
    fn require(&self, p: &Principal, item: &Item) -> Result<(), ErrorData> {
        if self.engine.decide(p, item, Phase::Call, None).is_allow() {
            return Ok(());
        }
        Err(match item {
            Item::Resource(r) => ErrorData::resource_not_found(
                "Resource not found",
                Some(serde_json::json!({"uri": r.uri})),
            ),
            Item::Prompt(pr) => {
                ErrorData::invalid_params(format!("prompt '{}' not found", pr.name), None)
            }
            Item::Tool(_) => tool_not_found(),
        })
    }
}

fn tool_not_found() -> ErrorData {
    ErrorData::invalid_params("tool not found", None)
}

fn caller(context: &RequestContext<RoleServer>) -> Result<Principal, ErrorData> {
    principal(context).ok_or_else(|| {
        tracing::error!(target: "idguard::rejection", "no principal: is the MCP service behind ValidateTokenLayer?");
        ErrorData::internal_error("unauthenticated request", None)
    })
}

/// Filters an rmcp list result through its JSON form (the same core as the HTTP layer).
fn filter_typed<T>(
    engine: &PolicyEngine,
    p: &Principal,
    kind: ListKind,
    result: T,
) -> Result<T, ErrorData>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut json = serde_json::to_value(&result)
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    let Some(map) = json.as_object_mut() else {
        return Err(ErrorData::internal_error(
            "list result is not an object",
            None,
        ));
    };
    filter::filter_list(engine, p, kind, map);
    serde_json::from_value(json).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

fn tool_info(tool: &Tool) -> Option<ToolInfo> {
    serde_json::to_value(tool)
        .ok()
        .as_ref()
        .and_then(ToolInfo::from_mcp)
}

impl<H: ServerHandler> ServerHandler for Guarded<H> {
    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let p = caller(&context)?;
        let mut result = self.inner.list_tools(request, context).await?;
        result = filter_typed(&self.engine, &p, ListKind::Tools, result)?;
        // A per-caller list must not be cached as public.
        Ok(result.with_cache_scope(rmcp::model::CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let p = caller(&context)?;
        let info = self
            .inner
            .get_tool(&request.name)
            .as_ref()
            .and_then(tool_info)
            .ok_or_else(tool_not_found)?;
        let decision = self.engine.decide(
            &p,
            &Item::Tool(info),
            Phase::Call,
            request.arguments.as_ref(),
        );
        let redact = match decision {
            Decision::Allow(a) => a.redact,
            Decision::Deny(_) => return Err(tool_not_found()),
        };
        let response = self.inner.call_tool(request, context).await?;
        match response {
            CallToolResponse::Complete(result) if !redact.is_empty() => {
                let mut json = serde_json::to_value(&result)
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                if let Some(map) = json.as_object_mut() {
                    filter::redact_result(map, &redact);
                }
                let result: CallToolResult = serde_json::from_value(json)
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                Ok(CallToolResponse::Complete(result))
            }
            // A task would deliver the result later through `tasks/get`, unredacted.
            CallToolResponse::Task(_) if !redact.is_empty() => Err(ErrorData::new(
                rmcp::model::ErrorCode(super::FORBIDDEN_CODE as i32),
                "forbidden: this tool's results are redacted for this caller, so it cannot run as a task",
                None,
            )),
            other => Ok(other),
        }
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.get_tool(name)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let p = caller(&context)?;
        let result = self.inner.list_resources(request, context).await?;
        filter_typed(&self.engine, &p, ListKind::Resources, result)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let p = caller(&context)?;
        let result = self.inner.list_resource_templates(request, context).await?;
        filter_typed(&self.engine, &p, ListKind::ResourceTemplates, result)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let p = caller(&context)?;
        let item = Item::Resource(ResourceInfo {
            uri: request.uri.clone(),
        });
        if !self.engine.decide(&p, &item, Phase::Call, None).is_allow() {
            return Err(ErrorData::resource_not_found(
                "Resource not found",
                Some(serde_json::json!({"uri": request.uri})),
            ));
        }
        self.inner.read_resource(request, context).await
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let p = caller(&context)?;
        let result = self.inner.list_prompts(request, context).await?;
        filter_typed(&self.engine, &p, ListKind::Prompts, result)
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let p = caller(&context)?;
        let item = Item::Prompt(PromptInfo {
            name: request.name.clone(),
        });
        if !self.engine.decide(&p, &item, Phase::Call, None).is_allow() {
            return Err(ErrorData::invalid_params(
                format!("prompt '{}' not found", request.name),
                None,
            ));
        }
        self.inner.get_prompt(request, context).await
    }

    // Everything below is forwarded unchanged.

    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.inner.ping(context).await
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        self.inner.initialize(request, context).await
    }

    fn negotiate_initialize(
        &self,
        request: &InitializeRequestParams,
    ) -> Result<InitializeResult, ErrorData> {
        self.inner.negotiate_initialize(request)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.inner.supported_protocol_versions()
    }

    async fn discover(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, ErrorData> {
        self.inner.discover(context).await
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let p = caller(&context)?;
        let item = match &request.r#ref {
            rmcp::model::Reference::Prompt(r) => Item::Prompt(PromptInfo {
                name: r.name.clone(),
            }),
            rmcp::model::Reference::Resource(r) => {
                Item::Resource(ResourceInfo { uri: r.uri.clone() })
            }
            // A kind of reference no policy can name: refused.
            _ => {
                return Err(ErrorData::invalid_params(
                    "unknown completion reference",
                    None,
                ));
            }
        };
        self.require(&p, &item)?;
        self.inner.complete(request, context).await
    }

    #[expect(
        deprecated,
        reason = "forwarded unchanged: wrapped servers keep their behaviour"
    )]
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.inner.set_level(request, context).await
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        self.inner.accepted_subscription_filter(requested)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        self.inner.listen(context).await
    }

    #[expect(
        deprecated,
        reason = "forwarded unchanged: wrapped servers keep their behaviour"
    )]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let p = caller(&context)?;
        self.require(
            &p,
            &Item::Resource(ResourceInfo {
                uri: request.uri.clone(),
            }),
        )?;
        self.inner.subscribe(request, context).await
    }

    #[expect(
        deprecated,
        reason = "forwarded unchanged: wrapped servers keep their behaviour"
    )]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let p = caller(&context)?;
        self.require(
            &p,
            &Item::Resource(ResourceInfo {
                uri: request.uri.clone(),
            }),
        )?;
        self.inner.unsubscribe(request, context).await
    }

    /// Refused: a custom method may name what policies would hide.
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        Err(ErrorData::new(
            rmcp::model::ErrorCode::METHOD_NOT_FOUND,
            format!("Method not found: {}", request.method),
            None,
        ))
    }

    async fn on_cancelled(
        &self,
        notification: CancelledNotificationParam,
        context: NotificationContext<RoleServer>,
    ) {
        self.inner.on_cancelled(notification, context).await;
    }

    async fn on_progress(
        &self,
        notification: ProgressNotificationParam,
        context: NotificationContext<RoleServer>,
    ) {
        self.inner.on_progress(notification, context).await;
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.inner.on_initialized(context).await;
    }

    async fn on_roots_list_changed(&self, context: NotificationContext<RoleServer>) {
        self.inner.on_roots_list_changed(context).await;
    }

    /// Not forwarded: a custom notification may name what policies would hide.
    async fn on_custom_notification(
        &self,
        _notification: CustomNotification,
        _context: NotificationContext<RoleServer>,
    ) {
    }

    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        self.inner.get_task(request, context).await
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.inner.update_task(request, context).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.inner.cancel_task(request, context).await
    }

    /// Refused: no policy can name a skill yet.
    async fn list_skills(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListSkillsResult, ErrorData> {
        Err(ErrorData::new(
            rmcp::model::ErrorCode::METHOD_NOT_FOUND,
            "Method not found",
            None,
        ))
    }

    /// Refused: no policy can name a skill yet.
    async fn get_skill(
        &self,
        _request: GetSkillRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetSkillResult, ErrorData> {
        Err(ErrorData::new(
            rmcp::model::ErrorCode::METHOD_NOT_FOUND,
            "Method not found",
            None,
        ))
    }

    async fn read_resource_directory(
        &self,
        request: ReadResourceDirectoryRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceDirectoryResult, ErrorData> {
        let p = caller(&context)?;
        self.require(
            &p,
            &Item::Resource(ResourceInfo {
                uri: request.uri.clone(),
            }),
        )?;
        let result = self.inner.read_resource_directory(request, context).await?;
        filter_typed(&self.engine, &p, ListKind::Resources, result)
    }
}
