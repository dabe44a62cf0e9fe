//! The Konnectivity packets a frontend client sends, classified (sans-IO),
//! and constructors for the packets a server answers with.

use bytes::Bytes;

use crate::proto::{packet::Payload, CloseResponse, Data, DialResponse, Packet, PacketType};

/// DIAL_RSP error text when a stream carries a second DIAL_REQ.
pub const ONE_DIAL_PER_STREAM: &str = "a Proxy stream carries exactly one dial; open a new stream for each connection";
/// Longest target address accepted.
pub const MAX_ADDRESS_LEN: usize = crate::wire::MAX_ADDRESS_LEN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialReq {
    pub protocol: String,
    pub address: String,
    pub random: i64,
}

/// What a client packet asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendPacket {
    DialReq(DialReq),
    Data {
        connect_id: i64,
        data: Bytes,
    },
    CloseReq {
        connect_id: i64,
    },
    DialCls {
        random: i64,
    },
    /// A type a client has no business sending to a server (DIAL_RSP,
    /// CLOSE_RSP), DRAIN, or one this build does not know: tolerated.
    Other(i32),
}

/// A packet whose type and payload disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("packet of type {kind} has no {expected} payload")]
pub struct MalformedPacket {
    pub kind: &'static str,
    pub expected: &'static str,
}

impl TryFrom<Packet> for FrontendPacket {
    type Error = MalformedPacket;

