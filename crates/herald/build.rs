//! Compiles `proto/herald/v1/herald.proto` (the gRPC API, `src/grpc`) with protox, a
//! protobuf compiler in pure Rust, so a fresh machine builds with plain `cargo build`
//! and no `protoc`. Writes the server and client code and the descriptor set that
//! gRPC reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/herald/v1/herald.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("herald_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The tests make their own channel: the binary has no gRPC client transport.
        .build_transport(false)
        // Small per-call buffers: an idle stream keeps its encode buffer.
        .codec_path("crate::grpc::codec::SmallCodec")
        .compile_fds(fds)?;
    Ok(())
}
