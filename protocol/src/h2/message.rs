//! gRPC messages (a 5-byte prefix, then a `Packet`) reassembled from a
//! stream's DATA payloads, and the credit each one carries.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

use super::event::{Event, MessageError};
use super::EARLY_CREDIT_ABOVE;
use crate::proto::Packet;

/// A gRPC message being reassembled from DATA frames.
#[derive(Default)]
pub(crate) struct Partial {
    pub buf: BytesMut,
    /// Bytes of `buf` credited back before the message was complete.
    pub credited: u32,
    /// The message holds the stream's partial-message reservation.
    pub reserved: bool,
    /// A reservation was asked for ([`Event::WantBudget`]).
    pub asked: bool,
}

impl Partial {
    /// The whole message's size, prefix included, once the prefix is in.
    pub fn size(&self) -> Option<usize> {
        let b = &self.buf;
        (b.len() >= 5).then(|| 5 + u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize)
    }

    /// The whole message's size if it is too large to complete within the
    /// stream window without early credit.
    pub fn early_credit_size(&self) -> Option<usize> {
        self.size().filter(|&size| size > EARLY_CREDIT_ABOVE)
    }

    pub fn uncredited(&self) -> u32 {
        self.buf.len() as u32 - self.credited
    }
}

/// Where reassembled messages go: stream `stream`'s events.
pub(crate) struct Sink<'a> {
    pub stream: u32,
    pub events: &'a mut VecDeque<Event>,
}

/// Splits DATA payload into gRPC messages, queueing an event for each with
/// the bytes of it not yet credited; what is left of an incomplete message
/// stays in `partial`. On a violation the error that ends the stream is
/// queued instead, and the rest of `data` is not read.
pub(crate) fn assemble(partial: &mut Partial, mut data: Bytes, max_message: usize, sink: &mut Sink) -> Result<(), ()> {
    while !data.is_empty() {
        if partial.buf.is_empty() && data.len() >= 5 {
            let len = message_len(&data[..5], max_message).map_err(|e| sink.fail(e))?;
            if data.len() >= 5 + len {
                let mut message = data.split_to(5 + len);
                message.advance(5);
                sink.deliver(message, 5 + len as u32, false)?;
                continue;
            }
        }
        if partial.buf.len() < 5 {
            let take = (5 - partial.buf.len()).min(data.len());
            partial.buf.extend_from_slice(&data.split_to(take));
            if partial.buf.len() < 5 {
                return Ok(());
            }
            let len = message_len(&partial.buf[..5], max_message).map_err(|e| sink.fail(e))?;
            // One allocation for a message that completes within the window;
            // a larger one gets its buffer with its reservation.
            if 5 + len <= EARLY_CREDIT_ABOVE {
                partial.buf.reserve(5 + len - partial.buf.len());
            }
        }
        let need = partial.size().unwrap_or(5) - partial.buf.len();
        let take = need.min(data.len());
        partial.buf.extend_from_slice(&data.split_to(take));
        if take == need {
            let Partial { buf, credited, reserved, .. } = std::mem::take(partial);
            let credit = buf.len() as u32 - credited;
            let mut message = buf.freeze();
            message.advance(5);
            sink.deliver(message, credit, reserved)?;
        }
    }
    Ok(())
}

/// The length a gRPC message prefix announces, if acceptable.
fn message_len(head: &[u8], max_message: usize) -> Result<usize, MessageError> {
    if head[0] != 0 {
        return Err(MessageError::Compressed);
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > max_message {
        return Err(MessageError::TooLarge { len, max: max_message });
    }
    Ok(len)
}

impl Sink<'_> {
    fn fail(&mut self, error: MessageError) {
        self.events.push_back(Event::Failed { stream: self.stream, error, credit: 0, reserved: false });
    }

    /// Queues the packet `message` holds, or (undecodable) the error that
    /// ends the stream; either way with the message's credit and reservation.
    fn deliver(&mut self, message: Bytes, credit: u32, reserved: bool) -> Result<(), ()> {
        let bytes = message.len() as u32;
        let stream = self.stream;
        match Packet::decode(message) {
            Ok(packet) => {
                self.events.push_back(Event::Packet { stream, packet, credit, bytes, reserved });
                Ok(())
            }
            Err(e) => {
                let error = MessageError::Undecodable(e.to_string());
                self.events.push_back(Event::Failed { stream, error, credit, reserved });
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(packet: &Packet) -> Vec<u8> {
        let body = packet.encode_to_vec();
        let mut m = vec![0];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    fn delivered(events: VecDeque<Event>) -> Vec<(Packet, u32)> {
        events
            .into_iter()
            .map(|e| match e {
                Event::Packet { packet, credit, .. } => (packet, credit),
                other => panic!("not a packet: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn messages_split_at_every_point_reassemble_and_credit_each_byte_once() {
        let packets: Vec<Packet> =
            (0..3).map(|i| crate::konnectivity::data(i + 1, Bytes::from(vec![i as u8; 40 + i as usize]))).collect();
        let wire: Vec<u8> = packets.iter().flat_map(message).collect();
        for early_credit in [false, true] {
            for first in 0..=wire.len() {
                for second in first..=wire.len() {
                    let what = format!("split {first}/{second}, early credit {early_credit}");
                    let mut events = VecDeque::new();
                    let mut partial = Partial::default();
                    let mut credited_early = 0;
                    for chunk in [&wire[..first], &wire[first..second], &wire[second..]] {
                        let mut sink = Sink { stream: 1, events: &mut events };
                        assemble(&mut partial, Bytes::copy_from_slice(chunk), 1 << 20, &mut sink).unwrap();
                        if early_credit {
                            credited_early += partial.uncredited();
                            partial.credited = partial.buf.len() as u32;
                        }
                    }
                    assert!(partial.buf.is_empty(), "{what}: bytes left over");
                    let got = delivered(events);
                    assert_eq!(got.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), packets, "{what}");
                    let at_pop: u32 = got.iter().map(|(_, n)| n).sum();
                    assert_eq!(credited_early + at_pop, wire.len() as u32, "{what}: credit");
                }
            }
        }
    }

    #[test]
    fn only_messages_larger_than_half_the_window_ask_for_early_credit() {
        for (body, early) in [(32 * 1024, false), (3 * super::super::STREAM_WINDOW as usize, true)] {
            let wire = message(&crate::konnectivity::data(1, Bytes::from(vec![7u8; body])));
            let (mut partial, mut events) = (Partial::default(), VecDeque::new());
            let mut sink = Sink { stream: 1, events: &mut events };
            assemble(&mut partial, Bytes::copy_from_slice(&wire[..16_384]), 1 << 24, &mut sink).unwrap();
            assert_eq!(partial.early_credit_size(), early.then_some(wire.len()), "a message of {body} bytes");
        }
    }

    #[test]
    fn oversize_compressed_and_undecodable_messages_are_refused() {
        let refused = |bytes: &'static [u8]| {
            let mut events = VecDeque::new();
            let mut sink = Sink { stream: 1, events: &mut events };
            assert!(assemble(&mut Partial::default(), Bytes::from_static(bytes), 100, &mut sink).is_err());
            assert_eq!(events.len(), 1, "one error, then nothing more read");
            match events.pop_front() {
                Some(Event::Failed { error, .. }) => error,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(refused(&[0, 0, 0, 1, 0, 9]), MessageError::TooLarge { len: 256, max: 100 });
        assert_eq!(refused(&[1, 0, 0, 0, 0]), MessageError::Compressed);
        assert!(matches!(refused(&[0, 0, 0, 0, 2, 0xff, 0xff, 0]), MessageError::Undecodable(_)));
    }
}
