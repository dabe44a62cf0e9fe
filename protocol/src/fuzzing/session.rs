//! The Proxy stream state machine ([`crate::session`]) driven by arbitrary
//! input sequences, its outputs checked against the session's invariants.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;

use crate::konnectivity::{DialReq, FrontendPacket};
use crate::proto::{packet::Payload, Packet, PacketType};
use crate::session::{Action, AgentEnd, ResetReason, Session, Violation};

/// Most outputs one input may queue.
const MAX_QUEUED: usize = 8;

/// Each input byte picks an input, the bytes after it its arguments:
/// client packets decoded by prost from the input or built from choices
/// (connection IDs and `random`s from a small set, so they collide), dial
/// outcomes, agent events, the timer and the client stream's end. The
/// outputs must keep the session's invariants ([`Check`]).
pub fn session(data: &[u8]) {
    let mut input = data.iter().copied();
    let mut s = Session::new();
    let mut check = Check::default();
    while let Some(op) = input.next() {
        let mut arg = || input.next().unwrap_or(0);
        feed(&mut s, &mut check, op, &mut arg, data);
        assert!(s.queued() <= MAX_QUEUED, "{} outputs queued", s.queued());
        while s.poll_event().is_some() {}
        while let Some(action) = s.poll_action() {
            check.action(action);
        }
        assert_eq!(s.is_done(), check.done, "is_done disagrees with Action::Done");
    }
}

/// Feeds the input `op` names, taking its arguments from `arg`.
fn feed(s: &mut Session, check: &mut Check, op: u8, arg: &mut impl FnMut() -> u8, data: &[u8]) {
    let small = |b: u8| i64::from(b % 4);
    match op % 16 {
        0 => {
            let start = usize::from(arg()) % data.len().max(1);
            let len = usize::from(arg()) % 48;
            let bytes = data.get(start..(start + len).min(data.len())).unwrap_or_default();
            match Packet::decode(bytes) {
                Ok(packet) => client_packet(s, check, packet),
                Err(e) => {
                    check.client_left = true;
                    s.handle_violation(Violation { code: 13, message: e.to_string() });
                }
            }
        }
        1 => {
            let (protocol, address) = match arg() % 4 {
                0 => ("udp", "a:1".to_owned()),
                1 => ("tcp", String::new()),
                2 => ("tcp", "x".repeat(2000)),
                _ => ("tcp", "a:1".to_owned()),
            };
            let random = small(arg());
            check.note_dial_req(random);
            s.handle_packet(FrontendPacket::DialReq(DialReq { protocol: protocol.into(), address, random }));
        }
        2 => s.handle_packet(FrontendPacket::Data { connect_id: small(arg()), data: Bytes::from(vec![arg(); 3]) }),
        3 => s.handle_packet(FrontendPacket::CloseReq { connect_id: small(arg()) }),
        4 => {
            let random = small(arg());
            check.note_dial_cls(random);
            s.handle_packet(FrontendPacket::DialCls { random });
        }
        5 => s.handle_packet(FrontendPacket::Other(i32::from(arg()))),
        6 => s.handle_dial_ok(small(arg())),
        7 => s.handle_dial_failed("no agent"),
        8 => s.handle_agent_data(vec![Bytes::from_static(b"ab"); usize::from(arg() % 3)]),
        9 => s.handle_agent_end(match arg() % 3 {
            0 => AgentEnd::Finished,
            1 => AgentEnd::Reset(u64::from(arg())),
            _ => AgentEnd::Lost("agent connection lost".into()),
        }),
        10 => {
            // Only a connection's writes can fail.
            check.write_failed |= check.established.is_some();
            s.handle_agent_write_failed();
        }
        11 => s.handle_close_timeout(),
        12 | 13 => {
            check.client_left = true;
            if op % 16 == 12 {
                s.handle_client_ended()
            } else {
                s.handle_client_gone()
            }
        }
        14 => s.handle_shutdown(),
        _ => {
            check.client_left = true;
            s.handle_violation(Violation { code: 8, message: "message too large".into() });
        }
    }
}

