//! Compiles `proto/konnectivity.proto` with a pure-Rust protobuf compiler
//! (protox), so building konnq needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/konnectivity.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // DATA payloads as `bytes::Bytes`: handed to QUIC without a copy.
        .bytes(".Data.data")
        // Small per-stream buffers: see src/codec.rs.
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
