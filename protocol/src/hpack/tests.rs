use super::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, DecodeError> {
    let mut list = Vec::new();
    decoder.decode(block, |n, v| list.push((n.to_vec(), v.to_vec())))?;
    Ok(list)
}

/// A block in hex, the fields it decodes to and the table size after it.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], usize);

/// Decodes `blocks` in turn and checks each one's fields and the table size
/// after it (as RFC 7541 Appendix C lists them).
fn check_sequence(decoder: &mut Decoder, blocks: &[Expected]) {
    for (i, (block, expected, table_size)) in blocks.iter().enumerate() {
        assert_eq!(decode(decoder, &hex(block)), Ok(fields(expected)), "block {i}");
        assert_eq!(decoder.table().size(), *table_size, "table size after block {i}");
    }
}

#[test]
fn rfc_c2_single_representations() {
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    check_sequence(
        &mut d,
        &[("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572", &[("custom-key", "custom-header")], 55)],
    );
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    check_sequence(&mut d, &[("040c 2f73 616d 706c 652f 7061 7468", &[(":path", "/sample/path")], 0)]);
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    check_sequence(&mut d, &[("1008 7061 7373 776f 7264 0673 6563 7265 74", &[("password", "secret")], 0)]);
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    check_sequence(&mut d, &[("82", &[(":method", "GET")], 0)]);
}

const GET_HTTP: [(&str, &str); 4] =
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
const CACHE: [(&str, &str); 5] = [
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const CUSTOM: [(&str, &str); 5] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];

#[test]
fn rfc_c3_requests_without_huffman() {
    check_sequence(
        &mut Decoder::new(DEFAULT_TABLE_SIZE),
        &[
            ("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", &GET_HTTP, 57),
            ("8286 84be 5808 6e6f 2d63 6163 6865", &CACHE, 110),
            ("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65", &CUSTOM, 164),
        ],
    );
}

#[test]
fn rfc_c4_requests_with_huffman() {
    check_sequence(
        &mut Decoder::new(DEFAULT_TABLE_SIZE),
        &[
            ("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", &GET_HTTP, 57),
            ("8286 84be 5886 a8eb 1064 9cbf", &CACHE, 110),
            ("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf", &CUSTOM, 164),
        ],
    );
}

/// RFC 7541 C.6: responses with Huffman and a 256-byte table, so entries
/// are evicted. The RFC sets that size through SETTINGS; here the first
/// block starts with a size update to 256 (3f e1 01).
#[test]
fn rfc_c6_responses_with_huffman_and_eviction() {
    const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const LOCATION: &str = "https://www.example.com";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    check_sequence(
        &mut d,
        &[
            (
                "3fe101 4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d \
                 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                &[(":status", "302"), ("cache-control", "private"), ("date", DATE1), ("location", LOCATION)],
                222,
            ),
            (
                "4883 640e ffc1 c0bf",
                &[(":status", "307"), ("cache-control", "private"), ("date", DATE1), ("location", LOCATION)],
                222,
            ),
            (
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 \
                 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
                &[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", DATE2),
                    ("location", LOCATION),
                    ("content-encoding", "gzip"),
                    ("set-cookie", COOKIE),
                ],
                215,
            ),
        ],
    );
    assert_eq!(d.table().len(), 3);
    let newest = d.table().get(62).map(|(n, v)| (n.to_vec(), v.to_vec()));
    assert_eq!(newest, Some((b"set-cookie".to_vec(), COOKIE.as_bytes().to_vec())));
}

/// Blocks from an independent encoder (loona-hpack's, which indexes
/// repeated fields) decode to what it was given.
#[test]
fn blocks_from_another_encoder_decode() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
    let mut rng = fastrand::Rng::with_seed(9113);
    for _ in 0..300 {
        let list: Fields = (0..rng.usize(1..8))
            .map(|_| {
                let name = format!("x-{}", rng.u8(..16));
                let value = "v".repeat(rng.usize(0..300));
                (name.into_bytes(), value.into_bytes())
            })
            .collect();
        let block = encoder.encode(list.iter().map(|(n, v)| (&n[..], &v[..])));
        assert_eq!(decode(&mut decoder, &block), Ok(list));
    }
}

#[test]
fn literal_naming_the_entry_it_evicts() {
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    // Size update to 64 (31 + 33); "name: a" (37 bytes) is indexed, then
    // "name: bc" (38) names it by index 62 and evicts it on insertion.
    let block = [&[0x3f, 0x21, 0x40, 4][..], b"name", &[1], b"a", &[0x7e, 2], b"bc"].concat();
    assert_eq!(decode(&mut d, &block), Ok(fields(&[("name", "a"), ("name", "bc")])));
    assert_eq!((d.table().len(), d.table().size()), (1, 38));
    assert_eq!(decode(&mut d, &[0xbe]), Ok(fields(&[("name", "bc")])));
}

