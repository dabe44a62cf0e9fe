//! What the driver does with the state machine's events: sessions
//! spawned and fed, streams' outbound channels parked and resumed, credit
//! passed back, and the partial-message budgets kept.

use super::*;

/// The machine's events: sessions spawned and fed, budgets kept.
impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    pub(super) fn drain_events(&mut self) {
        while let Some(event) = self.machine.poll_event() {
            self.on_event(event);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Open { stream } => self.open(stream),
            Event::Packet { stream, packet, credit, bytes, reserved } => {
                let reservation = if reserved { self.reservations.remove(&stream) } else { None };
                self.push(stream, Ok(packet), Held { credit, bytes, reservation });
            }
            Event::Failed { stream, error, credit, reserved } => {
                let reservation = self.reservations.remove(&stream).filter(|_| reserved);
                let status = Status::new(tonic::Code::from(error.grpc_code()), error.to_string());
                self.push(stream, Err(status), Held { credit, bytes: 0, reservation });
            }
            Event::End { stream } => self.forget_inbound(stream, None),
            Event::Cancel { stream, reason } => self.forget_inbound(stream, Some(&reason)),
            Event::Closed { stream } => {
                self.forget_inbound(stream, None);
                self.outbound.remove(&stream);
                self.parked.remove(&stream);
            }
            Event::WantBudget { stream, size } => {
                match Reservation::take(&self.conn_budget, &self.process_budget, size) {
                    Some(reservation) => self.grant(stream, reservation),
                    None => self.starve(stream),
                }
            }
            Event::Writable { stream } => {
                if let Some(rx) = self.parked.remove(&stream) {
                    self.outbound.insert(stream, rx);
                }
            }
            Event::Refused { stream, reason } => {
                self.ctx.metrics.frontend_error("http2_request");
                debug!(stream_id = stream, "refusing request: {}", untrusted(&reason));
            }
            Event::Reset { stream, reason } => debug!(stream_id = stream, "resetting stream: {}", untrusted(&reason)),
            Event::PeerGoAway => debug!("client sent GOAWAY"),
        }
    }

    /// A Proxy call: its session on a task of its own.
    fn open(&mut self, stream_id: u32) {
        let inbound = Arc::new(InboundShared {
            state: Mutex::new(InboundState::default()),
            conn: Arc::clone(&self.shared),
            stream_id,
        });
        let (tx, rx) = mpsc::channel(OUTBOUND_PACKETS);
        self.outbound.insert(stream_id, outbound(rx));
        self.inbound.insert(stream_id, Arc::clone(&inbound));
        tokio::spawn(session::run(Inbound { shared: inbound }, tx, self.ctx.clone()));
    }

    fn push(&mut self, stream: u32, item: Result<konnq_shared::proto::Packet, Status>, held: Held) {
        match self.inbound.get(&stream) {
            Some(inbound) => inbound.push(item, held),
            None => self.machine.release(stream, held.credit),
        }
    }

    /// The client's side of a stream is read no more: its session sees the
    /// end (or `CANCELLED`), and a reservation its partial message held
    /// goes back.
    fn forget_inbound(&mut self, stream: u32, cancel: Option<&str>) {
        if let Some(inbound) = self.inbound.remove(&stream) {
            match cancel {
                Some(why) => inbound.cancel(why),
                None => inbound.end(),
            }
        }
        self.reservations.remove(&stream);
    }

    pub(super) fn on_outbound(&mut self, id: u32, item: Option<Item>) {
        match item {
            Some(Ok(Out::Packet(packet))) => self.machine.send_packet(id, &packet),
            Some(Ok(Out::Data { connect_id, chunks })) => self.machine.send_data(id, connect_id, chunks),
            Some(Err(status)) => {
                let status = GrpcStatus::new(status.code() as i32, status.message());
                self.machine.finish(id, &status);
            }
            None => self.machine.finish(id, &GrpcStatus::new(GrpcStatus::OK, "")),
        }
        if self.machine.is_blocked(id) {
            if let Some(rx) = self.outbound.remove(&id) {
                self.parked.insert(id, rx);
            }
        }
        self.drain_events();
    }

    /// Credits back what sessions consumed.
    pub(super) fn send_credits(&mut self) {
        let consumed = std::mem::take(&mut *self.shared.consumed.lock().unwrap());
        for (id, n) in consumed {
            self.machine.release(id, n);
        }
        self.drain_events();
    }

    fn grant(&mut self, stream: u32, reservation: Reservation) {
        self.reservations.insert(stream, reservation);
        if !self.machine.grant_budget(stream) {
            self.reservations.remove(&stream);
        }
    }

    fn starve(&mut self, stream: u32) {
        if !self.starved.contains(&stream) {
            self.starved.push_back(stream);
            self.watch_budgets(true);
        }
    }

    /// A budget got bytes back: the waiting streams try again, oldest first.
    pub(super) fn retry_starved(&mut self) {
        for id in std::mem::take(&mut self.starved) {
            let Some(size) = self.machine.budget_wanted(id) else {
                continue;
            };
            match Reservation::take(&self.conn_budget, &self.process_budget, size) {
                Some(reservation) => self.grant(id, reservation),
                None => self.starved.push_back(id),
            }
        }
        if self.starved.is_empty() {
            self.watch_budgets(false);
        }
        self.drain_events();
    }

    /// What the oldest waiting stream needs from the budgets (0: it waits
    /// no more and only leaves `starved`).
    pub(super) fn starved_need(&self) -> Option<usize> {
        let id = self.starved.front()?;
        Some(self.machine.budget_wanted(*id).unwrap_or(0))
    }

    pub(super) fn watch_budgets(&self, watch: bool) {
        for budget in [&self.conn_budget, &self.process_budget] {
            if watch {
                budget.watch(&self.budget_waker);
            } else {
                budget.unwatch(&self.budget_waker);
            }
        }
    }
}
