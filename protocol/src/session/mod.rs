//! One Konnectivity Proxy stream as a state machine with no IO: the rules
//! of a session (one dial per stream, exactly one CLOSE_RSP, DIAL_CLS that
//! crossed our DIAL_RSP, ...) as transitions that can be tested and fuzzed
//! without sockets.
//!
//! Shape (as in quinn-proto): the driver feeds what happened through the
//! `handle_*` methods — a client packet, the client stream ending, the dial's
//! outcome, the agent stream's data and end, the close-confirm timer — and
//! drains what to do with [`Session::poll_action`] (send to the client, start
//! or cancel the dial, write to, finish or reset the agent stream, arm the
//! timer) and what to count and log with [`Session::poll_event`]. Every input
//! queues a handful of outputs at most; the driver drains them after each.
//!
//! States (as in rustls, each transition consumes the old one):
//! 1. [`State::AwaitDial`]: the first DIAL_REQ is checked and starts a dial;
//!    DATA and CLOSE_REQ naming a connection get CLOSE_RSP "unknown
//!    connectID N"; DIAL_CLS is ignored.
//! 2. [`State::Dialing`]: a DIAL_CLS for the dial, or the client stream
//!    ending, cancels it without a DIAL_RSP; a second DIAL_REQ gets a DIAL_RSP
//!    error; the outcome becomes one DIAL_RSP.
//! 3. [`State::Established`]: DATA both ways. CLOSE_REQ finishes the agent
//!    side and arms the timer; DIAL_CLS for our dial (it crossed our
//!    DIAL_RSP) and the client stream ending reset the agent stream; the
//!    agent's end becomes the CLOSE_RSP.
//! 4. [`State::Closing`]: after CLOSE_REQ, the agent's end or the timer
//!    becomes the one CLOSE_RSP.
//! 5. [`State::Done`]: every input is ignored; nothing more is sent.
//!
//! A client that breaks the protocol (an undecodable message, a packet whose
//! type and payload disagree) gets its stream ended with an error status.

mod established;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::konnectivity::{self as k, DialReq, FrontendPacket, MalformedPacket};
use crate::proto::Packet;

/// How long after CLOSE_REQ the agent has to confirm the close.
pub const CLOSE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// gRPC status code INVALID_ARGUMENT, for a malformed client packet.
pub const INVALID_ARGUMENT: i32 = 3;
/// DIAL_RSP and CLOSE_RSP text when the server shuts down.
pub const SHUTTING_DOWN: &str = "server shutting down";

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this packet (DIAL_RSP or CLOSE_RSP) to the client.
    Send(Packet),
    /// Send the agent's bytes to the client as one DATA packet.
    SendData {
        connect_id: i64,
        chunks: Vec<Bytes>,
    },
    /// End the client stream with this error status.
    EndClient(Violation),
    /// Dial `address` through an agent.
    StartDial {
        protocol: String,
        address: String,
    },
    /// Drop the dial in progress (the agent gives it up).
    CancelDial,
    /// Write these bytes to the agent stream.
    WriteAgent(Bytes),
    /// Finish the agent stream's send side.
    FinishAgent,
    /// Reset the agent stream's send side and stop reading it.
    ResetAgent(ResetReason),
    /// Stop reading the agent stream: the client can no longer be written.
    StopAgent(ResetReason),
    /// Fire [`Session::handle_close_timeout`] after this long.
    ArmCloseTimer(Duration),
    DisarmCloseTimer,
    /// The session is over; nothing follows.
    Done,
}

/// An error status ending the client stream: a gRPC code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: i32,
    pub message: String,
}

/// Why the agent stream is reset; the driver maps it to a stream error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The client gave the connection up (DIAL_CLS crossed DIAL_RSP).
    DialAbandoned,
    /// The client stream ended, or the agent did not confirm a close.
    FrontendGone,
    Shutdown,
}

/// How the agent's side of the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEnd {
    /// The agent finished its side: the target closed, or it confirms a close.
    Finished,
    /// The agent reset its side with this code.
    Reset(u64),
    /// The agent connection broke: the CLOSE_RSP text.
    Lost(String),
}

