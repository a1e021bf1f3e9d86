//! Our types → Cedar entities, requests and context.
//!
//! A caller becomes a `User` (id = object id) or an `App` (id = client application id) with
//! `Role`, `Group` and `Tenant` parents; an MCP tool becomes a `Tool` with its annotations
//! and tags; resources and prompts likewise. Entities are built once per decision batch
//! (one caller, many items) and shared by every request in it.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};
use serde_json::{Map, Value};

use super::arguments::ArgType;
use super::{Action, Phase};
use crate::principal::Principal;

/// An MCP tool as policies see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ToolInfo {
    /// The tool name (the id of `Tool::"…"`).
    pub name: String,
    /// `annotations.readOnlyHint` (false when absent).
    pub read_only: bool,
    /// `annotations.destructiveHint` (false when absent).
    pub destructive: bool,
    /// `annotations.idempotentHint` (false when absent).
    pub idempotent: bool,
    /// `annotations.openWorldHint` (false when absent).
    pub open_world: bool,
    /// `_meta.tags` and FastMCP's `_meta.fastmcp.tags`.
    pub tags: Vec<String>,
}

impl ToolInfo {
    /// A tool with no annotations.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            read_only: false,
            destructive: false,
            idempotent: false,
            open_world: false,
            tags: Vec::new(),
        }
    }

    /// Sets `read_only`.
    #[must_use]
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// Sets `destructive`.
    #[must_use]
    pub fn destructive(mut self, yes: bool) -> Self {
        self.destructive = yes;
        self
    }

    /// Reads a tool definition from a `tools/list` result (`name`, `annotations`,
    /// `_meta.tags` or FastMCP's `_meta.fastmcp.tags`). `None` when it has no string `name`.
    pub fn from_mcp(tool: &Value) -> Option<Self> {
        let null = Value::Null;
        let field = |key: &str| tool.get(key).unwrap_or(&null);
        Self::from_fields(field("name"), field("annotations"), field("_meta"))
    }

    /// The same from the three fields policies read: hints that are not booleans count as
    /// false, tags that are not strings are skipped.
    pub(crate) fn from_fields(name: &Value, annotations: &Value, meta: &Value) -> Option<Self> {
        let hint = |key: &str| {
            annotations
                .get(key)
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        // `_meta.tags`, and FastMCP's `_meta.fastmcp.tags`.
        let fastmcp = meta.get("fastmcp").and_then(|f| f.get("tags"));
        let tags: Vec<String> = [meta.get("tags"), fastmcp]
            .into_iter()
            .flatten()
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        Some(Self {
            name: name.as_str()?.to_owned(),
            read_only: hint("readOnlyHint"),
            destructive: hint("destructiveHint"),
            idempotent: hint("idempotentHint"),
            open_world: hint("openWorldHint"),
            tags,
        })
    }
}

/// An MCP resource (`McpResource::"<uri>"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceInfo {
    /// The resource URI.
    pub uri: String,
}

/// An MCP prompt (`Prompt::"<name>"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PromptInfo {
    /// The prompt name.
    pub name: String,
}

/// Something a policy decides about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Item {
    /// A tool (`call_tool`).
    Tool(ToolInfo),
    /// A resource (`read_resource`).
    Resource(ResourceInfo),
    /// A prompt (`get_prompt`).
    Prompt(PromptInfo),
}

impl Item {
    /// The action that uses this item.
    pub fn action(&self) -> Action {
        match self {
            Item::Tool(_) => Action::CallTool,
            Item::Resource(_) => Action::ReadResource,
            Item::Prompt(_) => Action::GetPrompt,
        }
    }

    /// The item's id: tool name, resource URI or prompt name.
    pub fn id(&self) -> &str {
        match self {
            Item::Tool(t) => &t.name,
            Item::Resource(r) => &r.uri,
            Item::Prompt(p) => &p.name,
        }
    }
}

/// Entity type names and action uids, parsed once per snapshot.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    user: EntityTypeName,
    app: EntityTypeName,
    role: EntityTypeName,
    group: EntityTypeName,
    tenant: EntityTypeName,
    tool: EntityTypeName,
    resource: EntityTypeName,
    prompt: EntityTypeName,
    server: EntityTypeName,
    call_tool: EntityUid,
    read_resource: EntityUid,
    get_prompt: EntityUid,
}