/// A packet prost decoded: classified as the frontends classify it.
fn client_packet(s: &mut Session, check: &mut Check, packet: Packet) {
    match FrontendPacket::try_from(packet) {
        Ok(p) => {
            match &p {
                FrontendPacket::DialReq(req) => check.note_dial_req(req.random),
                FrontendPacket::DialCls { random } => check.note_dial_cls(*random),
                _ => {}
            }
            s.handle_packet(p);
        }
        Err(e) => {
            check.client_left = true;
            s.handle_malformed(e);
        }
    }
}

/// The invariants, checked on the outputs as they come.
#[derive(Default)]
struct Check {
    /// DIAL_REQs and DIAL_RSPs per `random`.
    dials: HashMap<i64, (u32, u32)>,
    /// The connection's ID and `random`, once DIAL_RSP reported success.
    established: Option<(i64, i64)>,
    /// A DIAL_CLS for the connection's `random` came after its DIAL_RSP.
    dial_cls_crossed: bool,
    close_rsps: u32,
    agent_closed: bool,
    write_failed: bool,
    client_left: bool,
    dial_started: bool,
    done: bool,
}

impl Check {
    fn note_dial_req(&mut self, random: i64) {
        self.dials.entry(random).or_default().0 += 1;
    }

    fn note_dial_cls(&mut self, random: i64) {
        if self.established.is_some_and(|(_, r)| r == random) {
            self.dial_cls_crossed = true;
        }
    }

    fn action(&mut self, action: Action) {
        assert!(!self.done, "{action:?} after Done");
        match action {
            Action::Send(packet) => self.sent(packet),
            Action::SendData { .. } => assert!(self.established.is_some(), "DATA before DIAL_RSP"),
            Action::StartDial { .. } => {
                assert!(!self.dial_started, "a second dial");
                self.dial_started = true;
            }
            Action::CancelDial => assert!(self.dial_started && self.established.is_none(), "no dial to cancel"),
            Action::WriteAgent(_) => {
                assert!(self.established.is_some(), "agent write before DIAL_RSP");
                assert!(!self.agent_closed && !self.write_failed, "agent write after its side ended");
            }
            Action::FinishAgent => {
                assert!(!self.agent_closed, "agent side finished twice");
                self.agent_closed = true;
            }
            Action::ResetAgent(reason) => {
                if reason == ResetReason::DialAbandoned {
                    assert!(self.dial_cls_crossed, "DialAbandoned without DIAL_CLS crossing DIAL_RSP");
                }
                self.agent_closed = true;
            }
            Action::StopAgent(_) => assert!(self.client_left, "StopAgent while the client is there"),
            Action::Done => self.finished(),
            Action::EndClient(_) | Action::ArmCloseTimer(_) | Action::DisarmCloseTimer => {}
        }
    }

    fn sent(&mut self, packet: Packet) {
        match packet.payload {
            Some(Payload::DialResponse(rsp)) => {
                assert_eq!(packet.r#type, PacketType::DialRsp as i32);
                let (reqs, rsps) = self.dials.entry(rsp.random).or_default();
                *rsps += 1;
                assert!(rsps <= reqs, "more DIAL_RSPs than DIAL_REQs for {}", rsp.random);
                if rsp.error.is_empty() {
                    assert!(self.established.is_none(), "two connections");
                    self.established = Some((rsp.connect_id, rsp.random));
                }
            }
            Some(Payload::CloseResponse(rsp)) if !rsp.error.starts_with("unknown connectID") => {
                let (id, _) = self.established.expect("CLOSE_RSP without a connection");
                assert_eq!(rsp.connect_id, id);
                self.close_rsps += 1;
                assert_eq!(self.close_rsps, 1, "a second CLOSE_RSP");
            }
            Some(Payload::CloseResponse(_)) => {}
            other => panic!("unexpected packet to the client: {other:?}"),
        }
    }

    /// The session ended: an established connection was answered with one
    /// CLOSE_RSP unless the client left or abandoned the dial.
    fn finished(&mut self) {
        self.done = true;
        if self.established.is_some() {
            let abandoned = self.client_left || self.dial_cls_crossed;
            assert!(abandoned || self.close_rsps == 1, "connection ended without CLOSE_RSP");
        }
    }
}
