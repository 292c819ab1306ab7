//! Generated protobuf and gRPC types of the public contract (`proto/jac/splice/v1`).

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub, missing_debug_implementations)]
#[rustfmt::skip]
mod generated {
    tonic::include_proto!("jac.splice.v1");
}

pub use generated::*;

/// Encoded descriptor set of every service, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("jac_splice_descriptor");

#[cfg(test)]
mod tests {
    #[test]
    fn descriptor_set_decodes_and_names_the_services() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<_> = set.file.iter().flat_map(|f| f.service.iter().map(|s| s.name().to_string())).collect();
        for name in ["Orchestrator", "ModuleService", "ModuleProxy"] {
            assert!(services.iter().any(|s| s == name), "{name} missing from {services:?}");
        }
    }
}
