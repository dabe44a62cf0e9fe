use super::*;

fn header() -> DialHeader {
    DialHeader { protocol: "tcp".into(), address: "10.0.0.1:443".into(), timeout_ms: 5000, connect_id: 42 }
}

fn hello() -> Control {
    Control::Hello(Hello {
        agent_id: "agent-1".into(),
        identifiers: vec![("host".into(), "node-1".into()), ("ipv4".into(), "10.1.2.3".into())],
        token: "secret".into(),
    })
}

fn all_controls() -> Vec<Control> {
    vec![
        hello(),
        Control::Welcome { server_id: "srv".into(), server_count: 3 },
        Control::Drain,
        Control::Reject { reason: "unauthorized".into() },
        Control::Token(SecretToken("rotated".into())),
    ]
}

#[test]
fn a_token_update_never_shows_its_token_and_is_never_empty() {
    let update = Control::Token(SecretToken("eyJhbGciOi.secret.part".into()));
    let shown = format!("{update:?}");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    let empty = frame(kind::TOKEN, vec![0, 0]);
    assert_eq!(Control::decode(&empty), Err(WireError::Invalid { what: "control message", reason: "empty token" }));
}

#[test]
fn dial_header_round_trip() {
    let bytes = header().encode();
    assert_eq!(DialHeader::decode(&bytes), Ok(Some((header(), bytes.len()))));
}

#[test]
fn dial_result_round_trip() {
    for r in [DialResult::Connected, DialResult::Failed("connection refused".into())] {
        let bytes = r.encode();
        assert_eq!(DialResult::decode(&bytes), Ok(Some((r, bytes.len()))));
    }
}

#[test]
fn control_round_trip() {
    for m in all_controls() {
        let bytes = m.encode();
        assert_eq!(Control::decode(&bytes), Ok(Some((m, bytes.len()))));
    }
}

#[test]
fn every_prefix_is_incomplete_not_an_error() {
    let bytes = header().encode();
    for n in 0..bytes.len() {
        assert_eq!(DialHeader::decode(&bytes[..n]), Ok(None), "prefix of {n} bytes");
    }
    for m in all_controls() {
        let bytes = m.encode();
        for n in 0..bytes.len() {
            assert_eq!(Control::decode(&bytes[..n]), Ok(None), "{m:?}: prefix of {n} bytes");
        }
    }
}

#[test]
fn byte_at_a_time_accumulation_finds_frames_and_leaves_payload() {
    // A dial stream: header, then raw payload bytes that must not be consumed.
    let mut stream = header().encode();
    stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let mut acc = Vec::new();
    let mut found = None;
    for (i, b) in stream.iter().enumerate() {
        acc.push(*b);
        if let Some((h, used)) = DialHeader::decode(&acc).expect("valid input") {
            found = Some((h, used, i));
            break;
        }
    }
    let (h, used, at) = found.expect("header decoded");
    assert_eq!(h, header());
    assert_eq!(used, at + 1);
    assert_eq!(&stream[used..], b"GET / HTTP/1.1\r\n");
}

#[test]
fn oversize_length_is_rejected_before_buffering() {
    let mut bytes = vec![VERSION, 0x01];
    bytes.extend_from_slice(&((MAX_DIAL_BODY as u32) + 1).to_be_bytes());
    assert!(matches!(DialHeader::decode(&bytes), Err(WireError::TooLong { .. })));
    let mut ctl = vec![VERSION, 0x10];
    ctl.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(Control::decode(&ctl), Err(WireError::TooLong { .. })));
    let header: [u8; HEADER_LEN] = ctl.try_into().expect("six bytes");
    assert!(matches!(decode_header(&header, MAX_CONTROL_BODY, "x"), Err(WireError::TooLong { .. })));
}

#[test]
fn garbage_is_rejected() {
    // HTTP request bytes instead of a frame: wrong version byte.
    assert_eq!(DialHeader::decode(b"GET / HTTP/1.1\r\n"), Err(WireError::UnsupportedVersion { found: b'G' }));
    // Right version, wrong kind.
    let result = DialResult::Connected.encode();
    assert!(matches!(DialHeader::decode(&result), Err(WireError::UnexpectedKind { found: 0x02, .. })));
    // Unknown control kind.
    let mut unknown = vec![VERSION, 0x7f, 0, 0, 0, 0];
    assert!(matches!(Control::decode(&unknown), Err(WireError::UnexpectedKind { found: 0x7f, .. })));
    // Unknown dial status.
    unknown = vec![VERSION, 0x02, 0, 0, 0, 1, 9];
    assert!(matches!(DialResult::decode(&unknown), Err(WireError::Invalid { .. })));
}

#[test]
fn truncated_and_trailing_bodies_are_rejected() {
    let good = header().encode();
    // Claim one byte less: the body is then cut inside the connect id.
    let mut short = good.clone();
    short.pop();
    short[5] -= 1;
    assert!(matches!(DialHeader::decode(&short), Err(WireError::Truncated { .. })));
    let mut long = good.clone();
    long.push(0);
    long[5] += 1;
    assert!(matches!(DialHeader::decode(&long), Err(WireError::TrailingBytes { extra: 1, .. })));
}

#[test]
fn invalid_fields_are_rejected() {
    let mut h = header();
    h.address.clear();
    assert!(matches!(DialHeader::decode(&h.encode()), Err(WireError::Invalid { .. })));
    let mut h = header();
    h.timeout_ms = 0;
    assert!(matches!(DialHeader::decode(&h.encode()), Err(WireError::Invalid { .. })));
    let mut h = header();
    h.address = "a".repeat(MAX_ADDRESS_LEN + 1);
    assert!(matches!(DialHeader::decode(&h.encode()), Err(WireError::Invalid { .. })));
    let mut bad_utf8 = DialResult::Failed("xx".into()).encode();
    let n = bad_utf8.len();
    bad_utf8[n - 1] = 0xff;
    bad_utf8[n - 2] = 0xfe;
    assert!(matches!(DialResult::decode(&bad_utf8), Err(WireError::BadUtf8 { .. })));
}

#[test]
fn long_failure_reason_is_clamped_to_fit() {
    let r = DialResult::Failed("é".repeat(MAX_DIAL_BODY));
    let bytes = r.encode();
    let (decoded, _) = DialResult::decode(&bytes).expect("decodes").expect("complete");
    match decoded {
        DialResult::Failed(reason) => assert!(reason.len() <= MAX_DIAL_BODY && reason.starts_with('é')),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn hello_debug_masks_token() {
    let text = format!("{:?}", hello());
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("agent-1"));
}

#[test]
fn pseudo_random_garbage_never_panics() {
    // A small deterministic fuzz pass: decoders must return, never panic.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..20_000 {
        let mut buf = Vec::new();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 64) as usize;
        for i in 0..len {
            buf.push((x.rotate_left(i as u32 * 7) & 0xff) as u8);
        }
        if !buf.is_empty() {
            buf[0] = VERSION;
        }
        let _ = DialHeader::decode(&buf);
        let _ = DialResult::decode(&buf);
        let _ = Control::decode(&buf);
    }
}
