//! The daemon's event stream for `watch`ing sessions (`coproc events`):
//! a vcoproc's creation and destruction, published where the daemon's
//! table gains or loses it; its state changes and faults, observed by
//! diffing the core's vcoprocs every [`crate::metrics::SAMPLE_EVERY`]
//! while someone watches (a vcoproc passing through several states
//! between two observations reports the latest); revokes, policy and
//! parameter changes, published by the sessions that make them. Each event names the domain it concerns: admins see all,
//! others their own domain's and the policy changes of pcoprocs their rule
//! allows. A watcher that falls behind loses the oldest events and is told
//! how many (`lagged`); nobody else waits for it.

use crate::daemon::Daemon;
use coproc_proto::{Event, Identity};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{broadcast, mpsc};

/// Events the stream holds for a watcher that has not taken them yet.
pub const BACKLOG: usize = 1024;

/// One event of the stream, with whom it concerns.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The domain (uid) whose vcoproc it concerns; none for a pcoproc-wide
    /// event (a policy change).
    pub owner: Option<u32>,
    /// The pcoproc.
    pub coproc: String,
    /// The event as sent.
    pub event: Event,
}

/// A vcoproc as the last observation saw it.
#[derive(Debug, Clone)]
struct Seen {
    coproc: String,
    domain: u32,
    firmware: String,
    state: String,
    faults: u64,
}

/// The stream.
#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Arc<Watched>>,
    /// The last observation; none while nobody watches.
    seen: Mutex<Option<HashMap<u32, Seen>>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BACKLOG).0,
            seen: Mutex::new(None),
        }
    }
}

/// A state as events name it: the states a running vcoproc flips between
/// many times a second are one.
fn coarse(state: &str) -> &str {
    match state {
        "runnable" | "running" | "waiting" => "running",
        s => s,
    }
}

impl Events {
    /// Send `w` to every watcher (nobody watching: nothing happens).
    pub fn publish(&self, w: Watched) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(w));
        }
    }

    /// A new watcher's end of the stream.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Watched>> {
        self.tx.subscribe()
    }

    /// A vcoproc was registered (`open-vcoproc`): publish `created`, unless
    /// an observation saw it first (it then reported its changes from
    /// `created`).
    pub fn created(&self, id: u32, coproc: &str, domain: u32) {
        let mut g = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(seen) = g.as_mut() else { return };
        if seen.contains_key(&id) {
            return;
        }
        let s = Seen::new(coproc, domain);
        self.publish(s.event(id, "created", None));
        seen.insert(id, s);
    }

    /// A vcoproc left the daemon's table (destroyed by a request, its
    /// session's end or shutdown): publish `destroyed` with the last state
    /// observed.
    pub fn destroyed(&self, id: u32, coproc: &str, domain: u32) {
        let mut g = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(seen) = g.as_mut() else { return };
        let before = seen
            .remove(&id)
            .unwrap_or_else(|| Seen::new(coproc, domain));
        self.publish(before.event(id, "destroyed", Some(&before.state)));
    }

    /// Observe every vcoproc in the daemon's table and publish what
    /// changed since the last observation (a vcoproc not seen before
    /// changes from `created`). The first observation after nobody watched
    /// only records. Holds the stream's lock throughout, so that a
    /// `destroyed` published meanwhile comes after what this observed.
    pub fn observe(&self, daemon: &Daemon) {
        let mut g = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if self.tx.receiver_count() == 0 {
            *g = None;
            return;
        }
        // The table first: a vcoproc it no longer holds is going (its
        // `destroyed` is published by whoever took it).
        let listed: std::collections::HashSet<u32> =
            daemon.tables().vcoprocs.keys().copied().collect();
        let mut now = HashMap::new();
        let mut faults = HashMap::new();
        for (name, pc) in &daemon.pcoprocs {
            for info in pc.vcoprocs() {
                let id = info.id.0;
                if !listed.contains(&id) {
                    continue;
                }
                now.insert(
                    id,
                    Seen {
                        coproc: name.clone(),
                        domain: info.domain.0,
                        firmware: info.firmware.clone(),
                        state: coarse(&info.state.to_string()).to_string(),
                        faults: info.stats.faults,
                    },
                );
                if let Some(f) = info.last_fault {
                    faults.insert(id, f);
                }
            }
        }
        let Some(old) = g.replace(now.clone()) else {
            return;
        };
        let mut ids: Vec<u32> = now.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let a = &now[&id];
            let b = old
                .get(&id)
                .cloned()
                .unwrap_or_else(|| Seen::new(&a.coproc, a.domain));
            if a.faults > b.faults {
                if let Some(f) = faults.get(&id) {
                    self.publish(Watched {
                        owner: Some(a.domain),
                        coproc: a.coproc.clone(),
                        event: Event::Fault {
                            fault: crate::session::fault_info(&a.coproc, a.domain, id, f),
                        },
                    });
                }
            }
            if a.state != b.state {
                self.publish(a.event(id, &a.state, Some(&b.state)));
            }
        }
    }
}

impl Seen {
    /// A vcoproc just created.
    fn new(coproc: &str, domain: u32) -> Seen {
        Seen {
            coproc: coproc.to_string(),
            domain,
            firmware: String::new(),
            state: "created".into(),
            faults: 0,
        }
    }

    /// Its state event.
    fn event(&self, id: u32, state: &str, previous: Option<&str>) -> Watched {
        Watched {
            owner: Some(self.domain),
            coproc: self.coproc.clone(),
            event: Event::VcoprocState {
                vcoproc: id,
                coproc: self.coproc.clone(),
                domain: self.domain,
                firmware: self.firmware.clone(),
                state: state.to_string(),
                previous: previous.map(str::to_string),
            },
        }
    }
}

/// Whether `who` may see `w`.
pub fn visible(daemon: &Daemon, who: &Identity, w: &Watched) -> bool {
    if who.admin {
        return true;
    }
    match w.owner {
        Some(uid) => uid == who.domain,
        None => daemon.may_use(who, &w.coproc).is_ok(),
    }
}

/// Pass the events `who` may see from `rx` to its session's queue `tx`
/// until the session ends; a watcher that lags is told how many events it
/// lost.
pub async fn forward(
    daemon: Arc<Daemon>,
    who: Identity,
    mut rx: broadcast::Receiver<Arc<Watched>>,
    tx: mpsc::Sender<Event>,
) {
    loop {
        let event = tokio::select! {
            r = rx.recv() => match r {
                Ok(w) if visible(&daemon, &who, &w) => w.event.clone(),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => Event::Lagged { missed },
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tx.closed() => return,
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_states_are_one() {
        assert_eq!(coarse("waiting"), "running");
        assert_eq!(coarse("runnable"), "running");
        assert_eq!(coarse("faulted"), "faulted");
        assert_eq!(coarse("loaded"), "loaded");
    }
}
