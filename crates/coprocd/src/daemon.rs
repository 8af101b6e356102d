//! The daemon's shared state: pcoprocs, the table of vcoprocs by wire id,
//! and per-domain usage for quotas.

use crate::config::{Config, DeviceConfig, DomainRule};
use coproc_core::{Pcoproc, VcoprocHandle};
use coproc_proto::{ErrorCode, Identity, WireError};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A vcoproc as the daemon tracks it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Pcoproc name.
    pub coproc: String,
    /// The core's handle.
    pub handle: VcoprocHandle,
    /// Owner: its domain's number (the uid outside containers; see
    /// [`crate::identity::Registry`]).
    pub domain: u32,
    /// Session that created it (it dies with the session).
    pub session: u64,
    /// Mappings and device-local memory (alloc-local): iova → bytes. Both
    /// count against the domain's mapped-bytes and mappings quotas; their
    /// iova ranges never overlap, so one map holds both.
    pub mapped: BTreeMap<u64, u64>,
    /// Queues it has.
    pub queues: u32,
    /// What its creating session attached to it (listener, completion
    /// eventfds and their writer thread), detached by whoever removes the
    /// entry: the creator, another session of the domain, an admin, or
    /// shutdown.
    pub attachment: Option<Arc<dyn Attachment>>,
}

/// Something a session attached to a vcoproc that must go when the vcoproc
/// goes, whichever session destroys it.
pub trait Attachment: Send + Sync + std::fmt::Debug {
    /// Release it: threads end, descriptors close. Idempotent.
    fn detach(&self);
}

impl Entry {
    /// Stop the vcoproc's listener and release what its session attached.
    fn detach(&self) {
        if let Some(a) = &self.attachment {
            self.handle.control().set_listener(None);
            a.detach();
        }
    }
}

/// A quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Vcoprocs at once.
    Vcoprocs,
    /// Bytes mapped.
    Bytes,
    /// Queues.
    Queues,
    /// Mappings at once.
    Mappings,
}

/// What a domain uses now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Open sessions.
    pub sessions: u32,
    /// Vcoprocs.
    pub vcoprocs: u32,
    /// Bytes mapped.
    pub mapped_bytes: u64,
    /// Queues.
    pub queues: u32,
    /// Mappings.
    pub mappings: u32,
}

/// Events from other sessions queued for one session at most.
pub const NOTICES: usize = 256;

/// A quota count as the usage table holds it (counts never come near
/// `u32::MAX`; one that did would saturate, not wrap).
fn count(amount: u64) -> u32 {
    u32::try_from(amount).unwrap_or(u32::MAX)
}

/// The daemon's tables: vcoprocs by wire id and what each domain uses.
#[derive(Debug, Default)]
pub struct Tables {
    /// Vcoprocs by wire id.
    pub vcoprocs: HashMap<u32, Entry>,
    /// Usage by domain number.
    pub usage: HashMap<u32, Usage>,
}

/// The daemon.
#[derive(Debug)]
pub struct Daemon {
    /// Configuration it started with.
    pub config: Config,
    /// Pcoprocs by name.
    pub pcoprocs: BTreeMap<String, Arc<Pcoproc>>,
    tables: Mutex<Tables>,
    next_session: AtomicU64,
    /// Log limits per domain: lines a domain triggers are rate-limited
    /// across all its sessions.
    logs: Mutex<HashMap<u32, Arc<coproc_core::ratelimit::RateLimit>>>,
    /// Events for a session that another session causes (an admin's
    /// revoke), by session id.
    notices: Mutex<HashMap<u64, tokio::sync::mpsc::Sender<coproc_proto::Event>>>,
    /// Open connections by uid, with the uid's request budget, shared by
    /// its sessions (see [`Daemon::admit`]).
    connections: Mutex<HashMap<u32, (u32, DomainBudget)>>,
    /// Busy-time samples of the pcoprocs (utilisation over 1 s and 10 s).
    pub busy: crate::metrics::BusyWindows,
    /// How long the revokes that removed a mapping took.
    pub revoke_latency: Mutex<coproc_core::stats::Histogram>,
    /// The event stream of `watch`ing sessions.
    pub events: crate::events::Events,
    /// Domain numbers of (uid, container) pairs.
    registry: Mutex<crate::identity::Registry>,
    /// The container the daemon itself runs in, if any: its peers there
    /// are where it is, not in a container (a daemon and its clients in
    /// one container, as in a containerised CI).
    own_container: Option<String>,
}

