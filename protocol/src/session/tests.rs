//! The session rules, one input at a time, without sockets.

use bytes::Bytes;

use super::*;
use crate::konnectivity::{close_rsp, dial_rsp_err, dial_rsp_ok};

const RANDOM: i64 = 77;
const ID: i64 = 7;

fn req(address: &str, random: i64) -> FrontendPacket {
    FrontendPacket::DialReq(DialReq { protocol: "tcp".into(), address: address.into(), random })
}

fn data(connect_id: i64, bytes: &'static [u8]) -> FrontendPacket {
    FrontendPacket::Data { connect_id, data: Bytes::from_static(bytes) }
}

fn actions(s: &mut Session) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// A session driven to `phase`, its outputs drained.
fn session_in(phase: &str) -> Session {
    let mut s = Session::new();
    if phase != "await_dial" {
        s.handle_packet(req("a:1", RANDOM));
    }
    if phase == "established" || phase == "closing" {
        s.handle_dial_ok(ID);
    }
    if phase == "closing" {
        s.handle_packet(FrontendPacket::CloseReq { connect_id: ID });
    }
    actions(&mut s);
    events(&mut s);
    s
}

fn unknown(connect_id: i64) -> Action {
    Action::Send(close_rsp(connect_id, &format!("unknown connectID {connect_id}")))
}

const PHASES: [&str; 4] = ["await_dial", "dialing", "established", "closing"];

#[test]
fn packets_for_unknown_connections_get_close_rsp_in_every_phase() {
    for phase in PHASES {
        let mut s = session_in(phase);
        s.handle_packet(data(9, b"x"));
        s.handle_packet(FrontendPacket::CloseReq { connect_id: 10 });
        assert_eq!(actions(&mut s), [unknown(9), unknown(10)], "{phase}");
        let counted = events(&mut s).iter().filter(|e| matches!(e, Event::UnknownConnection { .. })).count();
        assert_eq!(counted, 2, "{phase}");
        assert!(!s.is_done(), "{phase}");
    }
}

#[test]
fn a_second_dial_req_is_refused_in_every_phase_after_the_first() {
    for phase in ["dialing", "established", "closing"] {
        let mut s = session_in(phase);
        s.handle_packet(req("b:2", 5));
        assert_eq!(actions(&mut s), [Action::Send(dial_rsp_err(5, k::ONE_DIAL_PER_STREAM))], "{phase}");
        assert!(matches!(events(&mut s)[..], [Event::SecondDial { random: 5, .. }]), "{phase}");
        assert!(!s.is_done(), "{phase}");
    }
}

#[test]
fn ignored_packets_change_nothing() {
    let table: [(&str, FrontendPacket); 5] = [
        ("await_dial", FrontendPacket::DialCls { random: RANDOM }),
        ("dialing", FrontendPacket::DialCls { random: RANDOM + 1 }),
        ("established", FrontendPacket::DialCls { random: RANDOM + 1 }),
        ("established", FrontendPacket::Other(6)),
        ("closing", data(ID, b"late")),
    ];
    for (phase, packet) in table {
        let mut s = session_in(phase);
        s.handle_packet(packet.clone());
        assert_eq!(actions(&mut s), [], "{phase} {packet:?}");
        assert!(!s.is_done());
    }
}

#[test]
fn the_first_dial_req_is_checked_then_dialled() {
    let mut s = Session::new();
    s.handle_packet(req("a:1", RANDOM));
    assert_eq!(actions(&mut s), [Action::StartDial { protocol: "tcp".into(), address: "a:1".into() }]);

    let mut s = Session::new();
    s.handle_packet(req("", RANDOM));
    let reason = k::check_dial(&DialReq { protocol: "tcp".into(), address: String::new(), random: 0 }).unwrap_err();
    assert_eq!(actions(&mut s), [Action::Send(dial_rsp_err(RANDOM, &reason)), Action::Done]);
    assert!(matches!(&events(&mut s)[..], [Event::BadDialRequest { random: RANDOM, .. }]));
}