impl Names {
    pub(crate) fn new() -> Result<Self, String> {
        let t = |s: &str| EntityTypeName::from_str(s).map_err(|e| e.to_string());
        let action = t("Action")?;
        let a = |id: &str| EntityUid::from_type_name_and_id(action.clone(), EntityId::new(id));
        Ok(Self {
            user: t("User")?,
            app: t("App")?,
            role: t("Role")?,
            group: t("Group")?,
            tenant: t("Tenant")?,
            tool: t("Tool")?,
            resource: t("McpResource")?,
            prompt: t("Prompt")?,
            server: t("Server")?,
            call_tool: a("call_tool"),
            read_resource: a("read_resource"),
            get_prompt: a("get_prompt"),
        })
    }

    fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    fn action(&self, action: Action) -> &EntityUid {
        match action {
            Action::CallTool => &self.call_tool,
            Action::ReadResource => &self.read_resource,
            Action::GetPrompt => &self.get_prompt,
        }
    }
}

/// The entities of one caller and a batch of items: built once, reusable for any
/// phase, arguments or time.
pub(crate) struct Scene {
    pub(crate) entities: Entities,
    /// The caller's uid and parents: what principal scopes can match.
    pub(crate) caller: HashSet<EntityUid>,
    principal: EntityUid,
    resources: Vec<EntityUid>,
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn strings(v: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(v.iter().map(|s| string(s)))
}

/// Builds the entities of `principal` and `items`.
pub(crate) fn scene(
    names: &Names,
    principal: &Principal,
    items: &[Item],
    server: &str,
    servers: Option<&super::Servers>,
) -> Result<Scene, String> {
    let (principal_uid, mut entities) = principal_entities(names, principal)?;
    let caller: HashSet<EntityUid> = entities.iter().map(|e| e.uid()).collect();
    let mut seen = HashSet::new();
    let mut resources = Vec::with_capacity(items.len());
    for item in items {
        // A named server's item: its `server` is that name, and `Server::"<name>"` its parent.
        let named = servers.and_then(|s| s.server_of(item));
        // Behind several servers, an item none of them owns is no item: denied, and (an
        // error) never cached, so a later claim is decided afresh.
        if named.is_none() && servers.is_some_and(|s| !s.is_single()) {
            return Err(format!("`{}` belongs to no upstream", item.id()));
        }
        let (uid, entity) = item_entity(
            names,
            item,
            named.as_deref().unwrap_or(server),
            named.is_some(),
        )?;
        if seen.insert(uid.clone()) {
            entities.push(entity);
        }
        if let Some(name) = named {
            let parent = Names::uid(&names.server, &name);
            if seen.insert(parent.clone()) {
                entities.push(Entity::new_no_attrs(parent, HashSet::new()));
            }
        }
        resources.push(uid);
    }
    let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
    Ok(Scene {
        entities,
        caller,
        principal: principal_uid,
        resources,
    })
}

/// A request with its action and resource uids (for slicing).
pub(crate) type Scoped = (Request, EntityUid, EntityUid);

/// One request per item of `scene` (in order), with its action and resource uids.
#[expect(
    clippy::too_many_arguments,
    reason = "one internal call site, all inputs needed"
)]
pub(crate) fn requests(
    names: &Names,
    scene: &Scene,
    principal: &Principal,
    items: &[Item],
    mfa: bool,
    phase: Phase,
    arguments: Option<&Map<String, Value>>,
    argument_types: Option<&ArgType>,
    now: u64,
) -> Result<Vec<Result<Scoped, String>>, String> {
    let mut context = vec![
        ("phase".to_owned(), string(phase.as_str())),
        ("mfa".to_owned(), RestrictedExpression::new_bool(mfa)),
        (
            "client_app".to_owned(),
            string(principal.app_id().unwrap_or_default()),
        ),
        (
            "now".to_owned(),
            RestrictedExpression::new_long(i64::try_from(now).unwrap_or(i64::MAX)),
        ),
    ];
    if phase == Phase::Call {
        let args = arguments_record(arguments, argument_types)?;
        context.push(("arguments".to_owned(), args));
    }
    let context = Context::from_pairs(context).map_err(|e| e.to_string())?;
    Ok(items
        .iter()
        .zip(&scene.resources)
        .map(|(item, resource)| {
            let action = names.action(item.action()).clone();
            Request::new(
                scene.principal.clone(),
                action.clone(),
                resource.clone(),
                context.clone(),
                None,
            )
            .map(|r| (r, action, resource.clone()))
            .map_err(|e| e.to_string())
        })
        .collect())
}