/// `uid N` or `uid N in container C`, for messages.
pub fn describe(who: &Identity) -> String {
    match &who.container {
        Some(c) => format!("uid {} in container {c}", who.uid),
        None => format!("uid {}", who.uid),
    }
}

/// A domain's request budget, which all its sessions spend.
pub type DomainBudget = Arc<Mutex<coproc_core::ratelimit::Budget>>;

/// A connection counted against its domain's limit; given back on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    daemon: Arc<Daemon>,
    domain: u32,
    /// The domain's request budget (every session of the uid spends it,
    /// besides its own).
    pub budget: DomainBudget,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self
            .daemon
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((n, _)) = c.get_mut(&self.domain) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.domain);
            }
        }
    }
}

impl Daemon {
    /// Start every configured pcoproc.
    pub fn start(config: Config) -> anyhow::Result<Daemon> {
        crate::trim::start();
        let mut pcoprocs = BTreeMap::new();
        // One id space for every pcoproc: a vcoproc's wire id is its core id.
        let ids = Arc::new(AtomicU32::new(1));
        for p in &config.pcoprocs {
            let policy = coproc_core::policy::build(&p.policy, &p.params())
                .map_err(|e| anyhow::anyhow!("pcoproc {}: {e}", p.name))?;
            let device = p.device().map_err(|e| anyhow::anyhow!("{e}"))?;
            let pc = match device {
                #[cfg(feature = "mcu")]
                DeviceConfig::Mcu(mcu) => {
                    Pcoproc::spawn_with_ids(&p.name, coproc_mcu::factory(mcu), policy, ids.clone())
                        .map_err(|e| anyhow::anyhow!("pcoproc {} (class mcu): {e}", p.name))?
                }
                #[cfg(feature = "vulkan")]
                DeviceConfig::Vulkan(vk) => {
                    let selector = match &vk.selector {
                        coproc_vulkan::Selector::Auto => "\"auto\"".to_string(),
                        coproc_vulkan::Selector::Index(i) => i.to_string(),
                        coproc_vulkan::Selector::Name(n) => format!("{n:?}"),
                    };
                    let pc = Pcoproc::spawn_with_ids(
                        &p.name,
                        coproc_vulkan::factory(vk),
                        policy,
                        ids.clone(),
                    )
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "pcoproc {} (class vulkan): cannot open a Vulkan device \
                             (device = {selector}): {e}; check `vulkaninfo --summary`, \
                             or remove the pcoproc from the configuration",
                            p.name
                        )
                    })?;
                    tracing::info!(pcoproc = %p.name, model = %pc.capabilities().model, "vulkan device opened");
                    pc
                }
            };
            pcoprocs.insert(p.name.clone(), pc);
        }
        let own_container = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| {
                let (_, path) = crate::identity::cgroup_of(&t);
                crate::identity::container_of(&path, config.container_patterns())
            });
        if let Some(c) = &own_container {
            tracing::info!(container = %c, "coprocd runs in a container: its peers in it are not in a container to it");
        }
        Ok(Daemon {
            pcoprocs,
            tables: Mutex::new(Tables::default()),
            next_session: AtomicU64::new(1),
            logs: Mutex::new(HashMap::new()),
            notices: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            busy: crate::metrics::BusyWindows::default(),
            revoke_latency: Mutex::new(coproc_core::stats::Histogram::default()),
            events: crate::events::Events::default(),
            registry: Mutex::new(crate::identity::Registry::default()),
            own_container,
            config,
        })
    }

    /// Who a peer is: its domain (number and container) and whether it is
    /// an administrator. Admins are uid 0 and members of `admin_gid`;
    /// inside a container only where its rule says `admin = true`.
    pub fn identity(&self, peer: &crate::identity::Peer) -> Result<Identity, WireError> {
        let admin_gid = self.config.daemon.admin_gid;
        let by_uid =
            peer.uid == 0 || admin_gid.is_some_and(|g| peer.gid == g || peer.groups.contains(&g));
        // A container's cgroup must be root's: one in a subtree delegated to
        // a user is that user's, who could make any number of them (and
        // so of domains and quotas).
        let container = match crate::identity::container_of(
            &peer.cgroup,
            self.config.container_patterns(),
        ) {
            // Where the daemon itself is: not a container to it.
            Some(c) if Some(&c) == self.own_container.as_ref() => None,
            Some(c) => match crate::identity::cgroup_owner(&peer.hierarchy, &c) {
                Ok(0) => Some(c),
                Ok(owner) => {
                    tracing::debug!(uid = peer.uid, cgroup = %c, owner, "a user's cgroup is no container");
                    None
                }
                Err(e) => return Err(WireError::new(ErrorCode::PermissionDenied, e.to_string())),
            },
            None => None,
        };
        let admin = by_uid
            && container.as_deref().is_none_or(|c| {
                self.config
                    .rule_for(peer.uid, Some(c))
                    .is_some_and(|r| r.admin && r.cgroup.is_some())
            });
        let domain = {
            // Which numbers are in use, gathered only when the registry
            // must forget some (and before its lock: listings take the
            // tables, then the registry).
            let full = self.registry().full();
            let live: Option<std::collections::HashSet<u32>> = full.then(|| {
                let mut l: std::collections::HashSet<u32> =
                    self.tables().usage.keys().copied().collect();
                l.extend(
                    self.connections
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .keys()
                        .copied(),
                );
                l
            });
            self.registry()
                .number(peer.uid, container.as_deref(), live.as_ref())
                .map_err(|e| WireError::new(ErrorCode::PermissionDenied, e.to_string()))?
        };
        Ok(Identity {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
            admin,
            domain,
            container,
        })
    }

    /// The registry of domain numbers. Taken after the tables where both
    /// are held, never before.
    fn registry(&self) -> MutexGuard<'_, crate::identity::Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The container of domain `domain`, if it is a container's.
    pub fn container_of(&self, domain: u32) -> Option<String> {
        self.registry().container(domain).map(str::to_string)
    }

    /// The uid of domain `domain`.
    pub fn uid_of(&self, domain: u32) -> u32 {
        self.registry().uid(domain)
    }

    /// Count a new connection of `who` against its domain's limit
    /// (`max_connections_per_uid`; administrators are not limited).
    pub fn admit(self: &Arc<Daemon>, who: &Identity) -> Result<ConnectionSlot, WireError> {
        let d = &self.config.daemon;
        let mut c = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (n, budget) = c.entry(who.domain).or_insert_with(|| {
            let b =
                coproc_core::ratelimit::Budget::new(d.domain_request_burst, d.domain_request_rate);
            (0, Arc::new(Mutex::new(b)))
        });
        if *n >= d.max_connections_per_uid && !who.admin {
            return Err(WireError::new(
                ErrorCode::Quota,
                format!("{} has {n} connections open, its limit", describe(who)),
            ));
        }
        *n += 1;
        Ok(ConnectionSlot {
            daemon: self.clone(),
            domain: who.domain,
            budget: budget.clone(),
        })
    }

    /// The log rate limit of domain `uid` (a domain number).
    pub fn log_limit(&self, uid: u32) -> Arc<coproc_core::ratelimit::RateLimit> {
        let mut l = self
            .logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.len() > 4096 {
            l.retain(|_, r| Arc::strong_count(r) > 1);
        }
        l.entry(uid).or_default().clone()
    }

    /// Lock the tables.
    pub fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session id; counts the session for its domain.
    pub fn open_session(&self, uid: u32) -> u64 {
        self.tables().usage.entry(uid).or_default().sessions += 1;
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// A session ended: destroy everything it created.
    pub fn close_session(&self, uid: u32, session: u64) {
        let doomed: Vec<(u32, Entry)> = {
            let mut t = self.tables();
            if let Some(u) = t.usage.get_mut(&uid) {
                u.sessions = u.sessions.saturating_sub(1);
            }
            let ids: Vec<u32> = t
                .vcoprocs
                .iter()
                .filter(|(_, e)| e.session == session)
                .map(|(&id, _)| id)
                .collect();
            ids.into_iter()
                .filter_map(|id| t.vcoprocs.remove(&id).map(|e| (id, e)))
                .collect()
        };
        for (id, e) in doomed {
            self.events.destroyed(id, &e.coproc, e.domain);
            e.detach();
            let _ = e.handle.destroy();
            self.release(&e);
        }
        let mut t = self.tables();
        if t.usage
            .get(&uid)
            .is_some_and(|u| u.sessions == 0 && u.vcoprocs == 0)
        {
            t.usage.remove(&uid);
        }
        drop(t);
        crate::trim::released();
    }

    /// Take vcoproc `id` out of the table (a destroy): what its session
    /// attached is released at once, whichever session asks. The caller
    /// destroys it in the core and [`Daemon::release`]s its quota.
    pub fn take(&self, id: u32) -> Option<Entry> {
        let e = self.tables().vcoprocs.remove(&id)?;
        e.detach();
        self.events.destroyed(id, &e.coproc, e.domain);
        Some(e)
    }

    /// Record what the creating session attached to vcoproc `id`; false
    /// when it is gone already (the caller releases it then).
    pub fn attach(&self, id: u32, a: Arc<dyn Attachment>) -> bool {
        match self.tables().vcoprocs.get_mut(&id) {
            Some(e) => {
                e.attachment = Some(a);
                true
            }
            None => false,
        }
    }

    /// Give back what an entry counted against its domain.
    pub fn release(&self, e: &Entry) {
        let mut t = self.tables();
        if let Some(u) = t.usage.get_mut(&e.domain) {
            u.vcoprocs = u.vcoprocs.saturating_sub(1);
            u.mapped_bytes = u.mapped_bytes.saturating_sub(e.mapped.values().sum());
            u.queues = u.queues.saturating_sub(e.queues);
            u.mappings = u.mappings.saturating_sub(count(e.mapped.len() as u64));
        }
    }

    /// The rule for a domain; admins without a rule may use everything.
    pub fn rule(&self, who: &Identity) -> Result<DomainRule, WireError> {
        match self.config.rule_for(who.uid, who.container.as_deref()) {
            Some(r) => Ok(r.clone()),
            None if who.admin => Ok(DomainRule {
                uids: crate::config::Uids::List(vec![who.uid]),
                cgroup: None,
                admin: false,
                pcoprocs: self.pcoprocs.keys().cloned().collect(),
                max_vcoprocs: u32::MAX,
                max_mapped_bytes: u64::MAX,
                max_queues: u32::MAX,
                max_mappings: u32::MAX,
            }),
            None => Err(WireError::new(
                ErrorCode::PermissionDenied,
                format!("{} may not use coprocd", describe(who)),
            )),
        }
    }

    /// Count a revoke that removed a mapping and took `took`.
    pub fn observe_revoke(&self, took: std::time::Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.revoke_latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(ns);
    }

    /// Whether `who` may use pcoproc `name`.
    pub fn may_use(&self, who: &Identity, name: &str) -> Result<Arc<Pcoproc>, WireError> {
        let pc =
            self.pcoprocs.get(name).cloned().ok_or_else(|| {
                WireError::new(ErrorCode::NotFound, format!("no pcoproc {name:?}"))
            })?;
        if who.admin || self.rule(who)?.pcoprocs.iter().any(|p| p == name) {
            Ok(pc)
        } else {
            Err(WireError::new(
                ErrorCode::NotFound,
                format!("no pcoproc {name:?}"),
            ))
        }
    }

    /// Check a quota and take `amount` of it, in one step (two sessions of
    /// a domain cannot both pass the check for the last unit).
    pub fn reserve(&self, uid: u32, what: Quota, amount: u64, limit: u64) -> Result<(), WireError> {
        let mut t = self.tables();
        let u = t.usage.entry(uid).or_default();
        let (used, name) = match what {
            Quota::Vcoprocs => (u64::from(u.vcoprocs), "vcoprocs"),
            Quota::Bytes => (u.mapped_bytes, "mapped bytes"),
            Quota::Queues => (u64::from(u.queues), "queues"),
            Quota::Mappings => (u64::from(u.mappings), "mappings"),
        };
        if used.saturating_add(amount) > limit {
            return Err(WireError::new(
                ErrorCode::Quota,
                format!(
                    "domain uses {used} {name}; {amount} more would exceed its quota of {limit}"
                ),
            ));
        }
        match what {
            Quota::Vcoprocs => u.vcoprocs = u.vcoprocs.saturating_add(count(amount)),
            Quota::Bytes => u.mapped_bytes += amount,
            Quota::Queues => u.queues = u.queues.saturating_add(count(amount)),
            Quota::Mappings => u.mappings = u.mappings.saturating_add(count(amount)),
        }
        Ok(())
    }

    /// Give back a reservation.
    pub fn unreserve(&self, uid: u32, what: Quota, amount: u64) {
        let mut t = self.tables();
        if let Some(u) = t.usage.get_mut(&uid) {
            match what {
                Quota::Vcoprocs => u.vcoprocs = u.vcoprocs.saturating_sub(count(amount)),
                Quota::Bytes => u.mapped_bytes = u.mapped_bytes.saturating_sub(amount),
                Quota::Queues => u.queues = u.queues.saturating_sub(count(amount)),
                Quota::Mappings => u.mappings = u.mappings.saturating_sub(count(amount)),
            }
        }
    }

    /// Register a new vcoproc (its quota already reserved); returns its wire
    /// id, which is its core id (unique across the daemon's pcoprocs).
    pub fn register(&self, e: Entry) -> u32 {
        let id = e.handle.id().0;
        let (coproc, uid) = (e.coproc.clone(), e.domain);
        self.tables().vcoprocs.insert(id, e);
        self.events.created(id, &coproc, uid);
        id
    }

    /// Where events caused by other sessions reach session `session`
    /// (`None`: it ended).
    pub fn set_notices(
        &self,
        session: u64,
        tx: Option<tokio::sync::mpsc::Sender<coproc_proto::Event>>,
    ) {
        let mut n = self
            .notices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match tx {
            Some(tx) => n.insert(session, tx),
            None => n.remove(&session),
        };
    }

    /// The queue of events for session `session`, if it still exists.
    pub fn notice_sender(
        &self,
        session: u64,
    ) -> Option<tokio::sync::mpsc::Sender<coproc_proto::Event>> {
        self.notices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&session)
            .cloned()
    }

    /// Send `event` to session `session`, if it still exists; dropped if
    /// the session does not keep up (its queue holds [`NOTICES`]).
    pub fn notice(&self, session: u64, event: coproc_proto::Event) {
        let n = self
            .notices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = n.get(&session) {
            if tx.try_send(event).is_err() {
                tracing::debug!(session, "event for a session dropped: its queue is full");
            }
        }
    }

    /// Stop every pcoproc.
    pub fn shutdown(&self) {
        let all: Vec<Entry> = self.tables().vcoprocs.drain().map(|(_, e)| e).collect();
        for e in all {
            e.detach();
            let _ = e.handle.destroy();
        }
        for p in self.pcoprocs.values() {
            p.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn daemon() -> Daemon {
        // No pcoprocs: only the quota tables are exercised.
        Daemon::start(Config::parse("").unwrap()).unwrap()
    }

    proptest! {
        /// Random reservations and returns of mappings and bytes by two
        /// domains: a reservation succeeds exactly when the model says it
        /// fits, usage never exceeds the caps, and returns give back exactly.
        #[test]
        fn quota_caps_hold(ops in proptest::collection::vec((0u32..2, any::<bool>(), any::<bool>(), 1u64..5000), 1..300)) {
            let d = daemon();
            let (max_maps, max_bytes) = (8u64, 20_000u64);
            // Per uid: the reservations held (mappings: 1 each; bytes: amount).
            let mut held: [Vec<(bool, u64)>; 2] = [vec![], vec![]];
            for (uid, bytes, take, amount) in ops {
                let h = &mut held[uid as usize];
                let (what, amount, limit) = if bytes {
                    (Quota::Bytes, amount, max_bytes)
                } else {
                    (Quota::Mappings, 1, max_maps)
                };
                if take {
                    let used: u64 = h.iter().filter(|x| x.0 == bytes).map(|x| x.1).sum();
                    let ok = d.reserve(uid, what, amount, limit).is_ok();
                    prop_assert_eq!(ok, used + amount <= limit);
                    if ok {
                        h.push((bytes, amount));
                    }
                } else if let Some(i) = h.iter().position(|x| x.0 == bytes) {
                    let (_, a) = h.remove(i);
                    d.unreserve(uid, what, a);
                }
                let t = d.tables();
                for (u, h) in held.iter().enumerate() {
                    let usage = t.usage.get(&count(u as u64)).copied().unwrap_or_default();
                    let maps = h.iter().filter(|x| !x.0).count() as u64;
                    let b: u64 = h.iter().filter(|x| x.0).map(|x| x.1).sum();
                    prop_assert_eq!(u64::from(usage.mappings), maps);
                    prop_assert_eq!(usage.mapped_bytes, b);
                    prop_assert!(maps <= max_maps && b <= max_bytes);
                }
            }
        }
    }
}
