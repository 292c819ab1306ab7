//! Integration tests: one binary, one module per area. Each test starts the real server on a
//! loopback port and talks to it with real gRPC, grpc-web and HTTP clients.

mod access;
mod affinity;
mod auth;
mod browser;
mod cli;
mod deploy;
mod dry_run;
mod edge;
mod ensure;
mod grpc_web;
mod idle;
mod inputs;
mod kube;
mod legacy_store;
mod limits;
mod local_backend;
mod logs;
mod module_access;
mod observability;
mod proxy;
mod references;
mod reflection;
mod rest;
mod revisions;
mod served;
mod startup;
mod support;
mod tls;
mod upstream_store;
