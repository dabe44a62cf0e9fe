//! The session machine's [`Event`]s as metrics and log lines. Strings a
//! client chose (addresses, reasons quoting them) go through [`untrusted`].

use konnq_protocol::session::{Event, Phase, CLOSE_CONFIRM_TIMEOUT};
use konnq_shared::logging::untrusted;
use tracing::{debug, info, warn};

use crate::metrics::{DialFailure, Metrics};

/// What log lines add to an event: the dial's address and, once
/// established, the agent carrying the connection.
#[derive(Clone, Default)]
pub(super) struct LogCtx {
    pub(super) address: String,
    pub(super) agent_id: String,
}

/// Counts and logs one event.
pub(super) fn record(metrics: &Metrics, log: &LogCtx, event: Event) {
    match event {
        Event::UnknownConnection { connect_id, phase } => {
            metrics.frontend_error("unknown_connection");
            match phase {
                Phase::AwaitDial => warn!(connect_id, "packet for an unknown connection before any dial"),
                Phase::Dialing => warn!(connect_id, "packet for an unknown connection during a dial"),
                Phase::Established { connect_id: ours } => {
                    warn!(connect_id = ours, unknown = connect_id, "packet for an unknown connection")
                }
            }
        }
        Event::SecondDial { random, phase } => {
            metrics.frontend_error("second_dial");
            match phase {
                Phase::Established { connect_id } => warn!(connect_id, random, "second DIAL_REQ on a stream refused"),
                _ => warn!(random, "second DIAL_REQ on a stream refused"),
            }
        }
        Event::BadDialRequest { random, address, reason } => {
            metrics.frontend_error("bad_dial_request");
            warn!(random, address = %untrusted(&address), "rejected dial: {}", untrusted(&reason));
        }
        Event::Malformed(_) => metrics.frontend_error("malformed_packet"),
        Event::DialClsIgnored { random, phase } => match phase {
            Phase::AwaitDial => debug!(random, "DIAL_CLS before any dial; ignored"),
            Phase::Dialing => debug!(other = random, "DIAL_CLS for another dial; ignored"),
            Phase::Established { connect_id } => debug!(connect_id, random, "late DIAL_CLS ignored"),
        },
        Event::OtherIgnored { kind, phase } => match phase {
            Phase::AwaitDial => debug!(kind, "ignoring packet"),
            Phase::Dialing => debug!(kind, "ignoring packet during dial"),
            Phase::Established { connect_id } => debug!(connect_id, kind, "ignoring packet"),
        },
        other => record_lifecycle(metrics, log, other),
    }
}

/// Events of the dial and the connection's end.
fn record_lifecycle(metrics: &Metrics, log: &LogCtx, event: Event) {
    match event {
        Event::DialCancelled { random } => {
            metrics.dial_failed(DialFailure::FrontendClose);
            info!(random, address = %untrusted(&log.address), "client cancelled the dial (DIAL_CLS)");
        }
        Event::ClientLeftDuringDial { random } => {
            metrics.dial_failed(DialFailure::FrontendClose);
            debug!(random, "frontend stream ended during the dial");
        }
        Event::DialFailed { random, reason } => {
            info!(random, address = %untrusted(&log.address), "dial failed: {}", untrusted(&reason));
        }
        Event::DialClsCrossedDialRsp { connect_id, random } => {
            info!(connect_id, random, "DIAL_CLS crossed DIAL_RSP: closing the abandoned connection");
        }
        Event::CloseRequested { connect_id } => {
            debug!(connect_id, agent = %untrusted(&log.agent_id), "CLOSE_REQ");
        }
        Event::ClientLeft { connect_id } => {
            debug!(connect_id, "frontend stream ended; resetting the agent stream");
        }
        Event::CloseTimedOut { connect_id } => {
            warn!(connect_id, "agent did not confirm the close within {CLOSE_CONFIRM_TIMEOUT:?}; resetting");
        }
        Event::AgentClosed { connect_id, error } if !error.is_empty() => debug!(connect_id, "{error}"),
        _ => {}
    }
}
