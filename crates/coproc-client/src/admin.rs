//! Listings and scheduling: pcoprocs, vcoprocs, domains, faults, policies
//! and parameters.

use crate::Answer;
use crate::Client;
use crate::ClientError;
use crate::CoprocInfo;
use crate::DomainInfo;
use crate::FaultInfo;
use crate::ParamChange;
use crate::Request;
use crate::SchedInfo;
use crate::VcoprocInfo;
use std::time::Duration;

impl Client {
    /// Pcoprocs this domain may use.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let names: Vec<String> = c.list_coprocs()?.into_iter().map(|p| p.name).collect();
    /// assert!(!names.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn list_coprocs(&mut self) -> Result<Vec<CoprocInfo>, ClientError> {
        answer!(self.call(Request::ListCoprocs, &[])?, Answer::Coprocs { coprocs } => coprocs)
    }

    /// Vcoprocs visible to this session, filtered.
    pub fn list_vcoprocs(
        &mut self,
        domain: Option<u32>,
        coproc: Option<&str>,
    ) -> Result<Vec<VcoprocInfo>, ClientError> {
        answer!(self.call(
            Request::ListVcoprocs {
                domain,
                coproc: coproc.map(String::from),
            },
            &[],
        )?, Answer::Vcoprocs { vcoprocs } => vcoprocs)
    }

    /// Domains visible to this session.
    pub fn list_domains(&mut self) -> Result<Vec<DomainInfo>, ClientError> {
        answer!(self.call(Request::ListDomains, &[])?, Answer::Domains { domains } => domains)
    }

    /// Faults visible to this session.
    pub fn list_faults(&mut self) -> Result<Vec<FaultInfo>, ClientError> {
        answer!(self.call(Request::ListFaults, &[])?, Answer::Faults { faults } => faults)
    }

    /// A pcoproc's scheduler.
    pub fn sched_get(&mut self, coproc: &str) -> Result<SchedInfo, ClientError> {
        answer!(self.call(
            Request::SchedGet {
                coproc: coproc.into(),
            },
            &[],
        )?, Answer::Sched { sched } => sched)
    }

    /// Change a pcoproc's policy (admin).
    pub fn sched_set(
        &mut self,
        coproc: &str,
        policy: &str,
        params: &[(String, String)],
    ) -> Result<(), ClientError> {
        self.done(Request::SchedSet {
            coproc: coproc.into(),
            policy: policy.into(),
            params: params.to_vec(),
        })
    }

    /// Change a vcoproc's scheduling parameters (admin); effective at the
    /// scheduler's next decision.
    pub fn vcoproc_set(&mut self, vcoproc: u32, set: ParamChange) -> Result<(), ClientError> {
        self.done(Request::VcoprocSet { vcoproc, set })
    }

    /// Turn demand faults on (`Some(stall timeout)`) or off (`None`) for
    /// one of this session's vcoprocs. Stalls arrive as
    /// [`Event::PageFault`](crate::Event::PageFault) through [`Client::next_event`] (subscribe
    /// first); answer with [`Client::map`] of a range covering the address.
    pub fn set_demand_faults(
        &mut self,
        vcoproc: u32,
        timeout: Option<Duration>,
    ) -> Result<(), ClientError> {
        let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        self.done(Request::SetDemandFaults {
            vcoproc,
            timeout_ms,
        })
    }
}
