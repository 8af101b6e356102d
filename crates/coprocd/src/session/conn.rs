//! The socket side of a session: reading frames, the request budgets,
//! writing replies and events with a timeout, the hello timeout, shutdown.

use super::{
    decode, err, mpsc, watch, Arc, AsFd, AsyncWriteExt, ClientFrame, Daemon, Duration, ErrorCode,
    Event, Identity, Interest, Receiver, Request, ServerFrame, Session, TransportError, UnixStream,
};

/// Why a session's connection is done with.
#[derive(Debug)]
struct Ended;

/// The socket side of a session: the stream and what bounds a write to it.
struct Conn {
    stream: UnixStream,
    /// A reply or event not taken by the client within this ends the session.
    write_timeout: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    /// Write one frame. A client that does not read within the write timeout,
    /// or a daemon shutting down, ends the session instead of waiting on it.
    async fn send(&mut self, frame: &ServerFrame) -> Result<(), Ended> {
        let bytes = coproc_proto::frame::encode_limited(frame, coproc_proto::frame::MAX_REPLY)
            .map_err(|_| Ended)?;
        let write = tokio::time::timeout(self.write_timeout, self.stream.write_all(&bytes));
        tokio::select! {
            r = write => match r {
                Ok(Ok(())) => Ok(()),
                _ => Err(Ended),
            },
            _ = self.shutdown.wait_for(|stop| *stop) => Err(Ended),
        }
    }

    /// Wait `d` (a session over its request budget), unless the daemon
    /// shuts down first.
    async fn pause(&mut self, d: Duration) -> Result<(), Ended> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            _ = self.shutdown.wait_for(|stop| *stop) => Err(Ended),
        }
    }
}

/// The budgets a session's requests spend: its own and its domain's.
struct Budgets<'a> {
    session: &'a mut coproc_core::ratelimit::Budget,
    domain: &'a crate::daemon::DomainBudget,
}

impl Budgets<'_> {
    /// Spend `cost` of both; how long to wait first (the longer debt).
    fn take(&mut self, cost: u32) -> Duration {
        let own = self.session.take(cost);
        let domain = self
            .domain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(cost);
        own.max(domain)
    }
}

/// What a request counts against its session's budget: requests that do
/// work on a runner count more than those answered from tables.
fn cost(req: &Request) -> u32 {
    match req {
        Request::LoadFirmware { .. }
        | Request::Map { .. }
        | Request::Unmap { .. }
        | Request::CreateQueue { .. }
        | Request::OpenVcoproc { .. }
        | Request::Start { .. }
        | Request::Stop { .. }
        | Request::Reset { .. }
        | Request::Destroy { .. }
        | Request::SchedSet { .. }
        | Request::VcoprocSet { .. }
        | Request::SetDemandFaults { .. }
        | Request::AllocLocal { .. }
        | Request::FreeLocal { .. }
        | Request::Revoke { .. } => crate::config::RUNNER_REQUEST_COST,
        _ => 1,
    }
}

/// Read from the socket into the receiver when it is readable.
async fn fill(stream: &UnixStream, rx: &mut Receiver) -> Result<usize, TransportError> {
    loop {
        stream.readable().await.map_err(|e| {
            TransportError::Io(
                rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
            )
        })?;
        let r = stream.try_io(Interest::READABLE, || match rx.fill(stream.as_fd()) {
            Err(TransportError::WouldBlock) => Err(std::io::ErrorKind::WouldBlock.into()),
            other => Ok(other),
        });
        match r {
            Ok(res) => return res,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {} // not ready: again
            Err(e) => {
                return Err(TransportError::Io(
                    rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
                ))
            }
        }
    }
}

