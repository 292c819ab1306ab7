//! jac-splice-orc: a gRPC-first control plane that deploys services from overridable templates
//! and turns Python modules into microservices. This file only declares modules.

pub mod api;
pub mod auth;
pub mod backend;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod pb;
pub mod plan;
pub mod proxy;
pub mod reconcile;
pub mod server;
pub mod service;
pub mod startup;
pub mod tls;