/// Where a session was when something notable happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AwaitDial,
    Dialing,
    Established { connect_id: i64 },
}

/// Things worth counting and logging; they change nothing on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// DATA or CLOSE_REQ for a connection this stream does not carry.
    UnknownConnection {
        connect_id: i64,
        phase: Phase,
    },
    /// A DIAL_REQ after the first.
    SecondDial {
        random: i64,
        phase: Phase,
    },
    /// The DIAL_REQ failed [`k::check_dial`].
    BadDialRequest {
        random: i64,
        address: String,
        reason: String,
    },
    /// A packet that could not be classified ended the stream.
    Malformed(MalformedPacket),
    /// A DIAL_CLS that names no dial in progress; ignored.
    DialClsIgnored {
        random: i64,
        phase: Phase,
    },
    /// A packet type a client does not send, or an unknown one; ignored.
    OtherIgnored {
        kind: i32,
        phase: Phase,
    },
    /// DIAL_CLS cancelled the dial in progress.
    DialCancelled {
        random: i64,
    },
    /// The client stream ended during the dial.
    ClientLeftDuringDial {
        random: i64,
    },
    DialFailed {
        random: i64,
        reason: String,
    },
    /// DIAL_CLS crossed our DIAL_RSP: the connection is closed again.
    DialClsCrossedDialRsp {
        connect_id: i64,
        random: i64,
    },
    CloseRequested {
        connect_id: i64,
    },
    /// The client stream ended on an established connection.
    ClientLeft {
        connect_id: i64,
    },
    /// The agent did not confirm a close in time.
    CloseTimedOut {
        connect_id: i64,
    },
    /// The agent's side ended; `error` is the CLOSE_RSP text.
    AgentClosed {
        connect_id: i64,
        error: String,
    },
}

/// The state of one Proxy stream.
#[derive(Debug)]
enum State {
    AwaitDial,
    Dialing { random: i64 },
    Established(established::Conn),
    Closing(established::Conn),
    Done,
}

/// One Proxy stream's rules; see the module docs.
#[derive(Debug)]
pub struct Session {
    state: State,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    pub fn new() -> Session {
        Session { state: State::AwaitDial, actions: VecDeque::new(), events: VecDeque::new() }
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front();
        if action.is_none() {
            // Drained: give the buffer back. A server holds thousands of
            // idle sessions, and a packet-sized buffer kept by each is
            // most of a session's memory.
            self.actions = VecDeque::new();
        }
        action
    }

