//! Scheduling requests: a pcoproc's policy and a vcoproc's parameters.

use super::{
    core_err, err, Answer, Duration, ErrorCode, HashMap, ParamChange, SchedInfo, SchedParams,
    Session, WireError,
};

/// Apply a `vcoproc-set` change to `p`.
fn apply_change(p: &mut SchedParams, set: &ParamChange) -> Result<(), WireError> {
    if let Some(w) = set.weight {
        p.weight = w;
    }
    if let Some(c) = set.cap_pct {
        p.cap_pct = (c != 0).then_some(c);
    }
    if let Some(pr) = set.priority {
        p.priority = pr;
    }
    match (set.budget_us, set.period_us) {
        (None, None) => {}
        (Some(0), _) => p.reservation = None,
        (Some(b), Some(per)) => {
            p.reservation = Some((Duration::from_micros(b), Duration::from_micros(per)));
        }
        (Some(b), None) => match p.reservation {
            Some((_, per)) => p.reservation = Some((Duration::from_micros(b), per)),
            None => {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    "a new reservation needs both budget and period",
                ))
            }
        },
        (None, Some(per)) => match p.reservation {
            Some((b, _)) => p.reservation = Some((b, Duration::from_micros(per))),
            None => {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    "a new reservation needs both budget and period",
                ))
            }
        },
    }
    Ok(())
}

impl Session {
    /// `sched-get`.
    pub(super) fn sched_get(&mut self, coproc: String) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        let pc = d.may_use(&self.who, &coproc)?;
        let s = pc.sched_info();
        let local_to_wire: HashMap<u32, u32> = d
            .tables()
            .vcoprocs
            .iter()
            .filter(|(_, e)| e.coproc == coproc && (self.who.admin || e.domain == self.who.domain))
            .map(|(&id, e)| (e.handle.id().0, id))
            .collect();
        let standings = s
            .standings
            .into_iter()
            .filter_map(|st| {
                local_to_wire
                    .get(&st.vcoproc.0)
                    .map(|&id| (id, st.queued, st.figures))
            })
            .collect();
        Ok(Answer::Sched {
            sched: SchedInfo {
                coproc,
                policy: s.policy,
                params: s.params,
                standings,
            },
        })
    }

    /// `sched-set`.
    pub(super) fn sched_set(
        &mut self,
        coproc: String,
        policy: String,
        params: Vec<(String, String)>,
    ) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        if !self.who.admin {
            return Err(err(
                ErrorCode::PermissionDenied,
                "sched-set needs root or the admin group",
            ));
        }
        let pc = d.may_use(&self.who, &coproc)?;
        let p = coproc_core::policy::build(&policy, &params)
            .map_err(|e| err(ErrorCode::InvalidArgument, e.to_string()))?;
        pc.set_policy(p).map_err(core_err)?;
        tracing::info!(coproc, policy, ?params, "policy switched");
        d.events.publish(crate::events::Watched {
            owner: None,
            coproc: coproc.clone(),
            event: coproc_proto::Event::PolicyChanged {
                coproc,
                policy,
                params,
                by: self.who.domain,
            },
        });
        Ok(Answer::Done)
    }

    /// `vcoproc-set`.
    pub(super) fn vcoproc_set(
        &mut self,
        vcoproc: u32,
        set: ParamChange,
    ) -> Result<Answer, WireError> {
        if !self.who.admin {
            return Err(err(
                ErrorCode::PermissionDenied,
                "vcoproc-set needs root or the admin group",
            ));
        }
        let e = self.entry(vcoproc, true)?;
        let mut p = e.handle.info().map_err(core_err)?.params;
        apply_change(&mut p, &set)?;
        e.handle.set_params(p).map_err(core_err)?;
        self.daemon.events.publish(crate::events::Watched {
            owner: Some(e.domain),
            coproc: e.coproc.clone(),
            event: coproc_proto::Event::ParamsChanged {
                vcoproc,
                domain: e.domain,
                set,
                by: self.who.domain,
            },
        });
        Ok(Answer::Done)
    }
}