    fn try_from(p: Packet) -> Result<Self, MalformedPacket> {
        let bad = |kind, expected| MalformedPacket { kind, expected };
        match (PacketType::try_from(p.r#type), p.payload) {
            (Ok(PacketType::DialReq), Some(Payload::DialRequest(d))) => {
                Ok(FrontendPacket::DialReq(DialReq { protocol: d.protocol, address: d.address, random: d.random }))
            }
            (Ok(PacketType::DialReq), _) => Err(bad("DIAL_REQ", "dialRequest")),
            (Ok(PacketType::Data), Some(Payload::Data(d))) => {
                Ok(FrontendPacket::Data { connect_id: d.connect_id, data: d.data })
            }
            (Ok(PacketType::Data), _) => Err(bad("DATA", "data")),
            (Ok(PacketType::CloseReq), Some(Payload::CloseRequest(c))) => {
                Ok(FrontendPacket::CloseReq { connect_id: c.connect_id })
            }
            (Ok(PacketType::CloseReq), _) => Err(bad("CLOSE_REQ", "closeRequest")),
            (Ok(PacketType::DialCls), Some(Payload::CloseDial(c))) => Ok(FrontendPacket::DialCls { random: c.random }),
            (Ok(PacketType::DialCls), _) => Err(bad("DIAL_CLS", "closeDial")),
            _ => Ok(FrontendPacket::Other(p.r#type)),
        }
    }
}

/// Checks a DIAL_REQ before any dial is attempted; the error is DIAL_RSP text.
pub fn check_dial(req: &DialReq) -> Result<(), String> {
    if req.protocol != "tcp" {
        return Err(format!("unsupported protocol {:?}: only \"tcp\" is proxied", req.protocol));
    }
    if req.address.is_empty() {
        return Err("empty dial address".to_owned());
    }
    if req.address.len() > MAX_ADDRESS_LEN {
        return Err(format!("dial address longer than {MAX_ADDRESS_LEN} bytes"));
    }
    Ok(())
}

pub fn dial_rsp_ok(random: i64, connect_id: i64) -> Packet {
    Packet {
        r#type: PacketType::DialRsp as i32,
        payload: Some(Payload::DialResponse(DialResponse { error: String::new(), connect_id, random })),
    }
}

pub fn dial_rsp_err(random: i64, error: &str) -> Packet {
    Packet {
        r#type: PacketType::DialRsp as i32,
        payload: Some(Payload::DialResponse(DialResponse { error: error.to_owned(), connect_id: 0, random })),
    }
}

pub fn data(connect_id: i64, data: Bytes) -> Packet {
    Packet {
        r#type: PacketType::Data as i32,
        payload: Some(Payload::Data(Data { connect_id, error: String::new(), data })),
    }
}

/// Protobuf field numbers of `Packet.data` and `Data.data`.
const PACKET_DATA_FIELD: u32 = 4;
const DATA_DATA_FIELD: u32 = 3;

/// The encoding of [`data`]`(connect_id, payload)` up to the payload bytes,
/// for a payload of `len` bytes: a DATA packet is this head followed by the
/// payload itself, so a frontend can write a payload held in several
/// buffers without joining them first. Fields are written in the order
/// prost writes them, so the result equals prost's encoding byte for byte.
pub fn data_head(connect_id: i64, len: usize) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    use prost::Message;
    let fields = Data { connect_id, error: String::new(), data: Bytes::new() };
    let payload_field = if len == 0 { 0 } else { 1 + encoded_len_varint(len as u64) + len };
    let inner_len = fields.encoded_len() + payload_field;
    let packet = Packet { r#type: PacketType::Data as i32, payload: None };
    let mut head = Vec::with_capacity(packet.encoded_len() + 24);
    packet.encode_raw(&mut head);
    encode_key(PACKET_DATA_FIELD, WireType::LengthDelimited, &mut head);
    encode_varint(inner_len as u64, &mut head);
    fields.encode_raw(&mut head);
    if len > 0 {
        encode_key(DATA_DATA_FIELD, WireType::LengthDelimited, &mut head);
        encode_varint(len as u64, &mut head);
    }
    head
}

pub fn close_rsp(connect_id: i64, error: &str) -> Packet {
    Packet {
        r#type: PacketType::CloseRsp as i32,
        payload: Some(Payload::CloseResponse(CloseResponse { error: error.to_owned(), connect_id })),
    }
}

/// Client-side constructors (tests, load generator).
pub mod client {
    use super::*;
    use crate::proto::{CloseDial, CloseRequest, DialRequest};

    pub fn dial_req(address: &str, random: i64) -> Packet {
        Packet {
            r#type: PacketType::DialReq as i32,
            payload: Some(Payload::DialRequest(DialRequest {
                protocol: "tcp".into(),
                address: address.into(),
                random,
            })),
        }
    }

    pub fn close_req(connect_id: i64) -> Packet {
        Packet {
            r#type: PacketType::CloseReq as i32,
            payload: Some(Payload::CloseRequest(CloseRequest { connect_id })),
        }
    }

    pub fn dial_cls(random: i64) -> Packet {
        Packet { r#type: PacketType::DialCls as i32, payload: Some(Payload::CloseDial(CloseDial { random })) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_client_packets() {
        let p = FrontendPacket::try_from(client::dial_req("a:1", 7)).unwrap();
        assert_eq!(p, FrontendPacket::DialReq(DialReq { protocol: "tcp".into(), address: "a:1".into(), random: 7 }));
        let p = FrontendPacket::try_from(data(3, Bytes::from_static(b"x"))).unwrap();
        assert_eq!(p, FrontendPacket::Data { connect_id: 3, data: Bytes::from_static(b"x") });
        assert_eq!(FrontendPacket::try_from(client::close_req(3)).unwrap(), FrontendPacket::CloseReq { connect_id: 3 });
        assert_eq!(FrontendPacket::try_from(client::dial_cls(9)).unwrap(), FrontendPacket::DialCls { random: 9 });
    }

    #[test]
    fn unknown_and_server_types_are_tolerated() {
        let drain = Packet { r#type: PacketType::Drain as i32, payload: None };
        assert_eq!(FrontendPacket::try_from(drain).unwrap(), FrontendPacket::Other(6));
        let future = Packet { r#type: 42, payload: None };
        assert_eq!(FrontendPacket::try_from(future).unwrap(), FrontendPacket::Other(42));
        assert_eq!(FrontendPacket::try_from(close_rsp(1, "")).unwrap(), FrontendPacket::Other(3));
    }

    #[test]
    fn type_payload_mismatch_is_malformed() {
        let p = Packet { r#type: PacketType::Data as i32, payload: None };
        assert_eq!(FrontendPacket::try_from(p).unwrap_err().kind, "DATA");
        let mut p = client::dial_req("a:1", 1);
        p.r#type = PacketType::CloseReq as i32;
        assert!(FrontendPacket::try_from(p).is_err());
    }

    #[test]
    fn data_head_and_payload_encode_as_prost_does() {
        use prost::Message;
        for connect_id in [0, 1, 127, 128, 1 << 40, -1] {
            for len in [0, 1, 127, 128, 16_383, 16_384, 100_000, 2_097_152] {
                let payload = Bytes::from(vec![0xa5u8; len]);
                let mut ours = data_head(connect_id, len);
                ours.extend_from_slice(&payload);
                assert_eq!(ours, data(connect_id, payload).encode_to_vec(), "connect_id {connect_id}, {len} bytes");
            }
        }
    }

    #[test]
    fn dial_checks() {
        let ok = DialReq { protocol: "tcp".into(), address: "a:1".into(), random: 1 };
        assert!(check_dial(&ok).is_ok());
        assert!(check_dial(&DialReq { protocol: "udp".into(), ..ok.clone() }).unwrap_err().contains("udp"));
        assert!(check_dial(&DialReq { address: String::new(), ..ok.clone() }).is_err());
        assert!(check_dial(&DialReq { address: "x".repeat(2000), ..ok }).is_err());
    }
}
