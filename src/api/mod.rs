//! The edges over [`crate::service`]: gRPC (tonic), the REST gateway (axum) and `ModuleProxy`.
//! They encode the service's views and never build them; every error goes through the one
//! table in [`status`].

pub mod codec;
pub mod convert;
pub mod docs;
pub mod ensure;
pub mod events;
pub mod grpc;
pub mod layers;
pub mod logs;
mod module_access;
pub mod module_proxy;
pub mod openapi;
pub mod rest;
pub mod revisions;
pub mod status;