/// Serve one connection until it closes, misbehaves beyond repair, or the
/// daemon shuts down. `slot` counts the connection against its uid's limit
/// until it ends.
pub async fn serve(
    daemon: Arc<Daemon>,
    stream: UnixStream,
    who: Identity,
    slot: crate::daemon::ConnectionSlot,
    shutdown: watch::Receiver<bool>,
) {
    let limits = &daemon.config.daemon;
    let hello_by = tokio::time::Instant::now() + Duration::from_millis(limits.hello_timeout_ms);
    let mut budget = coproc_core::ratelimit::Budget::new(limits.request_burst, limits.request_rate);
    let mut conn = Conn {
        stream,
        write_timeout: Duration::from_millis(limits.write_timeout_ms),
        shutdown,
    };
    let (mut s, mut wrx, mut nrx) = Session::open(daemon.clone(), who.clone());
    let id = s.id;
    let mut rx = Receiver::new();
    let mut budgets = Budgets {
        session: &mut budget,
        domain: &slot.budget,
    };
    let _ = session_loop(
        &mut s,
        &mut conn,
        &mut rx,
        &mut budgets,
        &mut wrx,
        &mut nrx,
        hello_by,
    )
    .await;
    // The connection's descriptor goes before the session is counted out:
    // whoever sees the session gone (`list-domains`) sees its socket
    // closed too.
    drop(conn);
    tokio::task::block_in_place(|| s.close());
    drop(slot);
    tracing::debug!(session = id, uid = who.uid, "connection closed");
}

/// The body of [`serve`]: returns when the session is over.
async fn session_loop(
    s: &mut Session,
    conn: &mut Conn,
    rx: &mut Receiver,
    budget: &mut Budgets<'_>,
    wrx: &mut mpsc::Receiver<u32>,
    nrx: &mut mpsc::Receiver<Event>,
    hello_by: tokio::time::Instant,
) -> Result<(), Ended> {
    let (id, uid) = (s.id, s.who.uid);
    loop {
        // Answer every complete frame already buffered.
        loop {
            let next = match rx.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    // Bad header: the stream cannot be resynchronised.
                    if let Some(sup) = s.log.check() {
                        tracing::info!(session = id, uid, error = %e, suppressed = sup, "closing session: bad frame");
                    }
                    let reply = ServerFrame::Reply {
                        id: 0,
                        result: Err(err(ErrorCode::BadRequest, e.to_string())),
                    };
                    let _ = conn.send(&reply).await;
                    return Err(Ended);
                }
            };
            if rx.dropped_fds > 0 {
                // Never act on a frame whose descriptors were cut short.
                break;
            }
            let (body, fds) = next;
            let (rid, result, close) = match decode::<ClientFrame>(&body) {
                Err(e) => (0, Err(err(ErrorCode::BadRequest, e.to_string())), false),
                Ok(ClientFrame { id: rid, req }) => {
                    let wait = budget.take(cost(&req));
                    if !wait.is_zero() {
                        conn.pause(wait).await?;
                    }
                    let hello = matches!(req, Request::Hello { .. });
                    let r = tokio::task::block_in_place(|| s.handle(req, fds));
                    let close = hello && r.is_err();
                    (rid, r, close)
                }
            };
            if let Err(e) = &result {
                if let Some(sup) = s.log.check() {
                    tracing::debug!(session = id, uid, error = %e, suppressed = sup, "request refused");
                }
            }
            conn.send(&ServerFrame::Reply { id: rid, result }).await?;
            if close {
                return Err(Ended);
            }
        }
        if rx.dropped_fds > 0 {
            let reply = ServerFrame::Reply {
                id: 0,
                result: Err(err(
                    ErrorCode::BadFd,
                    "too many file descriptors in one frame",
                )),
            };
            let _ = conn.send(&reply).await;
            return Err(Ended);
        }
        /// What woke the session up.
        enum Woken {
            Read,
            Vcoproc(u32),
            Notice(Event),
        }
        let greeted = s.greeted;
        let woken = tokio::select! {
            r = fill(&conn.stream, rx) => match r {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => Woken::Read,
            },
            Some(vid) = wrx.recv() => Woken::Vcoproc(vid),
            Some(event) = nrx.recv() => Woken::Notice(event),
            () = tokio::time::sleep_until(hello_by), if !greeted => {
                if let Some(sup) = s.log.check() {
                    tracing::info!(session = id, uid, suppressed = sup, "closing session: no hello in time");
                }
                return Err(Ended);
            }
            _ = conn.shutdown.wait_for(|stop| *stop) => return Err(Ended),
        };
        match woken {
            Woken::Read => {}
            Woken::Vcoproc(vid) => {
                let events = tokio::task::block_in_place(|| s.wake_events(vid));
                for event in events {
                    conn.send(&ServerFrame::Event { event }).await?;
                }
            }
            Woken::Notice(event) => conn.send(&ServerFrame::Event { event }).await?,
        }
    }
}
