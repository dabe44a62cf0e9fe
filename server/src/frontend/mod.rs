pub mod authority_io;
pub mod grpc;
pub mod session;
