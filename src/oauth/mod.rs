//! OAuth endpoints served next to the protected resource.
//!
//! Today: RFC 9728 protected-resource metadata
//! ([`IdGuard::metadata_router`](crate::IdGuard::metadata_router)).

mod metadata;

pub use metadata::ProtectedResourceMetadata;
