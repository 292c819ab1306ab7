//! Compiles the public contract under `proto/` with a vendored `protoc`, so no system package is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY-free: build scripts are single-threaded when this runs.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        std::env::set_var("PROTOC", protoc);
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/jac/splice/v1/orchestrator.proto",
        "proto/jac/splice/v1/value.proto",
        "proto/jac/splice/v1/module.proto",
    ];
    tonic_prost_build::configure()
        // Maps in a stable (sorted) order, so what the CLI prints is the same run after run.
        .btree_map(".")
        // Undecodable requests are InvalidArgument, not tonic-prost's Internal.
        .codec_path("crate::api::codec::StrictCodec")
        .file_descriptor_set_path(out.join("jac_splice_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
