//! The HPACK Huffman code (RFC 7541 §5.2, Appendix B).
//!
//! Decoding walks the code tree four bits at a time through a table of
//! 256 states × 16 nibbles, built at compile time from the code list: every
//! state is an internal node of the tree (the root is state 0), and each step
//! names the next state and the symbol completed on the way, if any. The
//! shortest code has 5 bits, so one nibble completes at most one symbol. The
//! table is 12 KiB and a string costs two lookups per byte, with no
//! allocation beyond the output.

/// A Huffman-coded string that is not valid (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("Huffman string contains the EOS symbol")]
    Eos,
    #[error("Huffman string ends with more than 7 bits of padding")]
    PaddingTooLong,
    #[error("Huffman string ends inside a code or with padding that is not all ones")]
    Incomplete,
}

/// Appends the decoded form of `src` to `dst`.
///
/// On error `dst` holds the symbols decoded before the violation.
pub fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HuffmanError> {
    dst.reserve(src.len() * 8 / MIN_CODE_LEN);
    let mut state = ROOT;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = STEPS[state as usize][nibble as usize];
            if step.flags & FAIL != 0 {
                return Err(HuffmanError::Eos);
            }
            if step.flags & EMIT != 0 {
                dst.push(step.symbol);
            }
            state = step.next;
        }
    }
    match ENDINGS[state as usize] {
        Ending::Accept => Ok(()),
        Ending::PaddingTooLong => Err(HuffmanError::PaddingTooLong),
        Ending::Incomplete => Err(HuffmanError::Incomplete),
    }
}

/// Appends the Huffman code of `src` to `dst`, padded with ones.
///
/// konnq never sends Huffman strings; this is for tests and benchmarks.
pub fn encode(src: &[u8], dst: &mut Vec<u8>) {
    let mut bits: u64 = 0;
    let mut pending = 0u32;
    for &byte in src {
        let len = u32::from(LENGTHS[byte as usize]);
        bits = (bits << len) | u64::from(CODES[byte as usize]);
        pending += len;
        while pending >= 8 {
            pending -= 8;
            dst.push((bits >> pending) as u8);
        }
    }
    if pending > 0 {
        let pad = 8 - pending;
        dst.push(((bits << pad) | ((1 << pad) - 1)) as u8);
    }
}

/// Length in bytes of the Huffman code of `src`.
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src.iter().map(|&b| LENGTHS[b as usize] as usize).sum();
    bits.div_ceil(8)
}

const ROOT: u8 = 0;
const EOS: u16 = 256;
const MIN_CODE_LEN: usize = 5;
/// A complete prefix code of 257 symbols has 256 internal nodes.
const NODES: usize = 256;
/// Marks a tree child that is a leaf; the low bits are the symbol.
const LEAF: u16 = 0x8000;
/// Step flag: a symbol was completed; it is in `symbol`.
const EMIT: u8 = 1;
/// Step flag: the EOS code was completed.
const FAIL: u8 = 2;

#[derive(Debug, Clone, Copy)]
struct Step {
    next: u8,
    flags: u8,
    symbol: u8,
}

/// Whether a string may end in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// At the root, or after 1 to 7 bits of EOS's prefix (all ones).
    Accept,
    /// After 8 or more bits of EOS's prefix.
    PaddingTooLong,
    /// Inside some other code.
    Incomplete,
}

static STEPS: [[Step; 16]; NODES] = build_steps(&build_tree());
static ENDINGS: [Ending; NODES] = build_endings(&build_tree());

/// The code tree: `children[node][bit]` is an internal node or `LEAF | symbol`.
///
/// Fails to compile if the code list is not a complete prefix code.
const fn build_tree() -> [[u16; 2]; NODES] {
    let mut children = [[0u16; 2]; NODES]; // 0: not set yet (the root is no child)
    let mut allocated = 1;
    let mut symbol = 0;
    while symbol < CODES.len() {
        let (code, len) = (CODES[symbol], LENGTHS[symbol] as u32);
        let mut node = ROOT as usize;
        let mut bit = len - 1;
        while bit > 0 {
            let b = ((code >> bit) & 1) as usize;
            if children[node][b] == 0 {
                assert!(allocated < NODES, "more internal nodes than a complete code has");
                children[node][b] = allocated as u16;
                allocated += 1;
            }
            assert!(children[node][b] & LEAF == 0, "a code is the prefix of another");
            node = children[node][b] as usize;
            bit -= 1;
        }
        assert!(children[node][(code & 1) as usize] == 0, "a code is the prefix of another");
        children[node][(code & 1) as usize] = LEAF | symbol as u16;
        symbol += 1;
    }
    assert!(allocated == NODES, "the code is not complete");
    children
}

