//! QUIC datagrams framed over TCP ([`crate::stream_datagrams`]).

use bytes::BytesMut;

use super::Chunks;
use crate::stream_datagrams::{check_preamble, decode, encode_into, StreamDatagramError, PREAMBLE};

/// The first byte picks the sizes the rest arrives in; the rest is a
/// preamble and frames. Fed piece by piece, the stream must give the same
/// datagrams (and the same error, if any) as all at once, and the datagrams
/// re-encoded must be exactly the bytes consumed.
pub fn stream_datagrams(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else { return };
    if let Some(preamble) = stream.first_chunk::<{ PREAMBLE.len() }>() {
        match check_preamble(preamble) {
            Ok(()) => assert_eq!(preamble, &PREAMBLE),
            Err(e) => drop(e.to_string()),
        }
    }
    let whole = decode_all(&mut BytesMut::from(stream));
    let mut buf = BytesMut::new();
    let mut pieces = Chunks::new(seed);
    let mut fed = 0;
    let mut got = Vec::new();
    let mut end = None;
    while fed < stream.len() && end.is_none() {
        let n = pieces.next_len().min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        let (datagrams, result) = decode_all(&mut buf);
        got.extend(datagrams);
        end = result.err();
    }
    let end = end.map_or(Ok(()), Err);
    assert_eq!((&got, &end), (&whole.0, &whole.1), "pieces and the whole stream decode differently");

    let mut reencoded = BytesMut::new();
    for datagram in &got {
        encode_into(datagram, &mut reencoded).expect("a decoded datagram encodes");
    }
    assert_eq!(&reencoded[..], &stream[..reencoded.len()]);
    if end.is_ok() {
        assert_eq!(&buf[..], &stream[reencoded.len()..], "bytes left over are the incomplete frame");
    }
}

/// Takes every whole frame off `buf`: the datagrams, then `Ok` when the rest
/// is incomplete or the error that stopped decoding.
fn decode_all(buf: &mut BytesMut) -> (Vec<Vec<u8>>, Result<(), StreamDatagramError>) {
    let mut datagrams = Vec::new();
    loop {
        match decode(buf) {
            Ok(Some(d)) => datagrams.push(d.to_vec()),
            Ok(None) => return (datagrams, Ok(())),
            Err(e) => {
                drop(e.to_string());
                return (datagrams, Err(e));
            }
        }
    }
}
