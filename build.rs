//! Generates the gRPC code of scp-pep's own services (`proto/`) without `protoc`: `protox`
//! compiles the `.proto` files to a `FileDescriptorSet` in Rust, `tonic-prost-build` turns that
//! into messages, a server and a client (included by `src/proto.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: &[&str] = &["proto/scp/pep/v1/decision_log.proto"];
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
