//! One peer's run, phase by phase, on fresh processes: steady, agent roll,
//! server roll, server crash, agent crash. Restarts are one at a time, each
//! waited for (bounded) before the next; a restart that does not come back
//! in time is noted and the run goes on.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

use super::cluster::{kill, terminate, wait_metric, Cluster, OPEN_SERVER_CONNECTIONS, READY_BACKENDS};
use super::load::{hold, DialRecord, Load, LoadSettings, Phase};
use super::report::{self, CrashServer, PeerRoll, RollStep};
use super::RollSettings;
use crate::peers::{Binaries, Env, PeerKind};
use crate::progress::Progress;

/// Held connections send a request this often.
const HOLD_EVERY: Duration = Duration::from_millis(100);
/// Held connections open this long before the agent's SIGKILL.
const HOLD_LEAD: Duration = Duration::from_secs(1);
/// The server and the agent that crash.
const CRASHING: usize = 0;

struct Run<'a> {
    s: &'a RollSettings,
    cluster: Cluster,
    load: Load,
    progress: &'a Progress,
    notes: Vec<String>,
    /// Each phase's (start, end), seconds since the load's origin.
    spans: Vec<(Phase, f64, f64)>,
}

/// Everything for `kind`: its figures, every dial, and notes on what did
/// not go as planned.
pub async fn run_peer(
    kind: PeerKind,
    bins: &Binaries,
    env: &Env,
    s: &RollSettings,
    progress: &Progress,
) -> anyhow::Result<(PeerRoll, Vec<DialRecord>, Vec<String>)> {
    let n = s.servers;
    progress.stage(format!("starting {}: nginx, {n} servers, {n} agents", kind.name()), Duration::from_secs(30));
    let started = Instant::now();
    let rejoin = Duration::from_secs_f64(s.rejoin_timeout_secs);
    let graceful = Duration::from_secs_f64(s.server_graceful_secs);
    let cluster = Cluster::start(kind, bins, env, n, graceful, rejoin, s.nginx_max_fails).await?;
    let start_secs = started.elapsed().as_secs_f64();
    let settings = LoadSettings {
        rate: s.rate,
        bytes: s.bytes,
        timeout: Duration::from_secs_f64(s.dial_timeout_secs),
        max_in_flight: s.max_in_flight,
        max_run: s.peer_budget(),
    };
    let load = Load::start(&cluster.sockets, env.targets.echo, &settings, Instant::now());
    let mut run = Run { s, cluster, load, progress, notes: Vec::new(), spans: Vec::new() };
    let mut roll = PeerRoll { peer: kind.name().into(), start_secs, ..PeerRoll::default() };

    run.phase(Phase::Steady);
    sleep(Duration::from_secs_f64(s.steady_secs)).await;
    run.phase(Phase::AgentRoll);
    for i in 0..n {
        let step = run.roll_agent(i).await?;
        roll.agent_rolls.push(step);
    }
    run.phase(Phase::ServerRoll);
    for i in 0..n {
        let step = run.roll_server(i).await?;
        roll.server_rolls.push(step);
    }
    run.phase(Phase::CrashServer);
    let mut crash = run.crash_server(CRASHING).await?;
    let (at, held) = run.crash_agent(env, CRASHING).await?;
    run.close_phase();

    let Run { cluster, load, mut notes, spans, .. } = run;
    let dials = load.finish().await;
    cluster.stop().await;
    let records = dials.records;
    roll.phases = report::phase_figures(&records, &dials.not_sent, &spans);
    let phase_end = |p: Phase| spans.iter().find(|s| s.0 == p).map_or(f64::MAX, |s| s.2);
    fill_failures(&mut roll.agent_rolls, &records, phase_end(Phase::AgentRoll));
    fill_failures(&mut roll.server_rolls, &records, phase_end(Phase::ServerRoll));
    (crash.in_flight, crash.in_flight_failed, _) = report::in_flight_at(&records, crash.at, Some(crash.server));
    let back = crash.at + crash.all_agents_secs.unwrap_or(0.0);
    crash.others_failed = records
        .iter()
        .filter(|r| r.client != crash.server && r.error.is_some() && r.end >= crash.at && r.end < back)
        .count() as u64;
    roll.crash_server = Some(crash);
    let mut ca = report::crash_agent(CRASHING, at.0, s.observe_secs, &records, &held);
    ca.servers_noticed_secs = at.1;
    roll.crash_agent = Some(ca);
    roll.failed_dials = report::first_failures(&records);
    if records.is_empty() {
        notes.push("no dial was recorded".into());
    }
    Ok((roll, records, notes))
}