    /// The next notable thing to count or log.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() {
            self.events = VecDeque::new();
        }
        event
    }

    /// Whether the session is over.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Outputs queued and not yet drained.
    pub fn queued(&self) -> usize {
        self.actions.len() + self.events.len()
    }

    /// A packet from the client.
    pub fn handle_packet(&mut self, packet: FrontendPacket) {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitDial => self.await_dial(packet),
            State::Dialing { random } => self.dialing(random, packet),
            State::Established(conn) => self.established(conn, packet),
            State::Closing(conn) => self.closing(conn, packet),
            State::Done => State::Done,
        };
    }

    /// A client message that is not a packet of its type: the stream is
    /// ended with INVALID_ARGUMENT.
    pub fn handle_malformed(&mut self, e: MalformedPacket) {
        if self.is_done() {
            return;
        }
        let message = format!("malformed packet: {e}");
        self.events.push_back(Event::Malformed(e));
        self.handle_violation(Violation { code: INVALID_ARGUMENT, message });
    }

    /// The client broke the protocol below packets (an oversize or
    /// undecodable message): its stream is ended with this status.
    pub fn handle_violation(&mut self, violation: Violation) {
        if self.is_done() {
            return;
        }
        self.actions.push_back(Action::EndClient(violation));
        self.handle_client_ended();
    }

    /// The client stream ended or failed: nothing more comes from it.
    pub fn handle_client_ended(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitDial => self.finish(),
            State::Dialing { random } => {
                self.events.push_back(Event::ClientLeftDuringDial { random });
                self.actions.push_back(Action::CancelDial);
                self.finish()
            }
            State::Established(conn) | State::Closing(conn) => {
                self.events.push_back(Event::ClientLeft { connect_id: conn.connect_id });
                self.actions.push_back(Action::ResetAgent(ResetReason::FrontendGone));
                self.finish()
            }
            State::Done => State::Done,
        };
    }

    /// The dial succeeded: answer DIAL_RSP and carry the connection.
    pub fn handle_dial_ok(&mut self, connect_id: i64) {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::Dialing { random } => {
                self.send(k::dial_rsp_ok(random, connect_id));
                State::Established(established::Conn::new(connect_id, random))
            }
            other => other,
        };
    }

    /// The dial failed: answer DIAL_RSP with `reason`.
    pub fn handle_dial_failed(&mut self, reason: &str) {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::Dialing { random } => {
                self.events.push_back(Event::DialFailed { random, reason: reason.to_owned() });
                self.send(k::dial_rsp_err(random, reason));
                self.finish()
            }
            other => other,
        };
    }

    /// The server shuts down: a dial is answered, a connection closed.
    pub fn handle_shutdown(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitDial => self.finish(),
            State::Dialing { random } => {
                self.actions.push_back(Action::CancelDial);
                self.send(k::dial_rsp_err(random, SHUTTING_DOWN));
                self.finish()
            }
            State::Established(conn) | State::Closing(conn) => {
                self.actions.push_back(Action::ResetAgent(ResetReason::Shutdown));
                self.send(k::close_rsp(conn.connect_id, SHUTTING_DOWN));
                self.finish()
            }
            State::Done => State::Done,
        };
    }

    fn await_dial(&mut self, packet: FrontendPacket) -> State {
        match packet {
            FrontendPacket::DialReq(req) => self.start_dial(req),
            other => {
                self.reject(other, Phase::AwaitDial);
                State::AwaitDial
            }
        }
    }

    fn start_dial(&mut self, req: DialReq) -> State {
        if let Err(reason) = k::check_dial(&req) {
            self.send(k::dial_rsp_err(req.random, &reason));
            self.events.push_back(Event::BadDialRequest { random: req.random, address: req.address, reason });
            return self.finish();
        }
        let DialReq { protocol, address, random } = req;
        self.actions.push_back(Action::StartDial { protocol, address });
        State::Dialing { random }
    }

    fn dialing(&mut self, random: i64, packet: FrontendPacket) -> State {
        match packet {
            FrontendPacket::DialCls { random: r } if r == random => {
                self.events.push_back(Event::DialCancelled { random });
                self.actions.push_back(Action::CancelDial);
                self.finish()
            }
            other => {
                self.reject(other, Phase::Dialing);
                State::Dialing { random }
            }
        }
    }

    /// Answers a packet that does not belong to the stream's connection.
    fn reject(&mut self, packet: FrontendPacket, phase: Phase) {
        match packet {
            FrontendPacket::DialReq(second) => {
                self.events.push_back(Event::SecondDial { random: second.random, phase });
                self.send(k::dial_rsp_err(second.random, k::ONE_DIAL_PER_STREAM));
            }
            FrontendPacket::Data { connect_id, .. } | FrontendPacket::CloseReq { connect_id } => {
                self.events.push_back(Event::UnknownConnection { connect_id, phase });
                self.send(k::close_rsp(connect_id, &format!("unknown connectID {connect_id}")));
            }
            FrontendPacket::DialCls { random } => self.events.push_back(Event::DialClsIgnored { random, phase }),
            FrontendPacket::Other(kind) => self.events.push_back(Event::OtherIgnored { kind, phase }),
        }
    }

    fn send(&mut self, packet: Packet) {
        self.actions.push_back(Action::Send(packet));
    }

    fn finish(&mut self) -> State {
        self.actions.push_back(Action::Done);
        State::Done
    }
}