const fn build_steps(children: &[[u16; 2]; NODES]) -> [[Step; 16]; NODES] {
    let mut steps = [[Step { next: ROOT, flags: 0, symbol: 0 }; 16]; NODES];
    let mut state = 0;
    while state < NODES {
        let mut nibble = 0;
        while nibble < 16 {
            let mut step = Step { next: state as u8, flags: 0, symbol: 0 };
            let mut bit = 4;
            while bit > 0 {
                bit -= 1;
                let child = children[step.next as usize][(nibble >> bit) & 1];
                if child & LEAF == 0 {
                    step.next = child as u8;
                } else if child & !LEAF == EOS {
                    step.flags |= FAIL;
                    step.next = ROOT;
                } else {
                    step.flags |= EMIT;
                    step.symbol = (child & !LEAF) as u8;
                    step.next = ROOT;
                }
            }
            steps[state][nibble] = step;
            nibble += 1;
        }
        state += 1;
    }
    steps
}

/// Classifies each state as an end of string; EOS (30 ones) makes every node
/// on the all-ones path internal.
const fn build_endings(children: &[[u16; 2]; NODES]) -> [Ending; NODES] {
    let mut endings = [Ending::Incomplete; NODES];
    endings[ROOT as usize] = Ending::Accept;
    let mut node = ROOT as usize;
    let mut depth = 1;
    while children[node][1] & LEAF == 0 {
        node = children[node][1] as usize;
        endings[node] = if depth <= 7 { Ending::Accept } else { Ending::PaddingTooLong };
        depth += 1;
    }
    endings
}

