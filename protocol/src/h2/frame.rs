//! Frame headers, frame types, flags, settings and error codes (RFC 9113
//! §4, §6, §7) as typed values, and the frame header's parser and encoder.

use bytes::{BufMut, BytesMut};

/// What a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of a frame header.
pub const HEAD_LEN: usize = 9;

/// A frame's type (RFC 9113 §6); types we do not know are kept, and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameType {
    Data,
    Headers,
    Priority,
    RstStream,
    Settings,
    PushPromise,
    Ping,
    GoAway,
    WindowUpdate,
    Continuation,
    Unknown(u8),
}

impl From<u8> for FrameType {
    fn from(b: u8) -> FrameType {
        use FrameType::*;
        match b {
            0x0 => Data,
            0x1 => Headers,
            0x2 => Priority,
            0x3 => RstStream,
            0x4 => Settings,
            0x5 => PushPromise,
            0x6 => Ping,
            0x7 => GoAway,
            0x8 => WindowUpdate,
            0x9 => Continuation,
            other => Unknown(other),
        }
    }
}

impl From<FrameType> for u8 {
    fn from(t: FrameType) -> u8 {
        use FrameType::*;
        match t {
            Data => 0x0,
            Headers => 0x1,
            Priority => 0x2,
            RstStream => 0x3,
            Settings => 0x4,
            PushPromise => 0x5,
            Ping => 0x6,
            GoAway => 0x7,
            WindowUpdate => 0x8,
            Continuation => 0x9,
            Unknown(b) => b,
        }
    }
}

/// A frame's flags; what each bit means depends on the frame type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(pub u8);

impl Flags {
    pub const NONE: Flags = Flags(0);
    pub const END_STREAM: Flags = Flags(0x1);
    /// SETTINGS and PING: an acknowledgement (the same bit as END_STREAM).
    pub const ACK: Flags = Flags(0x1);
    pub const END_HEADERS: Flags = Flags(0x4);
    pub const PADDED: Flags = Flags(0x8);
    pub const PRIORITY: Flags = Flags(0x20);

    /// Whether every bit of `other` is set.
    pub fn has(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// An error code of RST_STREAM and GOAWAY (RFC 9113 §7); unknown codes a
/// peer sends are kept as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x1);
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(0x2);
    pub const FLOW_CONTROL_ERROR: ErrorCode = ErrorCode(0x3);
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x5);
    pub const FRAME_SIZE_ERROR: ErrorCode = ErrorCode(0x6);
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x7);
    pub const CANCEL: ErrorCode = ErrorCode(0x8);
    pub const COMPRESSION_ERROR: ErrorCode = ErrorCode(0x9);
}

impl std::fmt::LowerHex for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}

/// A SETTINGS parameter (RFC 9113 §6.5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingId {
    HeaderTableSize,
    EnablePush,
    MaxConcurrentStreams,
    InitialWindowSize,
    MaxFrameSize,
    MaxHeaderListSize,
    Unknown(u16),
}

impl From<u16> for SettingId {
    fn from(id: u16) -> SettingId {
        use SettingId::*;
        match id {
            0x1 => HeaderTableSize,
            0x2 => EnablePush,
            0x3 => MaxConcurrentStreams,
            0x4 => InitialWindowSize,
            0x5 => MaxFrameSize,
            0x6 => MaxHeaderListSize,
            other => Unknown(other),
        }
    }
}

impl From<SettingId> for u16 {
    fn from(id: SettingId) -> u16 {
        use SettingId::*;
        match id {
            HeaderTableSize => 0x1,
            EnablePush => 0x2,
            MaxConcurrentStreams => 0x3,
            InitialWindowSize => 0x4,
            MaxFrameSize => 0x5,
            MaxHeaderListSize => 0x6,
            Unknown(other) => other,
        }
    }
}

/// A frame header: payload length, type, flags, stream (the reserved bit
/// dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub len: usize,
    pub kind: FrameType,
    pub flags: Flags,
    pub stream_id: u32,
}

impl FrameHead {
    /// The header at the start of `buf`, or `None` while fewer than 9 bytes
    /// are in.
    pub fn parse(buf: &[u8]) -> Option<FrameHead> {
        let head: &[u8; HEAD_LEN] = buf.get(..HEAD_LEN)?.try_into().ok()?;
        Some(FrameHead {
            len: u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize,
            kind: FrameType::from(head[3]),
            flags: Flags(head[4]),
            stream_id: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        })
    }

    /// The header's nine bytes.
    pub fn to_bytes(&self) -> [u8; HEAD_LEN] {
        let mut head = [0u8; HEAD_LEN];
        head[..3].copy_from_slice(&(self.len as u32).to_be_bytes()[1..]);
        head[3] = self.kind.into();
        head[4] = self.flags.0;
        head[5..].copy_from_slice(&(self.stream_id & 0x7fff_ffff).to_be_bytes());
        head
    }

    /// Appends the header and reserves room for its payload.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(HEAD_LEN + self.len);
        buf.put_slice(&self.to_bytes());
    }
}

/// Bytes the frame at the head of `buf` still needs (0 while its header is
/// incomplete): what a driver's next read should at least make room for.
pub fn wanted_bytes(buf: &[u8]) -> usize {
    FrameHead::parse(buf).map_or(0, |head| (HEAD_LEN + head.len).saturating_sub(buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_drop_the_reserved_bit() {
        let head = FrameHead { len: 0x01_02_03, kind: FrameType::Unknown(0xfe), flags: Flags(0xa5), stream_id: 7 };
        let mut buf = BytesMut::new();
        head.encode(&mut buf);
        assert_eq!(&buf[..], &[1, 2, 3, 0xfe, 0xa5, 0, 0, 0, 7]);
        assert_eq!(FrameHead::parse(&buf), Some(head));
        buf[5] |= 0x80;
        assert_eq!(FrameHead::parse(&buf).map(|h| h.stream_id), Some(7));
        assert_eq!(FrameHead::parse(&buf[..8]), None);
        for b in 0..=255u8 {
            assert_eq!(u8::from(FrameType::from(b)), b);
        }
        for id in 0..=16u16 {
            assert_eq!(u16::from(SettingId::from(id)), id);
        }
    }

    #[test]
    fn wanted_bytes_counts_what_the_head_frame_lacks() {
        let mut buf = BytesMut::new();
        FrameHead { len: 10, kind: FrameType::Data, flags: Flags::NONE, stream_id: 1 }.encode(&mut buf);
        assert_eq!(wanted_bytes(&buf[..4]), 0);
        assert_eq!(wanted_bytes(&buf), 10);
        buf.put_slice(&[0; 4]);
        assert_eq!(wanted_bytes(&buf), 6);
    }
}
