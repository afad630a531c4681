//! Compiles `proto/herald/v1/herald.proto` (the gRPC API, `src/grpc`) with protox, a
//! protobuf compiler in pure Rust, so a fresh machine builds with plain `cargo build`
//! and no `protoc`. Writes the server and client code and the descriptor set that
//! gRPC reflection serves.
//!
//! Static glibc builds (`+crt-static`, scripts/build-static.sh and the Dockerfile)
//! also link the binary with packed relative relocations (`-z pack-relative-relocs`,
//! DT_RELR): a static-pie binary holds one 24-byte `R_X86_64_RELATIVE` entry per
//! pointer in its data (22,000 of them, 0.5 MB); packed, they take a few KB. The
//! static glibc linked in (2.36 or later) applies them at start; a dynamic build is
//! left alone, as its loader might predate DT_RELR.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/herald/v1/herald.proto";
    println!("cargo:rerun-if-changed={proto}");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && var("CARGO_CFG_TARGET_FEATURE")
            .split(',')
            .any(|f| f == "crt-static")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
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
