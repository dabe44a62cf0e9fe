pub mod accept;
pub mod budget;
pub mod connect;
pub mod http2;
pub mod session;
pub mod tls;
