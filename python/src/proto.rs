//! Generated protobuf and gRPC code for `jac.splice.v1`.
#![allow(clippy::all, missing_docs)]
tonic::include_proto!("jac.splice.v1");