#[test]
fn entry_larger_than_the_table_empties_it() {
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let big = [&[0x3f, 0x21, 0x40, 1, b'k', 0x7f, 0][..], &[b'v'; 127]].concat();
    let small = [0x40, 1, b'k', 1, b'v'];
    assert_eq!(decode(&mut d, &small).map(|l| l.len()), Ok(1));
    assert_eq!(decode(&mut d, &big).map(|l| l.len()), Ok(1));
    assert!(d.table().is_empty());
    assert_eq!(decode(&mut d, &[0xbe]), Err(DecodeError::IndexOutOfBounds { index: 62, dynamic_len: 0 }));
}

#[test]
fn table_size_updates() {
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    // Two updates before the first field are allowed: to 0, then to 4096.
    assert_eq!(decode(&mut d, &[0x20, 0x3f, 0xe1, 0x1f, 0x82]), Ok(fields(&[(":method", "GET")])));
    assert_eq!(decode(&mut d, &[0x82, 0x20]), Err(DecodeError::LateTableSizeUpdate));
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let err = decode(&mut d, &[0x3f, 0xe2, 0x1f]);
    assert_eq!(err, Err(DecodeError::TableSizeTooLarge { size: 4097, max: 4096 }));
    let mut d = Decoder::new(8192);
    assert_eq!(decode(&mut d, &[0x3f, 0xe2, 0x1f]), Ok(vec![]));
}

#[test]
fn bad_indices_are_rejected() {
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let oob = |index| Err(DecodeError::IndexOutOfBounds { index, dynamic_len: 0 });
    assert_eq!(decode(&mut d, &[0x80]), oob(0));
    assert_eq!(decode(&mut d, &[0xbe]), oob(62));
    assert_eq!(decode(&mut d, &[0x7f, 0x00, 0x01, b'v']), oob(63));
    assert_eq!(decode(&mut d, &[0x1f, 0x30, 0x01, b'v']), oob(15 + 48));
}

#[test]
fn truncated_and_oversized_input_is_rejected() {
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    assert_eq!(decode(&mut d, &[0xff]), Err(DecodeError::TruncatedInteger));
    assert_eq!(decode(&mut d, &[0xff, 0x80]), Err(DecodeError::TruncatedInteger));
    assert_eq!(decode(&mut d, &[0xff, 0x80, 0x80, 0x80, 0x80, 0x01]), Err(DecodeError::IntegerTooLong));
    assert_eq!(decode(&mut d, &[0x40]), Err(DecodeError::TruncatedInteger));
    assert_eq!(decode(&mut d, &[0x00, 0x05, b'a']), Err(DecodeError::TruncatedString { len: 5, left: 1 }));
    assert_eq!(decode(&mut d, &[0x00, 0x01, b'n']), Err(DecodeError::TruncatedInteger));
    let huge = [0x00, 0x7f, 0xff, 0xff, 0xff, 0x7f];
    assert_eq!(decode(&mut d, &huge), Err(DecodeError::TruncatedString { len: 127 + (1 << 28) - 1, left: 0 }));
}

#[test]
fn bad_huffman_strings_are_rejected() {
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let padding = [0x00, 0x81, 0xff, 0x01, b'v'];
    assert_eq!(decode(&mut d, &padding), Err(DecodeError::Huffman(HuffmanError::PaddingTooLong)));
    let eos = [0x04, 0x84, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(decode(&mut d, &eos), Err(DecodeError::Huffman(HuffmanError::Eos)));
    let zero_padding = [0x04, 0x81, 0x18];
    assert_eq!(decode(&mut d, &zero_padding), Err(DecodeError::Huffman(HuffmanError::Incomplete)));
}

/// Every prefix and random corruptions of the RFC blocks either decode or
/// fail with an error; nothing panics.
#[test]
fn mangled_blocks_never_panic() {
    let c6 = hex(
        "3fe101 4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad \
         1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    );
    let c4 = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
    let mut rng = fastrand::Rng::with_seed(7541);
    let mut failures = 0;
    for block in [&c6, &c4] {
        for cut in 0..block.len() {
            failures += decode(&mut Decoder::new(DEFAULT_TABLE_SIZE), &block[..cut]).is_err() as usize;
        }
        for _ in 0..5_000 {
            let mut mangled = block.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..mangled.len());
                mangled[i] = rng.u8(..);
            }
            failures += decode(&mut Decoder::new(DEFAULT_TABLE_SIZE), &mangled).is_err() as usize;
        }
    }
    assert!(failures > 1_000, "only {failures} inputs rejected");
}
