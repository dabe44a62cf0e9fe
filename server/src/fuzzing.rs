//! Body of the `http_connect` fuzz target in `fuzz/` (cargo-fuzz, nightly),
//! a plain function so `tests/fuzz_corpora.rs` replays the committed corpus
//! through the same code on stable. It panics only when a property fails.

use konnq_protocol::konnectivity::{check_dial, DialReq};

use crate::frontend::connect::{parse_head, Head, HeadError, MAX_HEAD};

/// Arbitrary bytes as the start of an HTTP-CONNECT client's stream. The
/// first byte picks the sizes the rest arrives in: parsed after every
/// piece, as the frontend reads it, the first answer that is not "more
/// bytes needed" must be the answer for the whole input (unless the head
/// outgrew the limit first), and a CONNECT target goes through the dial
/// checks.
pub fn http_connect(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else { return };
    let whole = parse_head(stream);
    let mut pieces = konnq_protocol::fuzzing::Chunks::new(seed);
    let mut fed = 0;
    let first = loop {
        if fed == stream.len() {
            break None;
        }
        fed += pieces.next_len().min(stream.len() - fed);
        if let Some(answer) = parse_head(&stream[..fed]).transpose() {
            break Some(answer);
        }
    };
    match (first, &whole) {
        (None, whole) => assert_eq!(whole, &Ok(None), "no piece completed the head"),
        (Some(Err(HeadError::TooLarge)), _) => assert!(fed >= MAX_HEAD),
        (Some(first), whole) => assert_eq!(first.map(Some), *whole, "pieces and the whole input disagree"),
    }
    match whole {
        Ok(Some(Head::Connect { target, consumed })) => {
            assert_eq!(parse_head(&stream[..consumed - 1]), Ok(None), "a head one byte short is incomplete");
            let req = DialReq { protocol: "tcp".into(), address: target, random: 0 };
            if let Err(reason) = check_dial(&req) {
                assert!(!reason.is_empty());
            }
        }
        Ok(_) => {}
        Err(e) => drop(e.to_string()),
    }
}
