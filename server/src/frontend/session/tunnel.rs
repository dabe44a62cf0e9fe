//! Phase 3, the established connection: client packets are fed to the
//! machine on the stream's task, which writes to the agent; agent reads are
//! fed on their own task ([`from_agent`]), which sends DATA and the
//! CLOSE_RSP the agent's end produces. A slow client write so never blocks
//! reading CLOSE_REQ, and a slow agent write never holds agent → client.
//!
//! After CLOSE_REQ the client stream is not read any more: the agent's end
//! or the close-confirm timer ends the session.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use konnq_protocol::session::{Action, AgentEnd, ResetReason, Session};
use konnq_shared::gauge::GaugeGuard;
use konnq_shared::proto::Packet;
use konnq_shared::quic::{codes, read_chunks, write_shared, SendShare};
use quinn::VarInt;
use tokio::task::JoinHandle;
use tonic::Status;

use super::Client;
use crate::backend::{AgentConn, Dialed};

/// What the stream's task does after carrying out a batch of actions.
enum Flow {
    Continue,
    /// CLOSE_REQ: wait this long for the agent to confirm.
    Closing(Duration),
    Done,
}

/// The stream's own half of the connection: the agent send side.
struct Upstream {
    send: quinn::SendStream,
    agent: Arc<AgentConn>,
    share: SendShare,
    downstream: JoinHandle<()>,
}

/// Serves an established connection to its end.
pub(super) async fn run<S>(mut client: Client, mut inbound: S, dialed: Dialed)
where
    S: Stream<Item = Result<Packet, Status>> + Unpin,
{
    // `_slot` keeps the agent's stream slot taken until the tunnel ends.
    let Dialed { send, recv, agent, slot: _slot, .. } = dialed;
    let _established = GaugeGuard::inc(&client.metrics.established);
    client.log.agent_id = agent.agent_id.to_string();
    let downstream = tokio::spawn(from_agent(recv, client.clone(), Arc::clone(&agent)));
    let share = SendShare::new(agent.send_clock.clone());
    let mut up = Upstream { send, agent, share, downstream };
    let wait = loop {
        let actions = tokio::select! {
            _ = &mut up.downstream => return,
            item = inbound.next() => client.feed(item),
        };
        match up.carry_out(&client, actions).await {
            Flow::Continue => {}
            Flow::Closing(wait) => break wait,
            Flow::Done => return,
        }
    };
    // After CLOSE_REQ the agent closes the target and finishes its side;
    // `from_agent` then sends CLOSE_RSP. Bound the wait.
    if tokio::time::timeout(wait, &mut up.downstream).await.is_err() {
        let actions = client.step(Session::handle_close_timeout);
        if actions.is_empty() {
            // The agent's end came first: its CLOSE_RSP is on its way.
            let _ = (&mut up.downstream).await;
            return;
        }
        up.carry_out(&client, actions).await;
    }
}

impl Upstream {
    /// Carries out the machine's actions in order.
    async fn carry_out(&mut self, client: &Client, actions: Vec<Action>) -> Flow {
        let mut flow = Flow::Continue;
        for action in actions {
            match action {
                Action::WriteAgent(data) => {
                    let n = data.len();
                    if write_shared(&mut self.send, &mut self.share, data).await.is_ok() {
                        client.metrics.bytes_to_agent(n);
                        self.agent.expect_answer();
                    } else {
                        // The agent side is gone; `from_agent` reports it.
                        client.step(Session::handle_agent_write_failed);
                    }
                }
                Action::FinishAgent => drop(self.send.finish()),
                Action::ResetAgent(reason) => {
                    let _ = self.send.reset(VarInt::from_u32(code(reason)));
                    self.downstream.abort();
                }
                Action::ArmCloseTimer(wait) => flow = Flow::Closing(wait),
                Action::Done => flow = Flow::Done,
                other => drop(client.to_client(other).await),
            }
        }
        flow
    }
}

/// Agent → client: every byte as DATA, then the CLOSE_RSP of the agent's
/// end, as the machine answers them.
async fn from_agent(mut recv: quinn::RecvStream, client: Client, agent: Arc<AgentConn>) {
    loop {
        let input = match read_chunks(&mut recv).await {
            Ok(Some(chunks)) => {
                agent.heard_data();
                Ok(chunks)
            }
            Ok(None) => Err(AgentEnd::Finished),
            Err(quinn::ReadError::Reset(code)) => Err(AgentEnd::Reset(code.into_inner())),
            Err(quinn::ReadError::ConnectionLost(e)) => Err(AgentEnd::Lost(agent.lost_reason(&e))),
            Err(e) => Err(AgentEnd::Lost(format!("agent connection lost: {e}"))),
        };
        let actions = match input {
            Ok(chunks) => client.step(|s| s.handle_agent_data(chunks)),
            Err(end) => client.step(|s| s.handle_agent_end(end)),
        };
        if actions.is_empty() {
            // The stream's task ended the session.
            return;
        }
        for action in actions {
            match action {
                Action::Done => return,
                action => {
                    if !client.to_client(action).await {
                        // Client gone: stop the agent side too.
                        return client_gone(&mut recv, &client);
                    }
                }
            }
        }
    }
}

fn client_gone(recv: &mut quinn::RecvStream, client: &Client) {
    for action in client.step(Session::handle_client_gone) {
        if let Action::StopAgent(reason) = action {
            let _ = recv.stop(VarInt::from_u32(code(reason)));
        }
    }
}

/// The QUIC stream error code for a reset.
fn code(reason: ResetReason) -> u32 {
    match reason {
        ResetReason::DialAbandoned => codes::DIAL_ABANDONED,
        ResetReason::FrontendGone => codes::FRONTEND_GONE,
        ResetReason::Shutdown => codes::SHUTDOWN,
    }
}
