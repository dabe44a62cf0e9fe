pub mod authority_io;
pub mod connect;
pub mod grpc;
pub mod session;
pub mod tls;
