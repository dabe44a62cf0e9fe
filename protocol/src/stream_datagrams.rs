//! QUIC datagrams framed over a byte stream (TCP), for networks that drop
//! UDP. Sans-IO: the async side is [`crate::stream_socket`].
//!
//! The agent opens the TCP connection with [`PREAMBLE`]; after it both
//! sides send frames, each one QUIC datagram: a 2-byte big-endian length
//! (1 to 65,535) and that many bytes. Nothing else is added: the QUIC
//! packets inside carry their own TLS 1.3 handshake, authentication and
//! encryption, so the same certificates, tokens and streams work over both
//! transports, and each proxied connection keeps its own QUIC stream and
//! flow control. What TCP takes back is loss recovery: one lost segment
//! holds up every stream behind it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What an agent sends first: "KQDG", the version (1), three zero bytes.
pub const PREAMBLE: [u8; 8] = *b"KQDG\x01\0\0\0";

/// Largest datagram a frame carries.
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Length of a frame's header.
const HEADER: usize = 2;

/// A violation of the framing, naming what the peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamDatagramError {
    #[error("{0}")]
    Preamble(String),
    #[error("empty frame (length 0)")]
    EmptyFrame,
    #[error("datagram of {0} bytes does not fit a frame (at most {MAX_DATAGRAM})")]
    TooLarge(usize),
}

/// Checks an agent's first 8 bytes; the error says what they look like
/// instead (an operator who points the wrong client at the port reads it in
/// the server's log).
pub fn check_preamble(got: &[u8; 8]) -> Result<(), StreamDatagramError> {
    if *got == PREAMBLE {
        return Ok(());
    }
    let what = if got[..4] == PREAMBLE[..4] {
        format!("konnq stream-datagram version {}, this side speaks {}", got[4], PREAMBLE[4])
    } else if got[0] == 0x16 && got[1] == 0x03 {
        "a TLS handshake (an upstream proxy-agent, or a client expecting gRPC over TLS?); \
         konnq agents speak QUIC here, over UDP or framed over TCP"
            .to_owned()
    } else if [&b"GET "[..], b"POST", b"PRI ", b"CONN", b"HEAD"].iter().any(|m| got.starts_with(m)) {
        "an HTTP request; this is the agent port".to_owned()
    } else {
        format!("not a konnq agent (first bytes {})", hex(got))
    };
    Err(StreamDatagramError::Preamble(what))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends `datagram` as one frame.
pub fn encode_into(datagram: &[u8], out: &mut BytesMut) -> Result<(), StreamDatagramError> {
    if datagram.is_empty() {
        return Err(StreamDatagramError::EmptyFrame);
    }
    let len = u16::try_from(datagram.len()).map_err(|_| StreamDatagramError::TooLarge(datagram.len()))?;
    out.reserve(HEADER + datagram.len());
    out.put_u16(len);
    out.put_slice(datagram);
    Ok(())
}

/// Takes one whole frame's datagram off the front of `buf`; `Ok(None)`
/// while the frame is incomplete (read more and call again).
pub fn decode(buf: &mut BytesMut) -> Result<Option<Bytes>, StreamDatagramError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if len == 0 {
        return Err(StreamDatagramError::EmptyFrame);
    }
    if buf.len() < HEADER + len {
        buf.reserve(HEADER + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER);
    Ok(Some(buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(datagrams: &[&[u8]]) -> BytesMut {
        let mut out = BytesMut::new();
        for d in datagrams {
            encode_into(d, &mut out).expect("encodes");
        }
        out
    }

    #[test]
    fn frames_round_trip_whole_split_and_byte_at_a_time() {
        let big = vec![7u8; MAX_DATAGRAM];
        let wire = frames(&[b"one", b"two two", &big]);
        let mut whole = wire.clone();
        assert_eq!(decode(&mut whole).unwrap().unwrap(), &b"one"[..]);
        assert_eq!(decode(&mut whole).unwrap().unwrap(), &b"two two"[..]);
        assert_eq!(decode(&mut whole).unwrap().unwrap().len(), MAX_DATAGRAM);
        assert_eq!(decode(&mut whole).unwrap(), None);

        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(d) = decode(&mut buf).unwrap() {
                got.push(d);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], &b"two two"[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn empty_and_oversize_datagrams_are_refused() {
        let mut out = BytesMut::new();
        assert_eq!(encode_into(b"", &mut out), Err(StreamDatagramError::EmptyFrame));
        let huge = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(encode_into(&huge, &mut out), Err(StreamDatagramError::TooLarge(MAX_DATAGRAM + 1)));
        assert!(out.is_empty(), "nothing written on error");
        let mut zero = BytesMut::from(&[0u8, 0, 1, 2][..]);
        assert_eq!(decode(&mut zero), Err(StreamDatagramError::EmptyFrame));
    }

    #[test]
    fn garbage_decodes_into_frames_or_waits_never_panics() {
        let mut seed = 0x1234_5678_u32;
        for _ in 0..2000 {
            let mut buf = BytesMut::new();
            for _ in 0..(seed % 40) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                buf.put_u8((seed >> 16) as u8);
            }
            while let Ok(Some(_)) = decode(&mut buf) {}
        }
    }

    #[test]
    fn a_wrong_preamble_says_what_it_looks_like() {
        assert_eq!(check_preamble(&PREAMBLE), Ok(()));
        let tls = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01];
        assert!(check_preamble(&tls).unwrap_err().to_string().contains("TLS handshake"));
        assert!(check_preamble(b"GET / HT").unwrap_err().to_string().contains("HTTP request"));
        assert!(check_preamble(b"KQDG\x02\0\0\0").unwrap_err().to_string().contains("version 2, this side speaks 1"));
        assert!(check_preamble(b"\0\x01garbag").unwrap_err().to_string().contains("first bytes 0001676172626167"));
    }
}
