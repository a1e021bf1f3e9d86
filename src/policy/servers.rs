//! Which MCP server an item belongs to, when idguard judges the items of named servers:
//! several upstreams behind one endpoint, or one upstream with a name.
//!
//! Each item of a named server gets the entity `Server::"<name>"` as its parent (and the
//! name in its `server` attribute), so a policy can say `resource in Server::"github"`.
//!
//! - **tools and prompts** of several servers carry the server in their name, as callers
//!   see them: `github__create_issue` is `create_issue` of `github`
//!   ([`SERVER_SEPARATOR`]);
//! - **resources** keep their URIs (renaming them is not safe: servers embed them in
//!   content), so each URI (and template) is *claimed* by the first server that lists it;
//!   a URI another server lists later is a collision, refused by whoever asks
//!   ([`Servers::claim_resource`] returns `false`), and so is a URI that another server's
//!   template already covers, or a template whose literal prefix nests with (starts with,
//!   or is the start of) another server's. A URI's server never changes once it has one,
//!   so a decision made (and cached) for a URI always speaks about the server that
//!   receives the request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::entities::Item;

/// Between a server's name and its item's own name: `github__create_issue`.
pub const SERVER_SEPARATOR: &str = "__";

/// Resource URIs and templates claimed, at most, shared out evenly between the servers
/// (so one server listing without end cannot leave the others none): beyond its share, a
/// server's new ones are not attributed (and so not listed or read).
const MAX_CLAIMS: usize = 100_000;
/// Templates claimed, at most, shared out the same way (each lookup reads them all).
const MAX_TEMPLATES: usize = 1_000;

/// The named MCP servers whose items a [`PolicyEngine`](super::PolicyEngine) judges (tool and prompt names
/// `<server>__<name>`, resource URIs claimed by the first server listing them, a claim
/// never moved). A cheap-clone handle: the gateway that routes to the servers
/// and the engine that judges their items share one.
///
/// ```
/// use idguard::policy::{Item, PromptInfo, ResourceInfo, Servers, ToolInfo};
///
/// let servers = Servers::new(["github", "docs"]);
/// let tool = Item::Tool(ToolInfo::new("github__create_issue"));
/// assert_eq!(servers.server_of(&tool).as_deref(), Some("github"));
/// assert!(servers.claim_resource("docs", "docs://readme"));
/// assert!(!servers.claim_resource("github", "docs://readme"));
/// let read = Item::Resource(ResourceInfo { uri: "docs://readme".into() });
/// assert_eq!(servers.server_of(&read).as_deref(), Some("docs"));
/// let unknown = Item::Prompt(PromptInfo { name: "jira__triage".into() });
/// assert_eq!(servers.server_of(&unknown), None);
/// ```
#[derive(Clone)]
pub struct Servers {
    inner: Arc<Inner>,
}

struct Inner {
    names: Vec<Arc<str>>,
    /// One server: every item is its own, and names carry no prefix.
    single: bool,
    claims: RwLock<Claims>,
    /// Set once a policy engine judges with these servers
    /// ([`with_servers`](super::PolicyEngine::with_servers)): a gateway that routes to
    /// them refuses every request until then.
    judged: AtomicBool,
}

#[derive(Default)]
struct Claims {
    resources: HashMap<String, Arc<str>>,
    /// (literal prefix before the first `{`, template, server).
    templates: Vec<(String, String, Arc<str>)>,
    /// Each server's claims: (resources, templates).
    counts: HashMap<Arc<str>, (usize, usize)>,
}

impl Claims {
    /// Whether `server`, one of `servers`, may claim one more resource (or template).
    fn room(&self, server: &Arc<str>, servers: usize, template: bool) -> bool {
        let servers = servers.max(1);
        let (resources, templates) = self.counts.get(server).copied().unwrap_or_default();
        resources + templates < (MAX_CLAIMS / servers).max(1)
            && (!template || templates < (MAX_TEMPLATES / servers).max(1))
    }

    fn count(&mut self, server: Arc<str>, template: bool) {
        let (resources, templates) = self.counts.entry(server).or_default();
        if template {
            *templates += 1;
        } else {
            *resources += 1;
        }
    }

