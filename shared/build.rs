//! Generates the gRPC service `ProxyService` (tonic) from
//! `protocol/proto/konnectivity.proto` with a pure-Rust protobuf compiler
//! (protox), so building konnq needs no `protoc` on the machine. The
//! messages are konnq-protocol's (`konnq_protocol::proto`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../protocol/proto/konnectivity.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../protocol/proto"])?;
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-stream buffers: see src/codec.rs.
        .codec_path("crate::codec::LeanCodec");
    for message in [
        "Packet",
        "PacketType",
        "DialRequest",
        "DialResponse",
        "CloseRequest",
        "CloseResponse",
        "CloseDial",
        "Drain",
        "Data",
    ] {
        builder = builder.extern_path(format!(".{message}"), format!("::konnq_protocol::proto::{message}"));
    }
    builder.compile_fds(fds)?;
    Ok(())
}
