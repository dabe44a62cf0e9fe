//! Header fields: the checks RFC 9113 §8.1-8.3 make of a request's (and
//! trailers') fields as they are decoded, and the few fields we encode —
//! always as literals, so the client's decoder never grows a dynamic table
//! on our account.

/// Fields of a header block checked as RFC 9113 §8.2-8.3 require of a
/// request (and §8.1 of trailers): the first problem found, if any.
#[derive(Default)]
pub(crate) struct FieldCheck {
    pub method: Option<Vec<u8>>,
    pub path: Option<Vec<u8>>,
    /// How many of :method, :scheme, :path, :authority were seen.
    counts: [u8; 4],
    pub pseudo: bool,
    regular_seen: bool,
    pub grpc: bool,
    pub content_length: Option<u64>,
    pub malformed: Option<String>,
}

impl FieldCheck {
    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        if self.malformed.is_some() {
            return;
        }
        self.malformed = self.problem(name, value);
    }

    fn problem(&mut self, name: &[u8], value: &[u8]) -> Option<String> {
        let shown = || String::from_utf8_lossy(name).into_owned();
        if let Some(pseudo) = name.strip_prefix(b":") {
            self.pseudo = true;
            if self.regular_seen {
                return Some(format!("pseudo-header {} after a regular field", shown()));
            }
            return self.pseudo_field(pseudo, value, shown);
        }
        self.regular_seen = true;
        if name.is_empty() || name.iter().any(|b| b.is_ascii_uppercase()) {
            return Some(format!("field name {} is empty or has uppercase letters", shown()));
        }
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade" => {
                Some(format!("connection-specific field {}", shown()))
            }
            b"te" if value != b"trailers" => Some("te other than \"trailers\"".into()),
            b"content-type" => {
                self.grpc = value.starts_with(b"application/grpc");
                None
            }
            b"content-length" => self.content_length(value),
            _ => None,
        }
    }

    fn pseudo_field(&mut self, pseudo: &[u8], value: &[u8], shown: impl Fn() -> String) -> Option<String> {
        let slot = match pseudo {
            b"method" => 0,
            b"scheme" => 1,
            b"path" => 2,
            b"authority" => 3,
            _ => return Some(format!("pseudo-header {} is not one of a request", shown())),
        };
        self.counts[slot] += 1;
        if self.counts[slot] > 1 {
            return Some(format!("pseudo-header {} repeated", shown()));
        }
        match slot {
            0 => self.method = Some(value.to_vec()),
            2 if value.is_empty() => return Some("empty :path".into()),
            2 => self.path = Some(value.to_vec()),
            _ => {}
        }
        None
    }

    fn content_length(&mut self, value: &[u8]) -> Option<String> {
        let n = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
        match (n, self.content_length) {
            (None, _) => Some("content-length not a number".into()),
            (Some(n), Some(before)) if n != before => Some("content-length given twice, differently".into()),
            (Some(n), _) => {
                self.content_length = Some(n);
                None
            }
        }
    }

    /// A request's problem: a malformed field, or a pseudo-header missing.
    pub fn request_problem(&self) -> Option<String> {
        if let Some(m) = &self.malformed {
            return Some(m.clone());
        }
        // CONNECT carries no :scheme or :path (RFC 9113 §8.5).
        let connect = self.method.as_deref() == Some(b"CONNECT");
        let needed: &[(usize, &str)] =
            if connect { &[(0, ":method")] } else { &[(0, ":method"), (1, ":scheme"), (2, ":path")] };
        needed.iter().find(|(slot, _)| self.counts[*slot] == 0).map(|(_, name)| format!("no {name}"))
    }
}

/// `:status 200` (static index 8, RFC 7541 Appendix A).
pub(crate) const STATUS_200: u8 = 0x88;

/// `content-type: application/grpc` as a literal without indexing whose
/// name is static index 31 (RFC 7541 §6.2.2).
pub(crate) const CONTENT_TYPE_GRPC: &[u8] = b"\x0f\x10\x10application/grpc";

/// A literal field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
pub(crate) fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0);
    hpack_int(block, 7, name.len());
    block.extend_from_slice(name);
    hpack_int(block, 7, value.len());
    block.extend_from_slice(value);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); the prefix's
/// other bits are zero.
fn hpack_int(block: &mut Vec<u8>, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        block.push(v as u8);
        return;
    }
    block.push(max as u8);
    v -= max;
    while v >= 128 {
        block.push((v % 128 + 128) as u8);
        v /= 128;
    }
    block.push(v as u8);
}

/// grpc-message encoding: bytes outside printable ASCII, and '%', as %XX;
/// at most 1 KiB of the message.
pub(crate) fn percent_encode(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len().min(1024));
    for &b in message.as_bytes().iter().take(1024) {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::Decoder;

    fn check(fields: &[(&str, &str)]) -> FieldCheck {
        let mut check = FieldCheck::default();
        for (n, v) in fields {
            check.field(n.as_bytes(), v.as_bytes());
        }
        check
    }

    #[test]
    fn requests_are_checked_as_rfc_9113_says() {
        let ok = [(":method", "POST"), (":scheme", "http"), (":path", "/p"), ("te", "trailers")];
        assert_eq!(check(&ok).request_problem(), None);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(":method", "POST"), (":scheme", "http")], "no :path"),
            (&[(":method", "POST"), (":scheme", "http"), (":path", "")], "empty :path"),
            (&[("a", "b"), (":method", "POST")], "pseudo-header :method after a regular field"),
            (&[(":method", "GET"), (":method", "GET")], "pseudo-header :method repeated"),
            (&[(":status", "200")], "pseudo-header :status is not one of a request"),
            (&[("Upper", "x")], "field name Upper is empty or has uppercase letters"),
            (&[("connection", "close")], "connection-specific field connection"),
            (&[("te", "gzip")], "te other than \"trailers\""),
            (&[("content-length", "x")], "content-length not a number"),
            (&[("content-length", "1"), ("content-length", "2")], "content-length given twice, differently"),
        ];
        for (fields, want) in cases {
            assert_eq!(check(fields).request_problem().as_deref(), Some(*want), "{fields:?}");
        }
        assert_eq!(check(&[(":method", "CONNECT"), (":authority", "a")]).request_problem(), None);
        let grpc = check(&[("content-type", "application/grpc+proto"), ("content-length", "5")]);
        assert!(grpc.grpc);
        assert_eq!(grpc.content_length, Some(5));
    }

    #[test]
    fn header_encoding_round_trips_through_the_decoder() {
        let mut block = vec![STATUS_200];
        block.extend_from_slice(CONTENT_TYPE_GRPC);
        let long = "x".repeat(300);
        literal(&mut block, b"grpc-message", &percent_encode(&format!("{long} 100% \u{e9}")));
        let mut fields = Vec::new();
        Decoder::new(4096).decode(&block, |n, v| fields.push((n.to_vec(), v.to_vec()))).unwrap();
        assert_eq!(fields[0], (b":status".to_vec(), b"200".to_vec()));
        assert_eq!(fields[1], (b"content-type".to_vec(), b"application/grpc".to_vec()));
        assert_eq!(fields[2].1, format!("{long} 100%25 %C3%A9").into_bytes());
    }
}