fn principal_entities(names: &Names, p: &Principal) -> Result<(EntityUid, Vec<Entity>), String> {
    let mut parents = HashSet::new();
    let mut out = Vec::new();
    let mut parent = |ty: &EntityTypeName, id: &str, out: &mut Vec<Entity>| {
        let uid = Names::uid(ty, id);
        if parents.insert(uid.clone()) {
            out.push(Entity::new_no_attrs(uid, HashSet::new()));
        }
    };
    for r in p.roles() {
        parent(&names.role, r, &mut out);
    }
    parent(&names.tenant, p.tenant_id(), &mut out);
    let mut attrs: HashMap<String, RestrictedExpression> = HashMap::new();
    attrs.insert("tenant".into(), string(p.tenant_id()));
    attrs.insert("roles".into(), strings(p.roles()));
    let uid = if p.is_app_only() {
        let app_id = p.app_id().unwrap_or(p.object_id());
        attrs.insert("client_app".into(), string(app_id));
        Names::uid(&names.app, app_id)
    } else {
        for g in p.groups() {
            parent(&names.group, g, &mut out);
        }
        attrs.insert("scopes".into(), strings(p.scopes()));
        attrs.insert("groups".into(), strings(p.groups()));
        attrs.insert("auth_methods".into(), strings(p.auth_methods()));
        attrs.insert("acrs".into(), strings(p.acrs()));
        for (key, value) in [
            ("name", p.name()),
            ("upn", p.upn()),
            ("email", p.email()),
            ("client_app", p.app_id()),
        ] {
            if let Some(v) = value {
                attrs.insert(key.into(), string(v));
            }
        }
        Names::uid(&names.user, p.object_id())
    };
    let entity = Entity::new(uid.clone(), attrs, parents).map_err(|e| e.to_string())?;
    out.push(entity);
    Ok((uid, out))
}

fn item_entity(
    names: &Names,
    item: &Item,
    server: &str,
    parent: bool,
) -> Result<(EntityUid, Entity), String> {
    let mut attrs: HashMap<String, RestrictedExpression> = HashMap::new();
    attrs.insert("server".into(), string(server));
    let uid = match item {
        Item::Tool(t) => {
            attrs.insert(
                "read_only".into(),
                RestrictedExpression::new_bool(t.read_only),
            );
            attrs.insert(
                "destructive".into(),
                RestrictedExpression::new_bool(t.destructive),
            );
            attrs.insert(
                "idempotent".into(),
                RestrictedExpression::new_bool(t.idempotent),
            );
            attrs.insert(
                "open_world".into(),
                RestrictedExpression::new_bool(t.open_world),
            );
            attrs.insert("tags".into(), strings(&t.tags));
            Names::uid(&names.tool, &t.name)
        }
        Item::Resource(r) => {
            attrs.insert("uri".into(), string(&r.uri));
            Names::uid(&names.resource, &r.uri)
        }
        Item::Prompt(p) => Names::uid(&names.prompt, &p.name),
    };
    let parents = if parent {
        HashSet::from([Names::uid(&names.server, server)])
    } else {
        HashSet::new()
    };
    let entity = Entity::new(uid.clone(), attrs, parents).map_err(|e| e.to_string())?;
    Ok((uid, entity))
}

/// The `arguments` record: only the fields the arguments schema declares, converted to
/// their declared types. A declared field of the wrong type is an error (and so a deny).
fn arguments_record(
    arguments: Option<&Map<String, Value>>,
    types: Option<&ArgType>,
) -> Result<RestrictedExpression, String> {
    let empty = Map::new();
    let arguments = arguments.unwrap_or(&empty);
    match types {
        Some(ty @ ArgType::Record(_)) => ty.convert_map(arguments, "arguments"),
        _ => RestrictedExpression::new_record(Vec::new()).map_err(|e| e.to_string()),
    }
}
