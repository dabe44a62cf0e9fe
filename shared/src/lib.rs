pub mod proto {
    tonic::include_proto!("_");
}
pub mod certs;
pub mod client;
pub mod config;
pub mod gauge;
pub mod h2authority;
pub mod konnectivity;
pub mod logging;
pub mod quic;
pub mod signal;
pub mod tls;
pub mod wire;
pub mod codec;
