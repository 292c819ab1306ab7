//! Compiles the public contract under `../proto` with a vendored `protoc`; this crate never
//! depends on the root crate (that would pull kube into the wheel).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        std::env::set_var("PROTOC", protoc);
    }
    // Read when the script runs, not baked in when it is compiled: a target dir shared by two
    // clones would otherwise compile the other clone's contract.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let protos = [
        root.join("jac/splice/v1/value.proto"),
        root.join("jac/splice/v1/module.proto"),
        root.join("jac/splice/v1/orchestrator.proto"),
    ];
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `bytes` fields as `bytes::Bytes`: array data is decoded as a view of the received
        // message and encoded from a view of the numpy array (no intermediate Vec).
        .bytes(".")
        .compile_protos(&protos, std::slice::from_ref(&root))?;
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Ok(())
}
