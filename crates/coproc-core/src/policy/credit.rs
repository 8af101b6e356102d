//! `credit`: placeholder until the policy lands (refuses to be built).

use super::PolicyError;

/// The `credit` policy.
#[derive(Debug)]
pub struct Credit;

impl Credit {
    /// Build from `key=value` parameters.
    pub fn from_params(_params: &[(String, String)]) -> Result<Self, PolicyError> {
        Err(PolicyError::BadParam("credit: not available yet".into()))
    }
}

impl super::Policy for Credit {
    fn name(&self) -> &'static str {
        "credit"
    }
    fn describe(&self) -> Vec<(String, String)> {
        vec![]
    }
    fn attach(&mut self, _v: crate::VcoprocId, _p: &super::SchedParams) -> Result<(), PolicyError> {
        Ok(())
    }
    fn detach(&mut self, _v: crate::VcoprocId) {}
    fn set_params(
        &mut self,
        _v: crate::VcoprocId,
        _p: &super::SchedParams,
    ) -> Result<(), PolicyError> {
        Ok(())
    }
    fn wake(&mut self, _v: crate::VcoprocId, _now_ns: u64) -> super::WakeAction {
        super::WakeAction::None
    }
    fn block(&mut self, _v: crate::VcoprocId) {}
    fn pick(&mut self, _now_ns: u64) -> super::Decision {
        super::Decision::Idle(None)
    }
    fn charge(
        &mut self,
        _v: crate::VcoprocId,
        _ran: std::time::Duration,
        _now_ns: u64,
        _end: super::SliceEnd,
    ) {
    }
    fn standings(&self) -> Vec<super::Standing> {
        vec![]
    }
}
