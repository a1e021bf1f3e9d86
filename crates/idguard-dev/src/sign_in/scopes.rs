//! What a sign-in asks for: the space-separated `scope` sorted by resource (OpenID scopes,
//! the dev API's scopes, Microsoft Graph's), and Entra's rule for the `resource` parameter.

use crate::obo::{GRAPH_APP_ID, GRAPH_RESOURCE};
use crate::shared::Shared;

const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// The Graph permissions the emulator knows (a short scope name resolves to Graph).
const GRAPH_SCOPES: [&str; 9] = [
    "User.Read",
    "User.ReadBasic.All",
    "GroupMember.Read.All",
    "Group.Read.All",
    "Mail.Read",
    "Mail.Send",
    "Calendars.Read",
    "Files.Read",
    ".default",
];

/// Requested scopes, sorted by resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Scopes {
    /// `openid`, `profile`, `email`, `offline_access`.
    pub(super) oidc: Vec<String>,
    /// Short names on the dev API.
    pub(super) api: Vec<String>,
    /// The identifier the client named the dev API by (`api://{id}`).
    pub(super) api_form: Option<String>,
    /// Short names on Microsoft Graph.
    pub(super) graph: Vec<String>,
}

impl Scopes {
    /// Whether the OpenID scope `name` was asked for.
    pub(super) fn has_oidc(&self, name: &str) -> bool {
        self.oidc.iter().any(|s| s == name)
    }

    /// How many resources (the dev API, Graph) the scopes name.
    pub(super) fn resources(&self) -> usize {
        usize::from(!self.api.is_empty()) + usize::from(!self.graph.is_empty())
    }
}

/// A scope naming something the emulator does not have.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ScopeError {
    /// A resource other than the dev API and Graph (AADSTS500011).
    UnknownResource(String),
    /// A short (Graph) scope Graph does not have (AADSTS650053).
    UnknownGraphScope(String),
}

impl ScopeError {
    /// (`error`, code, text).
    pub(super) fn describe(&self, tenant: &str) -> (&'static str, u32, String) {
        match self {
            Self::UnknownResource(r) => (
                "invalid_resource",
                500_011,
                format!(
                    "The resource principal named {r} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
                ),
            ),
            Self::UnknownGraphScope(name) => (
                "invalid_scope",
                650_053,
                format!(
                    "The application asked for scope '{name}' that doesn't exist on the resource '{GRAPH_APP_ID}'. Contact the app vendor."
                ),
            ),
        }
    }
}

/// The dev API's identifiers that may prefix its scopes: the client id, `api://{id}` and
/// the extra Application ID URIs.
fn is_api_identifier(s: &Shared, resource: &str) -> bool {
    resource.eq_ignore_ascii_case(&s.api_client_id) || is_api_uri(s, resource)
}

/// The dev API's Application ID URIs (what `resource` may be).
fn is_api_uri(s: &Shared, resource: &str) -> bool {
    resource.eq_ignore_ascii_case(&format!("api://{}", s.api_client_id))
        || s.identifier_uris
            .iter()
            .any(|u| u.eq_ignore_ascii_case(resource))
}

fn graph_name(name: &str) -> Result<String, ScopeError> {
    GRAPH_SCOPES
        .iter()
        .find(|g| g.eq_ignore_ascii_case(name))
        .map(|g| (*g).to_owned())
        .ok_or_else(|| ScopeError::UnknownGraphScope(name.to_owned()))
}

/// Sorts a space-separated `scope` by resource. A short name that is not an OpenID scope
/// is a Graph permission (as in Entra).
pub(super) fn parse_scopes(s: &Shared, raw: &str) -> Result<Scopes, ScopeError> {
    let mut out = Scopes::default();
    for scope in raw.split(' ').filter(|v| !v.is_empty()) {
        if let Some(oidc) = OIDC_SCOPES.iter().find(|o| o.eq_ignore_ascii_case(scope)) {
            push_unique(&mut out.oidc, (*oidc).to_owned());
            continue;
        }
        match scope.rsplit_once('/') {
            None => push_unique(&mut out.graph, graph_name(scope)?),
            Some((resource, name)) if is_api_identifier(s, resource) => {
                out.api_form.get_or_insert_with(|| resource.to_owned());
                push_unique(&mut out.api, name.to_owned());
            }
            Some((resource, name))
                if resource.eq_ignore_ascii_case(GRAPH_RESOURCE)
                    || resource.eq_ignore_ascii_case(GRAPH_APP_ID) =>
            {
                push_unique(&mut out.graph, graph_name(name)?);
            }
            Some((resource, _)) => return Err(ScopeError::UnknownResource(resource.to_owned())),
        }
    }
    Ok(out)
}

fn push_unique(list: &mut Vec<String>, v: String) {
    if !list.contains(&v) {
        list.push(v);
    }
}