#[test]
fn the_dial_outcome_is_one_dial_rsp() {
    let mut s = session_in("dialing");
    s.handle_dial_ok(ID);
    s.handle_dial_ok(ID + 1);
    s.handle_dial_failed("late");
    assert_eq!(actions(&mut s), [Action::Send(dial_rsp_ok(RANDOM, ID))]);

    let mut s = session_in("dialing");
    s.handle_dial_failed("no agent");
    s.handle_dial_ok(ID);
    assert_eq!(actions(&mut s), [Action::Send(dial_rsp_err(RANDOM, "no agent")), Action::Done]);
    assert!(s.is_done());
}

#[test]
fn dial_cls_or_the_client_leaving_cancels_the_dial_without_dial_rsp() {
    let mut s = session_in("dialing");
    s.handle_packet(FrontendPacket::DialCls { random: RANDOM });
    assert_eq!(actions(&mut s), [Action::CancelDial, Action::Done]);
    assert_eq!(events(&mut s), [Event::DialCancelled { random: RANDOM }]);

    let mut s = session_in("dialing");
    s.handle_client_ended();
    s.handle_dial_ok(ID);
    assert_eq!(actions(&mut s), [Action::CancelDial, Action::Done]);
    assert_eq!(events(&mut s), [Event::ClientLeftDuringDial { random: RANDOM }]);
}

#[test]
fn dial_cls_that_crossed_dial_rsp_resets_the_connection() {
    let mut s = session_in("established");
    s.handle_packet(FrontendPacket::DialCls { random: RANDOM });
    s.handle_agent_end(AgentEnd::Finished);
    assert_eq!(actions(&mut s), [Action::ResetAgent(ResetReason::DialAbandoned), Action::Done]);
    assert_eq!(events(&mut s), [Event::DialClsCrossedDialRsp { connect_id: ID, random: RANDOM }]);
}

#[test]
fn data_flows_both_ways_until_a_write_fails() {
    let mut s = session_in("established");
    s.handle_packet(data(ID, b"up"));
    s.handle_agent_data(vec![Bytes::from_static(b"do"), Bytes::from_static(b"wn")]);
    let down = vec![Bytes::from_static(b"do"), Bytes::from_static(b"wn")];
    let expected = [Action::WriteAgent(Bytes::from_static(b"up")), Action::SendData { connect_id: ID, chunks: down }];
    assert_eq!(actions(&mut s), expected);
    s.handle_agent_write_failed();
    s.handle_packet(data(ID, b"more"));
    s.handle_packet(FrontendPacket::CloseReq { connect_id: ID });
    assert_eq!(actions(&mut s), [Action::ArmCloseTimer(CLOSE_CONFIRM_TIMEOUT)], "no write, no finish");
}

#[test]
fn close_req_then_the_agent_confirms_or_the_timer_fires() {
    let mut s = session_in("established");
    s.handle_packet(FrontendPacket::CloseReq { connect_id: ID });
    assert_eq!(actions(&mut s), [Action::FinishAgent, Action::ArmCloseTimer(CLOSE_CONFIRM_TIMEOUT)]);
    s.handle_agent_data(vec![Bytes::from_static(b"tail")]);
    s.handle_agent_end(AgentEnd::Finished);
    s.handle_close_timeout();
    let tail = Action::SendData { connect_id: ID, chunks: vec![Bytes::from_static(b"tail")] };
    let closed = [tail, Action::DisarmCloseTimer, Action::Send(close_rsp(ID, "")), Action::Done];
    assert_eq!(actions(&mut s), closed);

    let mut s = session_in("closing");
    s.handle_close_timeout();
    s.handle_agent_end(AgentEnd::Finished);
    let timed_out = [Action::ResetAgent(ResetReason::FrontendGone), Action::Send(close_rsp(ID, "")), Action::Done];
    assert_eq!(actions(&mut s), timed_out);
    assert_eq!(events(&mut s), [Event::CloseTimedOut { connect_id: ID }]);
}

