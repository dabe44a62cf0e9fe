//! The established connection ([`State::Established`]) and its close
//! ([`State::Closing`]): DATA both ways, then exactly one CLOSE_RSP — from
//! the agent's end of the stream, or from the close-confirm timer — unless
//! the client left first or abandoned the dial.

use bytes::Bytes;

use super::{Action, AgentEnd, Event, Phase, ResetReason, Session, State, CLOSE_CONFIRM_TIMEOUT};
use crate::konnectivity::{self as k, FrontendPacket};

/// A connection carried by the stream.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) connect_id: i64,
    /// The dial's `random`: a DIAL_CLS naming it that crossed our DIAL_RSP
    /// means the client gave up, so the connection must not live on.
    random: i64,
    /// Whether bytes may still be written to the agent: not after a failed
    /// write, nor after the send side was finished.
    send_open: bool,
}

impl Conn {
    pub(super) fn new(connect_id: i64, random: i64) -> Conn {
        Conn { connect_id, random, send_open: true }
    }

    fn phase(&self) -> Phase {
        Phase::Established { connect_id: self.connect_id }
    }
}

impl Session {
    /// Bytes the agent sent: they go to the client as DATA.
    pub fn handle_agent_data(&mut self, chunks: Vec<Bytes>) {
        if let State::Established(conn) | State::Closing(conn) = &self.state {
            let connect_id = conn.connect_id;
            self.actions.push_back(Action::SendData { connect_id, chunks });
        }
    }

    /// A write to the agent failed: its side is gone, and its end (read
    /// from the agent stream) closes the connection; nothing more is written.
    pub fn handle_agent_write_failed(&mut self) {
        if let State::Established(conn) = &mut self.state {
            conn.send_open = false;
        }
    }

    /// The agent's side of the stream ended: the connection's CLOSE_RSP.
    pub fn handle_agent_end(&mut self, end: AgentEnd) {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::Established(conn) => self.close(&conn, end),
            State::Closing(conn) => {
                self.actions.push_back(Action::DisarmCloseTimer);
                self.close(&conn, end)
            }
            other => other,
        };
    }

    /// The agent did not confirm a CLOSE_REQ in time: reset its stream and
    /// answer the client anyway.
    pub fn handle_close_timeout(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::Closing(conn) => {
                self.events.push_back(Event::CloseTimedOut { connect_id: conn.connect_id });
                self.actions.push_back(Action::ResetAgent(ResetReason::FrontendGone));
                self.send(k::close_rsp(conn.connect_id, ""));
                self.finish()
            }
            other => other,
        };
    }

    /// The client can no longer be written to (its connection is gone):
    /// stop reading the agent; there is no one to send CLOSE_RSP to.
    pub fn handle_client_gone(&mut self) {
        if let State::Established(_) | State::Closing(_) = self.state {
            self.actions.push_back(Action::StopAgent(ResetReason::FrontendGone));
            self.state = self.finish();
        } else {
            self.handle_client_ended();
        }
    }

    pub(super) fn established(&mut self, mut conn: Conn, packet: FrontendPacket) -> State {
        match packet {
            FrontendPacket::Data { connect_id, data } if connect_id == conn.connect_id => {
                if conn.send_open {
                    self.actions.push_back(Action::WriteAgent(data));
                }
                State::Established(conn)
            }
            FrontendPacket::CloseReq { connect_id } if connect_id == conn.connect_id => {
                self.events.push_back(Event::CloseRequested { connect_id });
                if conn.send_open {
                    conn.send_open = false;
                    self.actions.push_back(Action::FinishAgent);
                }
                self.actions.push_back(Action::ArmCloseTimer(CLOSE_CONFIRM_TIMEOUT));
                State::Closing(conn)
            }
            FrontendPacket::DialCls { random } if random == conn.random => {
                self.events.push_back(Event::DialClsCrossedDialRsp { connect_id: conn.connect_id, random });
                self.actions.push_back(Action::ResetAgent(ResetReason::DialAbandoned));
                self.finish()
            }
            other => {
                self.reject(other, conn.phase());
                State::Established(conn)
            }
        }
    }

    /// After CLOSE_REQ the agent's send side is finished: DATA, a repeated
    /// CLOSE_REQ and DIAL_CLS for the connection change nothing.
    pub(super) fn closing(&mut self, conn: Conn, packet: FrontendPacket) -> State {
        match packet {
            FrontendPacket::Data { connect_id, .. } | FrontendPacket::CloseReq { connect_id }
                if connect_id == conn.connect_id => {}
            FrontendPacket::DialCls { random } if random == conn.random => {}
            other => self.reject(other, conn.phase()),
        }
        State::Closing(conn)
    }

    fn close(&mut self, conn: &Conn, end: AgentEnd) -> State {
        let error = match end {
            AgentEnd::Finished => String::new(),
            AgentEnd::Reset(code) => format!("agent reset the connection (code {code})"),
            AgentEnd::Lost(reason) => reason,
        };
        self.send(k::close_rsp(conn.connect_id, &error));
        self.events.push_back(Event::AgentClosed { connect_id: conn.connect_id, error });
        self.finish()
    }
}