/// Entra's rule since 2026: `resource` must be an Application ID URI of the app that owns
/// every requested (non-OpenID) scope.
pub(super) fn resource_matches(s: &Shared, resource: &str, scopes: &Scopes) -> bool {
    match (scopes.api.is_empty(), scopes.graph.is_empty()) {
        (false, true) => is_api_uri(s, resource),
        (true, false) => resource.eq_ignore_ascii_case(GRAPH_RESOURCE),
        _ => false,
    }
}

/// The refusal of a `resource` that [`resource_matches`] rejects: (`error`, code, text).
pub(super) fn invalid_target() -> (&'static str, u32, String) {
    (
        "invalid_target",
        9_010_010,
        "The resource parameter provided in the request doesn't match with the requested scopes."
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use crate::DEV_API_CLIENT_ID;
    use crate::builder::test_shared;

    fn shared() -> Shared {
        test_shared(crate::DevEntra::builder().identifier_uri("http://127.0.0.1:8400/mcp"))
    }

    #[test]
    fn scopes_are_sorted_by_resource() {
        let s = shared();
        let scopes = parse_scopes(
            &s,
            &format!(
                "openid OFFLINE_ACCESS api://{DEV_API_CLIENT_ID}/mcp.tools api://{DEV_API_CLIENT_ID}/mcp.tools user.read"
            ),
        )
        .unwrap();
        assert_eq!(scopes.oidc, ["openid", "offline_access"]);
        assert_eq!(scopes.api, ["mcp.tools"], "named once");
        assert_eq!(
            scopes.api_form.as_deref(),
            Some(format!("api://{DEV_API_CLIENT_ID}").as_str())
        );
        assert_eq!(scopes.graph, ["User.Read"], "Graph's own spelling");
        assert_eq!(scopes.resources(), 2);
        assert!(scopes.has_oidc("offline_access") && !scopes.has_oidc("email"));
    }

    #[test]
    fn the_api_goes_by_its_client_id_and_every_identifier_uri() {
        let s = shared();
        for form in [
            DEV_API_CLIENT_ID.to_owned(),
            format!("API://{DEV_API_CLIENT_ID}"),
            "http://127.0.0.1:8400/mcp".to_owned(),
        ] {
            let scopes = parse_scopes(&s, &format!("{form}/mcp.tools")).unwrap();
            assert_eq!(scopes.api, ["mcp.tools"], "{form}");
            assert_eq!(scopes.api_form.as_deref(), Some(form.as_str()));
        }
        let graph = parse_scopes(&s, "https://graph.microsoft.com/.default").unwrap();
        assert_eq!(graph.graph, [".default"]);
        let by_id = parse_scopes(&s, &format!("{GRAPH_APP_ID}/Mail.Read")).unwrap();
        assert_eq!(by_id.graph, ["Mail.Read"]);
    }

    #[test]
    fn unknown_resources_and_graph_scopes_are_named() {
        let s = shared();
        assert_eq!(
            parse_scopes(&s, "api://other/read").unwrap_err(),
            ScopeError::UnknownResource("api://other".to_owned())
        );
        assert_eq!(
            parse_scopes(&s, "openid Mail.Burn").unwrap_err(),
            ScopeError::UnknownGraphScope("Mail.Burn".to_owned())
        );
        let (error, code, text) =
            ScopeError::UnknownResource("api://other".to_owned()).describe("contoso");
        assert_eq!((error, code), ("invalid_resource", 500_011));
        assert!(
            text.contains("api://other") && text.contains("contoso"),
            "{text}"
        );
        let (error, code, _) = ScopeError::UnknownGraphScope("x".to_owned()).describe("t");
        assert_eq!((error, code), ("invalid_scope", 650_053));
    }

    #[test]
    fn resource_must_be_an_application_id_uri_of_the_one_app_asked() {
        let s = shared();
        let api = parse_scopes(&s, &format!("{DEV_API_CLIENT_ID}/mcp.tools")).unwrap();
        assert!(resource_matches(
            &s,
            &format!("api://{DEV_API_CLIENT_ID}"),
            &api
        ));
        assert!(resource_matches(&s, "http://127.0.0.1:8400/mcp", &api));
        assert!(
            !resource_matches(&s, DEV_API_CLIENT_ID, &api),
            "a client id is not an Application ID URI"
        );
        assert!(!resource_matches(&s, GRAPH_RESOURCE, &api));
        let graph = parse_scopes(&s, "User.Read").unwrap();
        assert!(resource_matches(&s, GRAPH_RESOURCE, &graph));
        let both = parse_scopes(&s, &format!("User.Read {DEV_API_CLIENT_ID}/mcp.tools")).unwrap();
        assert!(!resource_matches(&s, GRAPH_RESOURCE, &both));
        let oidc = parse_scopes(&s, "openid").unwrap();
        assert!(!resource_matches(&s, GRAPH_RESOURCE, &oidc));
        assert_eq!(invalid_target().1, 9_010_010);
    }
}
