//! Listings: pcoprocs, vcoprocs, domains, faults; and `watch`, the event
//! stream.

use super::{fault_info, info, Answer, CoprocInfo, DomainInfo, Entry, Session, WireError};

// Every request handler has the same signature, listings included.
#[allow(clippy::unnecessary_wraps)]
impl Session {
    /// `list-coprocs`.
    pub(super) fn list_coprocs(&mut self) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        let mut out = Vec::new();
        for (name, pc) in &d.pcoprocs {
            if d.may_use(&self.who, name).is_err() {
                continue;
            }
            let caps = pc.capabilities();
            let (busy, _) = pc.busy();
            let util = |secs| {
                d.busy
                    .utilisation_pct(name, busy, std::time::Duration::from_secs(secs))
            };
            out.push(CoprocInfo {
                name: name.clone(),
                class: caps.class.to_string(),
                model: caps.model.clone(),
                policy: pc.sched_info().policy,
                vcoprocs: u32::try_from(pc.vcoprocs().len()).unwrap_or(u32::MAX),
                utilisation_pct: util(10),
                utilisation_1s_pct: util(1),
                utilisation_10s_pct: util(10),
                busy_ns: busy,
                iova_base: caps.iova_base,
                iova_size: caps.iova_size,
                memory_bytes: caps.memory_bytes,
                limits: caps.limits.clone(),
                features: caps.features.clone(),
                state: match pc.failed() {
                    Some(_) => "failed".into(),
                    None => "running".into(),
                },
                failure: pc.failed(),
            });
        }
        Ok(Answer::Coprocs { coprocs: out })
    }

    /// `list-vcoprocs`.
    pub(super) fn list_vcoprocs(
        &mut self,
        domain: Option<u32>,
        coproc: Option<String>,
    ) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        let entries: Vec<(u32, Entry)> = d
            .tables()
            .vcoprocs
            .iter()
            .map(|(&id, e)| (id, e.clone()))
            .collect();
        let mut out = Vec::new();
        for (id, e) in entries {
            let visible = self.who.admin || e.domain == self.who.domain;
            let wanted = domain.is_none_or(|u| u == e.domain)
                && coproc.as_ref().is_none_or(|c| *c == e.coproc);
            if visible && wanted {
                if let Ok(i) = info(id, &e) {
                    out.push(i);
                }
            }
        }
        out.sort_by_key(|i| i.id);
        Ok(Answer::Vcoprocs { vcoprocs: out })
    }

    /// `list-domains`.
    pub(super) fn list_domains(&mut self) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        let t = d.tables();
        let mut out: Vec<DomainInfo> = t
            .usage
            .iter()
            .filter(|(&domain, _)| self.who.admin || domain == self.who.domain)
            .map(|(&domain, u)| DomainInfo {
                uid: d.uid_of(domain),
                domain,
                container: d.container_of(domain),
                sessions: u.sessions,
                vcoprocs: u.vcoprocs,
                mapped_bytes: u.mapped_bytes,
                mappings: u.mappings,
            })
            .collect();
        out.sort_by_key(|x| x.domain);
        Ok(Answer::Domains { domains: out })
    }

    /// `list-faults`.
    pub(super) fn list_faults(&mut self) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        // Each pcoproc's fault logs (one per domain) outlive the
        // vcoprocs they name; a record carries its vcoproc's id,
        // which is its wire id, and its domain.
        let mut out = Vec::new();
        for (name, pc) in &d.pcoprocs {
            for f in pc.faults() {
                let uid = f.domain.0;
                if self.who.admin || uid == self.who.domain {
                    out.push(fault_info(name, uid, f.vcoproc.0, &f));
                }
            }
        }
        Ok(Answer::Faults { faults: out })
    }

    /// `watch`: the daemon's event stream to this session from now on
    /// (again: nothing changes).
    pub(super) fn watch(&mut self) -> Result<Answer, WireError> {
        if self.watching {
            return Ok(Answer::Done);
        }
        let internal = |m: &str| WireError::new(coproc_proto::ErrorCode::Internal, m);
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| internal("no event stream in this daemon"))?;
        let tx = self
            .daemon
            .notice_sender(self.id)
            .ok_or_else(|| internal("the session is ending"))?;
        let rx = self.daemon.events.subscribe();
        // The baseline the stream's state changes are measured from: what
        // changes after this answer is reported.
        self.daemon.events.observe(&self.daemon);
        rt.spawn(crate::events::forward(
            self.daemon.clone(),
            self.who.clone(),
            rx,
            tx,
        ));
        self.watching = true;
        Ok(Answer::Done)
    }
}