    /// The one server whose template's literal prefix is the longest that `uri` starts
    /// with (`None`: no template, or a tie between servers).
    fn template_owner(&self, uri: &str) -> Option<Arc<str>> {
        if let Some(s) = self.templates.iter().find(|(_, t, _)| t == uri) {
            return Some(s.2.clone());
        }
        let mut best: Option<(usize, &Arc<str>)> = None;
        let mut tie = false;
        for (prefix, _, server) in &self.templates {
            if prefix.is_empty() || !uri.starts_with(prefix.as_str()) {
                continue;
            }
            match best {
                Some((len, s)) if len == prefix.len() => tie |= s != server,
                Some((len, _)) if len > prefix.len() => {}
                _ => {
                    best = Some((prefix.len(), server));
                    tie = false;
                }
            }
        }
        if tie {
            None
        } else {
            best.map(|(_, s)| s.clone())
        }
    }
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Servers")
            .field("names", &self.inner.names)
            .field("single", &self.inner.single)
            .finish_non_exhaustive()
    }
}

impl Servers {
    /// Several servers: tool and prompt names are `<server>__<name>`, resources are
    /// claimed. Names should not contain [`SERVER_SEPARATOR`] (the `idguard` binary allows
    /// `a-z`, `0-9` and `-`): a name is read up to the first one.
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self::build(names.into_iter().map(Into::into).collect(), false)
    }

    /// One server named `name`: every item is its own, names unchanged.
    pub fn single(name: impl Into<String>) -> Self {
        Self::build(vec![name.into()], true)
    }

    fn build(names: Vec<String>, single: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                names: names.into_iter().map(Arc::from).collect(),
                single,
                claims: RwLock::new(Claims::default()),
                judged: AtomicBool::new(false),
            }),
        }
    }

    /// Marks these servers as judged by a policy engine.
    pub(crate) fn set_judged(&self) {
        self.inner.judged.store(true, Ordering::Release);
    }

    /// Whether a policy engine judges with these servers.
    pub(crate) fn judged(&self) -> bool {
        self.inner.judged.load(Ordering::Acquire)
    }

    /// The servers' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.names.iter().map(|n| &**n)
    }

    /// One server that owns every item.
    pub(crate) fn is_single(&self) -> bool {
        self.inner.single
    }

    fn known(&self, name: &str) -> Option<Arc<str>> {
        self.inner.names.iter().find(|n| &***n == name).cloned()
    }

    /// `github__create_issue` → (`github`, `create_issue`) when `github` is one of the
    /// servers; `None` otherwise (and always with a single server).
    pub fn split<'a>(&self, name: &'a str) -> Option<(&'a str, &'a str)> {
        if self.inner.single {
            return None;
        }
        let (server, rest) = name.split_once(SERVER_SEPARATOR)?;
        (self.known(server).is_some() && !rest.is_empty()).then_some((server, rest))
    }

    /// The server of `item`, `None` when it belongs to none of them.
    pub fn server_of(&self, item: &Item) -> Option<Arc<str>> {
        if self.inner.single {
            return self.inner.names.first().cloned();
        }
        match item {
            Item::Tool(t) => self.split(&t.name).and_then(|(s, _)| self.known(s)),
            Item::Prompt(p) => self.split(&p.name).and_then(|(s, _)| self.known(s)),
            Item::Resource(r) => self.resource_server(&r.uri),
        }
    }

    /// The server that claimed `uri`: the URI itself, else the one template whose literal
    /// prefix is the longest that `uri` starts with (a tie between servers is `None`).
    pub fn resource_server(&self, uri: &str) -> Option<Arc<str>> {
        if self.inner.single {
            return self.inner.names.first().cloned();
        }
        let claims = self
            .inner
            .claims
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = claims.resources.get(uri) {
            return Some(s.clone());
        }
        claims.template_owner(uri)
    }

    /// Claims `uri` for `server`: `true` when it is (now or already) that server's,
    /// `false` when another server claimed it first, `server` is unknown, or `server`'s
    /// share of the claims is used up.
    pub fn claim_resource(&self, server: &str, uri: &str) -> bool {
        let Some(server) = self.known(server) else {
            return false;
        };
        if self.inner.single {
            return true;
        }
        let mut claims = self
            .inner
            .claims
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(owner) = claims.resources.get(uri) {
            return *owner == server;
        }
        // A URI a template already attributes stays with it: a claim never moves a URI
        // from the server a decision was made for.
        if let Some(owner) = claims.template_owner(uri) {
            return owner == server;
        }
        if !claims.room(&server, self.inner.names.len(), false) {
            return false;
        }
        claims.resources.insert(uri.to_owned(), server.clone());
        claims.count(server, false);
        true
    }

    /// Claims the URI template `template` for `server`, as
    /// [`claim_resource`](Self::claim_resource) does; two servers' templates with the same literal prefix
    /// collide.
    pub fn claim_template(&self, server: &str, template: &str) -> bool {
        let Some(server) = self.known(server) else {
            return false;
        };
        if self.inner.single {
            return true;
        }
        let prefix = template.split('{').next().unwrap_or_default().to_owned();
        let mut claims = self
            .inner
            .claims
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, owner)) = claims.templates.iter().find(|(_, t, _)| t == template) {
            return *owner == server;
        }
        // Another server's template whose prefix nests with this one (either starts with
        // the other) would take URIs from it, or be taken: refused, so no URI ever moves.
        // An empty prefix attributes nothing (see `resource_server`), so it nests with none.
        let nests = |p: &str| {
            !p.is_empty() && !prefix.is_empty() && (p.starts_with(&prefix) || prefix.starts_with(p))
        };
        if claims
            .templates
            .iter()
            .any(|(p, _, owner)| *owner != server && nests(p))
        {
            return false;
        }
        if !claims.room(&server, self.inner.names.len(), true) {
            return false;
        }
        claims
            .templates
            .push((prefix, template.to_owned(), server.clone()));
        claims.count(server, true);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PromptInfo, ResourceInfo, ToolInfo};

    fn engine(servers: Option<Servers>) -> crate::policy::PolicyEngine {
        let rules = r#"
            @id("readers") permit (principal in Role::"R", action, resource);
            @id("not-gh") forbid (principal, action, resource in Server::"gh");
        "#;
        let engine = crate::policy::PolicyEngine::from_sources(
            include_str!("../../policies/schema.cedarschema"),
            None,
            [("p.cedar", rules)],
        )
        .unwrap();
        match servers {
            Some(s) => engine.with_servers(s),
            None => engine,
        }
    }

    #[test]
    fn server_parents_decide_and_unowned_items_are_denied() {
        use crate::policy::Phase;
        let p = crate::Principal::from_unvalidated_claims(
            &serde_json::json!({"tid": "t", "oid": "o", "scp": "s", "roles": ["R"]}),
        )
        .unwrap();
        let allowed = |e: &crate::policy::PolicyEngine, item: &Item| {
            e.decide(&p, item, Phase::Call, None).is_allow()
        };
        let tool = |n: &str| Item::Tool(ToolInfo::new(n));
        let servers = Servers::new(["gh", "docs"]);
        let many = engine(Some(servers.clone()));
        assert!(!allowed(&many, &tool("gh__create_issue")));
        assert!(allowed(&many, &tool("docs__search")));
        // No known prefix, an unclaimed URI: no item of any server, denied (never cached).
        assert!(!allowed(&many, &tool("create_issue")));
        let uri = Item::Resource(ResourceInfo {
            uri: "docs://a".into(),
        });
        assert!(!allowed(&many, &uri));
        assert!(servers.claim_resource("docs", "docs://a"));
        assert!(allowed(&many, &uri), "decided afresh once claimed");
        // One named upstream: every item is its; unnamed: no parent, today's meaning.
        assert!(!allowed(&engine(Some(Servers::single("gh"))), &tool("x")));
        assert!(allowed(&engine(Some(Servers::single("docs"))), &tool("x")));
        assert!(allowed(&engine(None), &tool("gh__x")));
    }

    #[test]
    fn names_and_claims_attribute_items() {
        let s = Servers::new(["github", "docs"]);
        assert_eq!(s.split("github__create__x"), Some(("github", "create__x")));
        assert_eq!(s.split("jira__x"), None);
        assert_eq!(s.split("github__"), None);
        assert_eq!(s.split("plain"), None);
        assert!(s.claim_template("docs", "docs://secret/{name}"));
        assert!(!s.claim_template("github", "docs://secret/{other}"));
        assert!(s.claim_template("github", "gh://{owner}/{repo}"));
        let uri = |u: &str| Item::Resource(ResourceInfo { uri: u.into() });
        assert_eq!(
            s.server_of(&uri("docs://secret/plan")).as_deref(),
            Some("docs")
        );
        assert_eq!(s.server_of(&uri("gh://a/b")).as_deref(), Some("github"));
        assert_eq!(s.server_of(&uri("other://x")), None);
        assert!(!s.claim_resource("nope", "x://y"));
        let one = Servers::single("only");
        assert_eq!(
            one.server_of(&Item::Tool(ToolInfo::new("a__b"))).as_deref(),
            Some("only")
        );
        assert_eq!(
            one.server_of(&Item::Prompt(PromptInfo { name: "p".into() }))
                .as_deref(),
            Some("only")
        );
        assert_eq!(one.split("only__b"), None);
    }

    /// Once a URI has a server, no later claim gives it another (the scenario: `docs`
    /// lists `files://{path}` while `hr` is down; `hr` comes back listing
    /// `files://hr/salaries.csv` and `files://hr/{doc}`).
    #[test]
    fn a_uris_server_never_changes() {
        let s = Servers::new(["docs", "hr"]);
        let salaries = "files://hr/salaries.csv";
        assert!(s.claim_template("docs", "files://{path}"));
        assert_eq!(s.resource_server(salaries).as_deref(), Some("docs"));
        assert!(!s.claim_resource("hr", salaries));
        assert!(!s.claim_template("hr", "files://hr/{doc}"));
        assert!(!s.claim_template("hr", "files:{x}"));
        assert_eq!(s.resource_server(salaries).as_deref(), Some("docs"));
        // The same server may nest its own templates and name its own URIs.
        assert!(s.claim_template("docs", "files://docs/{doc}"));
        assert!(s.claim_resource("docs", "files://readme"));
        // An exact claim first: another server's template over it is accepted, and the URI
        // keeps its server (an exact claim wins).
        assert!(s.claim_resource("hr", "hr://payroll"));
        assert!(!s.claim_resource("docs", "hr://payroll"));
        assert!(s.claim_template("docs", "hr://{x}"));
        assert_eq!(s.resource_server("hr://payroll").as_deref(), Some("hr"));
        assert_eq!(s.resource_server("hr://other").as_deref(), Some("docs"));
        // A template with no literal prefix attributes only its own text.
        assert!(s.claim_template("hr", "{anything}"));
        assert_eq!(s.resource_server("files://x").as_deref(), Some("docs"));
    }

    /// A server that lists without end uses up its own share of the claims, never the
    /// others'.
    #[test]
    fn each_server_claims_within_its_share() {
        let s = Servers::new(["greedy", "fair"]);
        let share = MAX_CLAIMS / 2;
        for i in 0..share {
            assert!(s.claim_resource("greedy", &format!("g://{i}")), "{i}");
        }
        assert!(!s.claim_resource("greedy", "g://one-more"));
        assert!(!s.claim_template("greedy", "g2://{x}"));
        assert_eq!(s.resource_server("g://one-more"), None);
        assert!(s.claim_resource("fair", "f://1"));
        // Templates have a smaller share of their own.
        for i in 0..MAX_TEMPLATES / 2 {
            assert!(s.claim_template("fair", &format!("t{i}://{{x}}")), "{i}");
        }
        assert!(!s.claim_template("fair", "t-last://{x}"));
        assert!(s.claim_resource("fair", "f://2"));
        // Claims already made are still answered.
        assert!(s.claim_resource("greedy", "g://0"));
    }
}
