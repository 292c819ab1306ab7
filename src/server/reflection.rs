//! gRPC reflection as grpcurl and other generic clients use it: v1 and v1alpha (grpcurl before
//! 1.8.7 asks v1alpha only), the orchestrator's own services, health, and the `google.rpc`
//! error-detail messages (`ErrorInfo`, `BadRequest`, …) our errors carry, so a client can decode
//! `grpc-status-details-bin` without its own copy of those protos.
//!
//! `ModuleService` is defined beside `ModuleProxy` in module.proto but only module servers serve
//! it; listing it here would advertise a service that answers Unimplemented, so it is taken out of
//! the descriptor this server reflects.

use prost::Message;
use prost_types::FileDescriptorSet;
use tonic_reflection::server::{Builder, Error};

use crate::pb;

/// The service only module servers implement.
const MODULE_SERVICE: &str = "ModuleService";

/// A reflection builder over those descriptors; `build_v1` and `build_v1alpha` of two such
/// builders answer alike.
pub(super) fn builder() -> Result<Builder<'static>, Error> {
    Ok(Builder::configure()
        .register_file_descriptor_set(orchestrator_descriptors()?)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET))
}

/// The project's descriptors without the module servers' service.
fn orchestrator_descriptors() -> Result<FileDescriptorSet, Error> {
    let mut set = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)?;
    for file in set.file.iter_mut().filter(|f| f.package() == "jac.splice.v1") {
        file.service.retain(|s| s.name() != MODULE_SERVICE);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: &FileDescriptorSet) -> Vec<String> {
        set.file.iter().flat_map(|f| f.service.iter().map(|s| format!("{}.{}", f.package(), s.name()))).collect()
    }

    #[test]
    fn the_orchestrator_reflects_its_services_but_not_the_module_servers_one() {
        let names = names(&orchestrator_descriptors().unwrap());
        assert!(names.contains(&"jac.splice.v1.Orchestrator".to_string()), "{names:?}");
        assert!(names.contains(&"jac.splice.v1.ModuleProxy".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with(".ModuleService")), "{names:?}");
    }

    #[test]
    fn the_error_detail_messages_are_in_a_registered_set() {
        let set = FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET).unwrap();
        let messages: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| f.message_type.iter().map(|m| format!("{}.{}", f.package(), m.name())))
            .collect();
        for want in ["google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.rpc.Status"] {
            assert!(messages.contains(&want.to_string()), "{want} missing from {messages:?}");
        }
    }
}
