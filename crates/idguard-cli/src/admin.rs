//! Admin endpoints of `idguard serve`, for callers holding the configured admin app role
//! (`server.admin_role`): `GET /admin/decisions`, the live decision trace.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt as _;
use futures_util::stream::{self, Stream};

use idguard::RejectionKind;
use idguard::policy::{DecisionTrace, PolicyEngine, TraceError, TraceFilter};
use idguard::{IdGuard, Principal};

/// The admin routes: token validation as on every route, then the admin role.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(
    guard: &IdGuard,
    policies: PolicyEngine,
    role: String,
) -> Router<S> {
    let role: Arc<str> = role.into();
    Router::new().route(
        "/admin/decisions",
        get(move |p: Principal, filter: Query<TraceFilter>| {
            decisions(policies.clone(), role.clone(), p, filter.0)
        })
        .route_layer(guard.validate_token_layer()),
    )
}

/// `GET /admin/decisions?caller=&item=&outcome=allow|deny&phase=list|call&disagreements=true`:
/// decisions as Server-Sent Events (`event: decision`, JSON data), from the moment of the
/// request. The first event is `ready` (listening from then on); `lagged` says how many
/// events this listener missed by reading too slowly.
async fn decisions(
    policies: PolicyEngine,
    role: Arc<str>,
    principal: Principal,
    filter: TraceFilter,
) -> Response {
    if !principal.has_role(&role) {
        tracing::debug!(target: "idguard::rejection", oid = principal.object_id(), role = &*role, "admin endpoint: the caller lacks the admin role");
        return idguard::internals::rejection(RejectionKind::Forbidden).into_response();
    }
    tracing::info!(target: "idguard::audit", event = "decision_trace_opened", tenant = principal.tenant_id(), oid = principal.object_id(), ?filter);
    let trace = policies.trace();
    Sse::new(events(trace, filter))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn events(
    trace: DecisionTrace,
    filter: TraceFilter,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let ready = Event::default().event("ready").data("{}");
    let rest = stream::unfold((trace, filter), |(mut trace, filter)| async move {
        loop {
            let event = match trace.recv().await {
                Ok(decision) if filter.matches(&decision) => {
                    match Event::default().event("decision").json_data(&*decision) {
                        Ok(event) => event,
                        Err(_) => continue,
                    }
                }
                Ok(_) => continue,
                Err(TraceError::Lagged(n)) => Event::default()
                    .event("lagged")
                    .data(format!("{{\"dropped\":{n}}}")),
                Err(_) => return None,
            };
            return Some((Ok(event), (trace, filter)));
        }
    });
    stream::once(async move { Ok(ready) }).chain(rest)
}
