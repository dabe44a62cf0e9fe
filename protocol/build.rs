//! Compiles the messages of `proto/konnectivity.proto` with a pure-Rust
//! protobuf compiler (protox), so building konnq needs no `protoc` on the
//! machine. The gRPC service (tonic) is generated in konnq-shared, over
//! these messages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/konnectivity.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    prost_build::Config::new()
        // DATA payloads as `bytes::Bytes`: handed to QUIC without a copy.
        .bytes([".Data.data"])
        .compile_fds(fds)?;
    Ok(())
}
