pub mod proto {
    tonic::include_proto!("_");
}
pub mod wire;
pub mod quic;
pub mod tls;
pub mod certs;
pub mod config;
pub mod h2authority;
pub mod konnectivity;
pub mod logging;
pub mod signal;
