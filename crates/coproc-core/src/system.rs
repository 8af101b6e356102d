//! Domains and pcoprocs together: the in-process entry point.

use crate::device::{Device, DeviceError};
use crate::error::CoreError;
use crate::ids::DomainId;
use crate::pcoproc::{Pcoproc, VcoprocHandle};
use crate::policy::{Policy, SchedParams};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum SystemError {
    /// No such domain.
    #[error("no domain {0}")]
    NoDomain(DomainId),
    /// No such pcoproc.
    #[error("no pcoproc {0:?}")]
    NoPcoproc(String),
    /// A pcoproc with this name exists.
    #[error("pcoproc {0:?} exists")]
    PcoprocExists(String),
    /// From the pcoproc.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// A domain: an identity owning vcoprocs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Domain {
    /// Its id.
    pub id: DomainId,
    /// A human name.
    pub name: String,
}

#[derive(Debug, Default)]
struct Tables {
    domains: BTreeMap<DomainId, Domain>,
    pcoprocs: BTreeMap<String, Arc<Pcoproc>>,
    next_domain: u32,
}

/// Domains and pcoprocs of one host.
#[derive(Debug)]
pub struct System {
    tables: Mutex<Tables>,
    /// Vcoproc ids, unique across the system's pcoprocs.
    ids: Arc<std::sync::atomic::AtomicU32>,
}

impl Default for System {
    fn default() -> Self {
        System::new()
    }
}

impl System {
    /// An empty system.
    pub fn new() -> System {
        System {
            tables: Mutex::default(),
            ids: Arc::new(std::sync::atomic::AtomicU32::new(1)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start a pcoproc named `name` on a device made by `factory`.
    pub fn add_pcoproc<F>(
        &self,
        name: &str,
        factory: F,
        policy: Box<dyn Policy>,
    ) -> Result<Arc<Pcoproc>, SystemError>
    where
        F: FnOnce() -> Result<Box<dyn Device>, DeviceError> + Send + 'static,
    {
        if self.lock().pcoprocs.contains_key(name) {
            return Err(SystemError::PcoprocExists(name.into()));
        }
        let p = Pcoproc::spawn_with_ids(name, factory, policy, self.ids.clone())?;
        self.lock().pcoprocs.insert(name.into(), p.clone());
        Ok(p)
    }

    /// The pcoproc called `name`.
    pub fn pcoproc(&self, name: &str) -> Result<Arc<Pcoproc>, SystemError> {
        self.lock()
            .pcoprocs
            .get(name)
            .cloned()
            .ok_or_else(|| SystemError::NoPcoproc(name.into()))
    }

    /// All pcoprocs by name.
    pub fn pcoprocs(&self) -> Vec<Arc<Pcoproc>> {
        self.lock().pcoprocs.values().cloned().collect()
    }

    /// Register a domain.
    pub fn add_domain(&self, name: &str) -> Domain {
        let mut t = self.lock();
        t.next_domain += 1;
        let d = Domain {
            id: DomainId(t.next_domain),
            name: name.into(),
        };
        t.domains.insert(d.id, d.clone());
        d
    }

    /// All domains.
    pub fn domains(&self) -> Vec<Domain> {
        self.lock().domains.values().cloned().collect()
    }

    /// Remove a domain and destroy all its vcoprocs on every pcoproc.
    pub fn remove_domain(&self, id: DomainId) -> Result<(), SystemError> {
        let pcoprocs = {
            let mut t = self.lock();
            t.domains.remove(&id).ok_or(SystemError::NoDomain(id))?;
            t.pcoprocs.values().cloned().collect::<Vec<_>>()
        };
        for p in pcoprocs {
            p.destroy_domain(id)?;
        }
        Ok(())
    }

    /// Create a vcoproc for `domain` on pcoproc `pcoproc`.
    pub fn create_vcoproc(
        &self,
        domain: DomainId,
        pcoproc: &str,
        params: SchedParams,
    ) -> Result<VcoprocHandle, SystemError> {
        let p = {
            let t = self.lock();
            if !t.domains.contains_key(&domain) {
                return Err(SystemError::NoDomain(domain));
            }
            t.pcoprocs
                .get(pcoproc)
                .cloned()
                .ok_or_else(|| SystemError::NoPcoproc(pcoproc.into()))?
        };
        Ok(p.create_vcoproc(domain, params)?)
    }

    /// Shut every pcoproc down.
    pub fn shutdown(&self) {
        let ps: Vec<_> = std::mem::take(&mut self.lock().pcoprocs)
            .into_values()
            .collect();
        for p in ps {
            p.shutdown();
        }
    }
}
