//! Integration tests: one binary, one module per area. Each test starts the real server on a
//! loopback port and talks to it with real gRPC, grpc-web and HTTP clients.

mod auth;
mod cli;
mod deploy;
mod dry_run;
mod grpc_web;
mod kube;
mod legacy_store;
mod local_backend;
mod proxy;
mod reflection;
mod rest;
mod startup;
mod support;
mod upstream_store;