/// RFC 7541 Appendix B: the code of each symbol, right-aligned; index 256 is EOS.
#[rustfmt::skip]
const CODES: [u32; 257] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
    0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
    0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
    0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
    0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
    0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
    0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
    0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
    0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
    0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
    0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
    0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
    0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
    0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
    0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
    0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
    0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
    0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
    0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
    0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
    0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
    0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
    0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
    0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
    0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
    0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
    0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
    0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
    0x3fffffff,
];
/// RFC 7541 Appendix B: the length in bits of each code in [`CODES`].
#[rustfmt::skip]
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn decoded(src: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(src, &mut out).map(|()| out)
    }

    /// Every Huffman string in RFC 7541 C.4 (requests) and C.6 (responses).
    const RFC_STRINGS: [(&str, &str); 11] = [
        ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
        ("a8eb 1064 9cbf", "no-cache"),
        ("25a8 49e9 5ba9 7d7f", "custom-key"),
        ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
        ("6402", "302"),
        ("aec3 771a 4b", "private"),
        ("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3", "https://www.example.com"),
        ("640e ff", "307"),
        ("d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff", "Mon, 21 Oct 2013 20:13:22 GMT"),
        (
            "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        ),
    ];

    #[test]
    fn rfc_examples_decode() {
        for (code, text) in RFC_STRINGS {
            assert_eq!(decoded(&hex(code)).as_deref(), Ok(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn rfc_examples_encode() {
        for (code, text) in RFC_STRINGS {
            let mut out = Vec::new();
            encode(text.as_bytes(), &mut out);
            assert_eq!(out, hex(code), "{text}");
            assert_eq!(encoded_len(text.as_bytes()), out.len());
        }
    }

    #[test]
    fn decode_appends_to_output() {
        let mut out = b"x-".to_vec();
        decode(&hex("a8eb 1064 9cbf"), &mut out).unwrap();
        assert_eq!(out, b"x-no-cache");
        assert_eq!(decoded(&[]), Ok(Vec::new()));
    }

    #[test]
    fn every_symbol_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        for text in all.iter().map(std::slice::from_ref).chain([&all[..]]) {
            let mut code = Vec::new();
            encode(text, &mut code);
            assert_eq!(decoded(&code).as_deref(), Ok(text), "{text:?}");
        }
    }

    #[test]
    fn random_strings_round_trip() {
        let mut rng = fastrand::Rng::with_seed(7541);
        for _ in 0..2_000 {
            let text: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
            let mut code = Vec::new();
            encode(&text, &mut code);
            assert_eq!(decoded(&code), Ok(text));
        }
    }

    /// The code is canonical: whatever decodes re-encodes to the same bytes,
    /// and whatever is rejected is rejected without a panic.
    #[test]
    fn every_two_byte_input_is_decoded_canonically_or_rejected() {
        let mut accepted = 0;
        for input in (0..=u16::MAX).map(u16::to_be_bytes) {
            for len in 1..=2 {
                if let Ok(text) = decoded(&input[..len]) {
                    let mut code = Vec::new();
                    encode(&text, &mut code);
                    assert_eq!(code, &input[..len]);
                    accepted += 1;
                }
            }
        }
        assert!(accepted > 1_000, "only {accepted} inputs decoded");
    }

    #[test]
    fn eos_inside_a_string_is_rejected() {
        // 30 ones (EOS) then two of padding.
        assert_eq!(decoded(&[0xff; 4]), Err(HuffmanError::Eos));
        // 'a' (00011), EOS, then padding: 5 + 30 + 5 bits.
        assert_eq!(decoded(&hex("1fff ffff ff")), Err(HuffmanError::Eos));
        // EOS, '0' (00000), then padding: 30 + 5 + 5 bits.
        assert_eq!(decoded(&hex("ffff fffc 1f")), Err(HuffmanError::Eos));
    }

    #[test]
    fn padding_longer_than_seven_bits_is_rejected() {
        // 'a' (5 bits) then 11 ones.
        assert_eq!(decoded(&[0x1f, 0xff]), Err(HuffmanError::PaddingTooLong));
        // A whole byte of padding after a complete string.
        let mut code = hex("a8eb 1064 9cbf");
        code.push(0xff);
        assert_eq!(decoded(&code), Err(HuffmanError::PaddingTooLong));
        assert_eq!(decoded(&[0xff]), Err(HuffmanError::PaddingTooLong));
    }

    #[test]
    fn padding_with_zero_bits_is_rejected() {
        // 'a' (00011) then 000 instead of 111.
        assert_eq!(decoded(&[0x18]), Err(HuffmanError::Incomplete));
        // 'a' then 101.
        assert_eq!(decoded(&[0x1d]), Err(HuffmanError::Incomplete));
    }

    #[test]
    fn truncated_strings_are_rejected() {
        // "no-cache" cut after 'n' and four bits of 'o' (00111).
        assert_eq!(decoded(&hex("a8")), Err(HuffmanError::Incomplete));
        // '<' is 15 bits: its first byte alone is 8 ones of EOS's prefix.
        let mut lt = Vec::new();
        encode(b"<", &mut lt);
        assert_eq!(decoded(&lt[..1]), Err(HuffmanError::PaddingTooLong));
        // A cut may land where the rest of the last byte reads as padding
        // ('w' is 1111000, then a one): then it decodes to a prefix.
        for (code, text) in RFC_STRINGS {
            let code = hex(code);
            let mut rejected = 0;
            for cut in 0..code.len() {
                match decoded(&code[..cut]) {
                    Ok(prefix) => assert!(text.as_bytes().starts_with(&prefix), "{text} cut at {cut}"),
                    Err(_) => rejected += 1,
                }
            }
            assert!(rejected > 0, "no cut of {text} is rejected");
        }
    }

    #[test]
    fn decode_table_is_the_code_tree() {
        // From the root, 0000 is a prefix of '0' (00000) and completes nothing.
        assert_eq!(STEPS[0][0].flags, 0);
        // 00000 then 111: '0' and three bits of padding.
        assert_eq!(decoded(&[0x07]), Ok(b"0".to_vec()));
        assert_eq!(ENDINGS.iter().filter(|e| **e == Ending::Accept).count(), 8);
        assert_eq!(ENDINGS.iter().filter(|e| **e == Ending::PaddingTooLong).count(), 29 - 7);
    }
}