#[test]
fn the_agent_end_is_the_close_rsp_reason() {
    let table = [
        (AgentEnd::Finished, String::new()),
        (AgentEnd::Reset(3), "agent reset the connection (code 3)".to_owned()),
        (AgentEnd::Lost("agent connection lost: timed out".into()), "agent connection lost: timed out".into()),
    ];
    for phase in ["established", "closing"] {
        for (end, reason) in table.clone() {
            let mut s = session_in(phase);
            s.handle_agent_data(vec![Bytes::from_static(b"mid")]);
            s.handle_agent_end(end.clone());
            s.handle_agent_end(end);
            let sent: Vec<Action> = actions(&mut s).into_iter().filter(|a| matches!(a, Action::Send(_))).collect();
            assert_eq!(sent, [Action::Send(close_rsp(ID, &reason))], "{phase}");
            assert!(s.is_done());
        }
    }
}

#[test]
fn the_client_leaving_an_established_connection_resets_the_agent() {
    for phase in ["established", "closing"] {
        let mut s = session_in(phase);
        s.handle_client_ended();
        s.handle_agent_end(AgentEnd::Finished);
        assert_eq!(actions(&mut s), [Action::ResetAgent(ResetReason::FrontendGone), Action::Done], "{phase}");
    }
    let mut s = session_in("established");
    s.handle_client_gone();
    assert_eq!(actions(&mut s), [Action::StopAgent(ResetReason::FrontendGone), Action::Done]);
}

#[test]
fn a_malformed_packet_ends_the_stream_with_invalid_argument() {
    let teardown: [(&str, &[Action]); 3] = [
        ("await_dial", &[]),
        ("dialing", &[Action::CancelDial]),
        ("established", &[Action::ResetAgent(ResetReason::FrontendGone)]),
    ];
    let e = MalformedPacket { kind: "DATA", expected: "data" };
    for (phase, then) in teardown {
        let mut s = session_in(phase);
        s.handle_malformed(e.clone());
        let mut expected =
            vec![Action::EndClient(Violation { code: INVALID_ARGUMENT, message: format!("malformed packet: {e}") })];
        expected.extend_from_slice(then);
        expected.push(Action::Done);
        assert_eq!(actions(&mut s), expected, "{phase}");
        assert_eq!(events(&mut s).first(), Some(&Event::Malformed(e.clone())));
    }
}

#[test]
fn nothing_follows_done() {
    let mut s = session_in("established");
    s.handle_agent_end(AgentEnd::Finished);
    actions(&mut s);
    events(&mut s);
    s.handle_packet(req("b:1", 1));
    s.handle_packet(data(ID, b"x"));
    s.handle_packet(data(99, b"x"));
    s.handle_agent_data(vec![Bytes::from_static(b"x")]);
    s.handle_malformed(MalformedPacket { kind: "DATA", expected: "data" });
    s.handle_violation(Violation { code: 8, message: "big".into() });
    s.handle_client_ended();
    s.handle_client_gone();
    s.handle_close_timeout();
    s.handle_shutdown();
    s.handle_dial_ok(1);
    s.handle_dial_failed("x");
    assert_eq!(actions(&mut s), []);
    assert_eq!(s.queued(), 0);
}

#[test]
fn shutdown_answers_what_is_open() {
    let mut s = session_in("dialing");
    s.handle_shutdown();
    assert_eq!(actions(&mut s), [Action::CancelDial, Action::Send(dial_rsp_err(RANDOM, SHUTTING_DOWN)), Action::Done]);
    let mut s = session_in("closing");
    s.handle_shutdown();
    let closed = [Action::ResetAgent(ResetReason::Shutdown), Action::Send(close_rsp(ID, SHUTTING_DOWN)), Action::Done];
    assert_eq!(actions(&mut s), closed);
}
