//! [`ValidateTokenLayer`]: bearer token → [`Principal`](crate::Principal) in the request
//! extensions, or a 401/403/503 answered without calling the inner service.
//!
//! ```
//! use axum::{Router, routing::get};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use idguard::{IdGuard, Principal};
//! use idguard_dev::DevEntra;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let entra = DevEntra::builder().start().await?;
//! let guard = IdGuard::builder()
//!     .authority(entra.url())
//!     .tenant(entra.tenant_id())
//!     .client_id(entra.api_client_id())
//!     .resource("http://127.0.0.1:8400/api")
//!     .build()
//!     .await?;
//! let app = Router::new()
//!     .route("/me", get(|p: Principal| async move { p.object_id().to_owned() }))
//!     .route_layer(guard.validate_token_layer());
//!
//! // Allowed: a token the emulator minted for a demo user.
//! let token = entra.token_for("alice")?.mint()?;
//! let req = Request::get("/me").header("authorization", format!("Bearer {token}")).body(axum::body::Body::empty())?;
//! assert_eq!(app.clone().oneshot(req).await?.status(), StatusCode::OK);
//!
//! // Rejected: no token.
//! let res = app.oneshot(Request::get("/me").body(axum::body::Body::empty())?).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::authenticate::{Admitted, Authenticator, Authn};
use crate::error::Rejection;

/// Validates the bearer token of every request: the `Principal` goes into the request
/// extensions, or idguard answers 401/403/503 without calling the inner service.
///
/// Built from an [`IdGuard`](crate::IdGuard) ([`ValidateTokenLayer::new`] or
/// [`IdGuard::validate_token_layer`](crate::IdGuard::validate_token_layer)); it shares the
/// guard's authentication (keys, caches, counters).
#[derive(Clone, Debug)]
#[must_use]
pub struct ValidateTokenLayer {
    auth: Arc<Authenticator>,
}

impl ValidateTokenLayer {
    /// A layer running `auth` (the guard's).
    pub(crate) fn with_authenticator(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for ValidateTokenLayer {
    type Service = ValidateToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ValidateToken {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// The service built by [`ValidateTokenLayer`].
#[derive(Clone, Debug)]
pub struct ValidateToken<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> ValidateToken<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ValidateToken<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        match self.auth.authenticate(req.headers()) {
            Authn::Done(Ok(admitted)) => {
                admitted.insert_into(req.extensions_mut());
                ResponseFuture::inner(self.inner.call(req))
            }
            Authn::Done(Err(refusal)) => ResponseFuture::rejected(self.auth.rejection(refusal)),
            // Boxed: these paths run only when a token names a `kid` we have not seen (at
            // most once per key rotation), for an idguard-issued token, or for a groups
            // overage whose membership is not cached yet; the hot path above allocates
            // nothing.
            slow => {
                let auth = Arc::clone(&self.auth);
                let complete = Box::pin(async move {
                    let outcome = auth.complete(slow).await;
                    outcome.map_err(|refusal| auth.rejection(refusal))
                });
                self.authorize(complete, req)
            }
        }
    }
}

impl<S: Clone> ValidateToken<S> {
    /// Clone-and-swap: the service that was driven to readiness goes into the future; the
    /// fresh clone stays here for the next call.
    fn authorize<ReqBody>(
        &mut self,
        refresh: BoxFuture<'static, Result<Admitted, Rejection>>,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            kind: Kind::Authorize {
                refresh,
                inner: Some(ready),
                req: Some(req),
            },
        }
    }
}

pin_project! {
    /// Response future of [`ValidateToken`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        kind: Kind<S, ReqBody>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Inner { #[pin] future: S::Future },
        Rejected { rejection: Option<Rejection> },
        Authorize {
            refresh: BoxFuture<'static, Result<Admitted, Rejection>>,
            inner: Option<S>,
            req: Option<Request<ReqBody>>,
        },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn inner(future: S::Future) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    fn rejected(rejection: Rejection) -> Self {
        Self {
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.kind.as_mut().project() {
                KindProj::Inner { future } => return future.poll(cx),
                KindProj::Rejected { rejection } => {
                    return Poll::Ready(Ok(match rejection.take() {
                        Some(r) => r.into_response(),
                        // Only reachable by polling after completion; never answer 200.
                        None => {
                            let mut res = Response::new(ResBody::default());
                            *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                            res
                        }
                    }));
                }
                KindProj::Authorize {
                    refresh,
                    inner,
                    req,
                } => {
                    let outcome = ready!(refresh.as_mut().poll(cx));
                    match (outcome, inner.take(), req.take()) {
                        (Ok(admitted), Some(mut svc), Some(mut req)) => {
                            admitted.insert_into(req.extensions_mut());
                            Kind::Inner {
                                future: svc.call(req),
                            }
                        }
                        (Err(rejection), _, _) => Kind::Rejected {
                            rejection: Some(rejection),
                        },
                        // Polled again after completion: nothing left to do.
                        (Ok(_), _, _) => Kind::Rejected { rejection: None },
                    }
                }
            };
            this.kind.set(next);
        }
    }
}

impl<S, ReqBody> std::fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