/// Each step's failed dials: those that ended from its SIGTERM to the next one's.
fn fill_failures(steps: &mut [RollStep], records: &[DialRecord], phase_end: f64) {
    let ats: Vec<f64> = steps.iter().map(|s| s.at).collect();
    for (i, st) in steps.iter_mut().enumerate() {
        let until = ats.get(i + 1).copied().unwrap_or(phase_end);
        st.failed_dials = report::failed_between(records, st.at, until);
    }
}

impl Run<'_> {
    fn phase(&mut self, p: Phase) {
        self.close_phase();
        let now = self.load.now();
        self.load.set_phase(p);
        self.spans.push((p, now, now));
    }

    fn close_phase(&mut self) {
        let now = self.load.now();
        if let Some(last) = self.spans.last_mut() {
            last.2 = now;
        }
    }

    fn rejoin(&self) -> Duration {
        Duration::from_secs_f64(self.s.rejoin_timeout_secs)
    }

    fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.s.termination_grace_secs)
    }

    fn stage(&self, label: String) {
        let planned = self.grace() + self.rejoin();
        self.progress
            .stage(format!("{} {label} ({} dials so far)", self.cluster.kind.name(), self.load.done()), planned);
    }

    /// After a restart: waits until every server has every agent again
    /// (noted if not), then the settle time. Returns when it was full.
    async fn settle(&mut self, what: &str) -> Option<Instant> {
        let full = self.cluster.wait_full(self.rejoin()).await.map(|_| Instant::now());
        if full.is_none() {
            let state = self.cluster.describe().await;
            self.notes
                .push(format!("after {what}: not every server had every agent within {:?} ({state})", self.rejoin()));
        }
        if let Err(e) = self.cluster.check_alive() {
            self.notes.push(format!("after {what}: {e:#}"));
        }
        sleep(Duration::from_secs_f64(self.s.settle_secs)).await;
        full
    }

    /// SIGTERM agent `i`, wait for its exit, start it, wait until it holds every server.
    async fn roll_agent(&mut self, i: usize) -> anyhow::Result<RollStep> {
        self.stage(format!("rolling agent {i}"));
        let n = self.s.servers as f64;
        let at = self.load.now();
        let (grace, rejoin) = (self.grace(), self.rejoin());
        let agent = &mut self.cluster.agents[i];
        let stopped = terminate(&mut agent.proc, grace).await?;
        agent.proc.respawn()?;
        let restarted = Instant::now();
        let deadline = restarted + rejoin;
        let back = wait_metric(agent.health, OPEN_SERVER_CONNECTIONS, |v| v == n, restarted, deadline).await;
        if back.is_none() {
            self.notes.push(format!("agent {i} did not hold every server within {:?}", self.rejoin()));
        }
        let full = self.settle(&format!("agent {i}'s restart")).await.map(|t| (t - restarted).as_secs_f64());
        Ok(RollStep { index: i, at, stopped, back_secs: back, all_servers_see_it_secs: full, ..RollStep::default() })
    }

    /// Server `i`'s client pauses; SIGTERM, exit, start, every agent back; the client resumes.
    async fn roll_server(&mut self, i: usize) -> anyhow::Result<RollStep> {
        self.stage(format!("rolling server s{i}"));
        let n = self.s.servers as f64;
        self.load.pause(i);
        let paused = Instant::now();
        let at = self.load.now();
        let (grace, rejoin) = (self.grace(), self.rejoin());
        let server = &mut self.cluster.servers[i];
        let stopped = terminate(&mut server.proc, grace).await?;
        server.proc.respawn()?;
        let restarted = Instant::now();
        let deadline = restarted + rejoin;
        let back = wait_metric(server.health, READY_BACKENDS, |v| v == n, restarted, deadline).await;
        self.load.resume(i);
        let paused_secs = Some(paused.elapsed().as_secs_f64());
        if back.is_none() {
            self.notes.push(format!("server s{i} did not have every agent within {:?}", self.rejoin()));
        }
        self.settle(&format!("server s{i}'s restart")).await;
        Ok(RollStep { index: i, at, stopped, back_secs: back, paused_secs, ..RollStep::default() })
    }

    /// Server `i` SIGKILLed and started at once; its client paused until every agent is back.
    async fn crash_server(&mut self, i: usize) -> anyhow::Result<CrashServer> {
        self.stage(format!("SIGKILL and restart of server s{i}"));
        let n = self.s.servers as f64;
        self.load.pause(i);
        let at = self.load.now();
        let rejoin = self.rejoin();
        let server = &mut self.cluster.servers[i];
        kill(&mut server.proc).await?;
        server.proc.respawn()?;
        let restarted = Instant::now();
        let deadline = restarted + rejoin;
        let first = wait_metric(server.health, READY_BACKENDS, |v| v >= 1.0, restarted, deadline).await;
        let all = wait_metric(server.health, READY_BACKENDS, |v| v == n, restarted, deadline).await;
        self.load.resume(i);
        if all.is_none() {
            self.notes.push(format!("crashed server s{i} did not have every agent within {:?}", self.rejoin()));
        }
        self.settle(&format!("server s{i}'s crash")).await;
        Ok(CrashServer { server: i, at, first_agent_secs: first, all_agents_secs: all, ..CrashServer::default() })
    }

    /// Held connections through every server, then agent `i` SIGKILLed for
    /// good; watches until the observation ends. Returns ((kill time, servers
    /// noticed after), the held connections).
    async fn crash_agent(
        &mut self,
        env: &Env,
        i: usize,
    ) -> anyhow::Result<((f64, Option<f64>), Vec<super::load::Held>)> {
        self.stage(format!("SIGKILL of agent {i}"));
        let observe = Duration::from_secs_f64(self.s.observe_secs);
        let until = Instant::now() + HOLD_LEAD + observe;
        let mut held = JoinSet::new();
        for (client, socket) in self.cluster.sockets.iter().enumerate() {
            for _ in 0..self.s.hold_conns {
                let (socket, echo, bytes, origin) =
                    (socket.clone(), env.targets.echo, self.s.bytes, self.load.origin());
                held.spawn(hold(client, socket, echo, bytes, HOLD_EVERY, until, origin));
            }
        }
        sleep(HOLD_LEAD).await;
        self.phase(Phase::CrashAgent);
        let at = self.load.now();
        let killed_at = Instant::now();
        let mut agent = self.cluster.agents.remove(i);
        kill(&mut agent.proc).await?;
        let fewer = (self.s.servers - 1) as f64;
        let mut noticed = Some(0.0);
        for s in &self.cluster.servers {
            let t = wait_metric(s.health, READY_BACKENDS, |v| v == fewer, killed_at, killed_at + observe).await;
            noticed = noticed.zip(t).map(|(a, b): (f64, f64)| a.max(b));
        }
        sleep_until(killed_at + observe).await;
        let mut out = Vec::new();
        while let Some(h) = held.join_next().await {
            out.extend(h.ok());
        }
        Ok(((at, noticed), out))
    }
}
