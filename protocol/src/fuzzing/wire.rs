//! The server↔agent frames: every message type decoded from arbitrary bytes
//! both ways the code decodes them (a buffer with [`decode`], or a header
//! read on its own with [`decode_header`] then [`from_frame`] on the body),
//! and every decoded value re-encoded.
//!
//! [`decode`]: Codec::decode
//! [`from_frame`]: Codec::from_frame

use std::fmt::Debug;

use crate::wire::{
    decode_frame, decode_header, Control, DialHeader, DialResult, WireError, HEADER_LEN, MAX_CONTROL_BODY,
    MAX_DIAL_BODY,
};

/// The three message types, as one interface.
trait Codec: Sized + Debug + PartialEq {
    const MAX_BODY: usize;
    fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, WireError>;
    fn from_frame(kind: u8, body: &[u8]) -> Result<Self, WireError>;
    fn encode(&self) -> Vec<u8>;
}

macro_rules! codec {
    ($type:ty, $max:expr) => {
        impl Codec for $type {
            const MAX_BODY: usize = $max;
            fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, WireError> {
                <$type>::decode(buf)
            }
            fn from_frame(kind: u8, body: &[u8]) -> Result<Self, WireError> {
                <$type>::from_frame(kind, body)
            }
            fn encode(&self) -> Vec<u8> {
                <$type>::encode(self)
            }
        }
    };
}

codec!(DialHeader, MAX_DIAL_BODY);
codec!(DialResult, MAX_DIAL_BODY);
codec!(Control, MAX_CONTROL_BODY);

/// `data` as the start of a dial stream or control stream, and (first byte
/// as the kind, the rest as the body) as an already delimited frame.
pub fn wire(data: &[u8]) {
    for max in [MAX_DIAL_BODY, MAX_CONTROL_BODY] {
        frame_and_header_agree(data, max);
    }
    check::<DialHeader>(data);
    check::<DialResult>(data);
    check::<Control>(data);
}

/// [`decode_frame`] and [`decode_header`] accept the same headers, and a
/// complete frame is incomplete one byte short.
fn frame_and_header_agree(data: &[u8], max: usize) {
    let frame = decode_frame(data, max, "fuzzed frame");
    if let Err(e) = &frame {
        drop(e.to_string());
    }
    let Some(header) = data.first_chunk::<HEADER_LEN>() else {
        assert!(matches!(frame, Ok(None) | Err(WireError::UnsupportedVersion { .. })), "{frame:?}");
        return;
    };
    match (decode_header(header, max, "fuzzed frame"), &frame) {
        (Ok((kind, len)), Ok(Some(raw))) => {
            assert_eq!((kind, len, raw.consumed), (raw.kind, raw.body.len(), HEADER_LEN + len));
            assert_eq!(raw.body, &data[HEADER_LEN..raw.consumed]);
            assert_eq!(decode_frame(&data[..raw.consumed - 1], max, "fuzzed frame"), Ok(None));
        }
        (Ok((_, len)), Ok(None)) => assert!(data.len() < HEADER_LEN + len),
        (Err(a), Err(b)) => assert_eq!(&a, b),
        (header, frame) => panic!("decode_header gave {header:?}, decode_frame {frame:?}"),
    }
}

fn check<T: Codec>(data: &[u8]) {
    match T::decode(data) {
        Ok(Some((value, consumed))) => {
            // Decoded values re-encode to the very bytes they came from.
            assert_eq!(value.encode(), &data[..consumed], "{value:?} re-encodes differently");
            let header = data.first_chunk::<HEADER_LEN>().expect("a whole frame has a header");
            let (kind, len) = decode_header(header, T::MAX_BODY, "frame").expect("decode accepted the header");
            assert_eq!(T::from_frame(kind, &data[HEADER_LEN..HEADER_LEN + len]).as_ref(), Ok(&value));
        }
        Ok(None) => {}
        Err(e) => drop(e.to_string()),
    }
    let Some((&kind, body)) = data.split_first() else { return };
    match T::from_frame(kind, body) {
        Ok(value) => {
            // Bodies beyond the frame limit never arrive that way; the
            // encoder may shorten a string to fit (a dial failure's reason).
            let encoded = value.encode();
            let again = T::from_frame(encoded[1], &encoded[HEADER_LEN..]).expect("an encoded value decodes");
            if body.len() <= T::MAX_BODY {
                assert_eq!(&encoded[HEADER_LEN..], body, "{value:?} re-encodes differently");
                assert_eq!(again, value);
            }
        }
        Err(e) => drop(e.to_string()),
    }
}
