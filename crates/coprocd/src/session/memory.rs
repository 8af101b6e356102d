//! Requests on a vcoproc's memory: map, unmap, queues, device-local
//! memory, revoke, mapping listings.

use super::hooks::is_eventfd;
use super::{
    core_err, err, Answer, Arc, Entry, ErrorCode, Event, MapKind, MappingInfo, OwnedFd, Perms,
    Quota, Region, Session, WireError, WireMapKind, WirePerms,
};

impl Session {
    /// Map domain memory from `fd` into vcoproc `vcoproc`, within quota.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn map_fd(
        &mut self,
        vcoproc: u32,
        e: &Entry,
        fd: OwnedFd,
        offset: u64,
        iova: u64,
        len: u64,
        perms: Perms,
        kind: MapKind,
    ) -> Result<Arc<Region>, WireError> {
        // Arguments first: nothing is reserved or sealed for a bad request.
        if len == 0 || !len.is_multiple_of(4096) || !offset.is_multiple_of(4096) {
            return Err(err(
                ErrorCode::InvalidArgument,
                "offset and length must be multiples of 4096, length non-zero",
            ));
        }
        e.handle.check_map(iova, len).map_err(core_err)?;
        let d = self.daemon.clone();
        let rule = d.rule(&self.who)?;
        d.reserve(self.who.domain, Quota::Bytes, len, rule.max_mapped_bytes)?;
        if let Err(e) = d.reserve(
            self.who.domain,
            Quota::Mappings,
            1,
            u64::from(rule.max_mappings),
        ) {
            d.unreserve(self.who.domain, Quota::Bytes, len);
            return Err(e);
        }
        let mapped = (|| -> Result<Arc<Region>, WireError> {
            // Region::from_fd seals the memfd against shrinking.
            let region = Arc::new(
                Region::from_fd(fd, offset, len)
                    .map_err(|e| err(ErrorCode::BadFd, e.to_string()))?,
            );
            e.handle
                .map(&region, 0, iova, len, perms, kind)
                .map_err(core_err)?;
            Ok(region)
        })();
        let region = match mapped {
            Ok(r) => r,
            Err(e) => {
                d.unreserve(self.who.domain, Quota::Bytes, len);
                d.unreserve(self.who.domain, Quota::Mappings, 1);
                return Err(e);
            }
        };
        let recorded = d
            .tables()
            .vcoprocs
            .get_mut(&vcoproc)
            .map(|entry| entry.mapped.insert(iova, len));
        if let Some(Some(stale)) = recorded {
            // A revoke ran between the map and this record and found no
            // record to remove: the stale record's quota goes back now.
            d.unreserve(self.who.domain, Quota::Bytes, stale);
            d.unreserve(self.who.domain, Quota::Mappings, 1);
        }
        if recorded.is_none() {
            // Destroyed meanwhile (by an admin): its release did not see
            // this mapping, so give the bytes back here.
            d.unreserve(self.who.domain, Quota::Bytes, len);
            d.unreserve(self.who.domain, Quota::Mappings, 1);
        }
        Ok(region)
    }

    /// Allocate device-local memory in vcoproc `vcoproc`, within the
    /// domain's mapped-bytes quota (reserved first, given back on failure).
    pub(super) fn alloc_local(
        &mut self,
        vcoproc: u32,
        iova: u64,
        len: u64,
    ) -> Result<(), WireError> {
        let e = self.entry(vcoproc, false)?;
        if len == 0 || !len.is_multiple_of(4096) || !iova.is_multiple_of(4096) {
            return Err(err(
                ErrorCode::InvalidArgument,
                "iova and length must be multiples of 4096, length non-zero",
            ));
        }
        let d = self.daemon.clone();
        let rule = d.rule(&self.who)?;
        // A local range counts as one mapping too (it is one entry of the
        // vcoproc's iova space, released with the others).
        d.reserve(
            self.who.domain,
            Quota::Mappings,
            1,
            u64::from(rule.max_mappings),
        )?;
        if let Err(x) = d.reserve(self.who.domain, Quota::Bytes, len, rule.max_mapped_bytes) {
            d.unreserve(self.who.domain, Quota::Mappings, 1);
            return Err(x);
        }
        if let Err(x) = e.handle.alloc_local(iova, len) {
            d.unreserve(self.who.domain, Quota::Bytes, len);
            d.unreserve(self.who.domain, Quota::Mappings, 1);
            return Err(core_err(x));
        }
        let recorded = d
            .tables()
            .vcoprocs
            .get_mut(&vcoproc)
            .map(|entry| entry.mapped.insert(iova, len))
            .is_some();
        if !recorded {
            // Destroyed meanwhile: its release did not count this.
            d.unreserve(self.who.domain, Quota::Bytes, len);
            d.unreserve(self.who.domain, Quota::Mappings, 1);
        }
        Ok(())
    }

    /// Revoke a mapping: the owner any of its own, an admin revocable ones
    /// of any domain (whose session gets a `mapping-revoked` event).
    pub(super) fn revoke(&mut self, vcoproc: u32, iova: u64) -> Result<Answer, WireError> {
        use coproc_core::pcoproc::RevokeOutcome;
        let d = self.daemon.clone();
        let e = self.entry(vcoproc, true)?;
        let owner = e.domain == self.who.domain;
        let began = std::time::Instant::now();
        let outcome = if owner {
            e.handle.revoke(iova)
        } else {
            e.handle.pcoproc().revoke(e.handle.id(), iova)
        };
        match outcome {
            RevokeOutcome::Removed { len } => {
                d.observe_revoke(began.elapsed());
                let mut t = d.tables();
                let had = t
                    .vcoprocs
                    .get_mut(&vcoproc)
                    .and_then(|x| x.mapped.remove(&iova));
                if let (Some(had), Some(u)) = (had, t.usage.get_mut(&e.domain)) {
                    u.mapped_bytes = u.mapped_bytes.saturating_sub(had);
                    u.mappings = u.mappings.saturating_sub(1);
                }
                drop(t);
                d.events.publish(crate::events::Watched {
                    owner: Some(e.domain),
                    coproc: e.coproc.clone(),
                    event: Event::MappingRevoked {
                        vcoproc,
                        iova,
                        len,
                        by: self.who.domain,
                    },
                });
                if !owner {
                    tracing::info!(vcoproc, iova, len, by = self.who.domain, "mapping revoked");
                    d.notice(
                        e.session,
                        Event::MappingRevoked {
                            vcoproc,
                            iova,
                            len,
                            by: self.who.domain,
                        },
                    );
                }
                Ok(Answer::Revoked { len })
            }
            RevokeOutcome::NotMapped | RevokeOutcome::Gone => Ok(Answer::NotMapped),
            RevokeOutcome::Pinned { len } => Err(err(
                ErrorCode::PermissionDenied,
                format!(
                    "the mapping at {iova:#x} ({len} bytes) of vcoproc {vcoproc} is pinned: \
                     only its domain may end it"
                ),
            )),
        }
    }

    /// Mappings visible to this session, of one vcoproc or all.
    pub(super) fn list_mappings(&self, vcoproc: Option<u32>) -> Result<Answer, WireError> {
        let entries: Vec<(u32, Entry)> = match vcoproc {
            Some(v) => vec![(v, self.entry(v, true)?)],
            None => self
                .daemon
                .tables()
                .vcoprocs
                .iter()
                .filter(|(_, e)| self.who.admin || e.domain == self.who.domain)
                .map(|(&id, e)| (id, e.clone()))
                .collect(),
        };
        let mut out = Vec::new();
        for (id, e) in entries {
            let Ok(maps) = e.handle.mappings() else {
                continue;
            };
            out.extend(maps.into_iter().map(|m| MappingInfo {
                vcoproc: id,
                iova: m.iova,
                len: m.len,
                perms: if m.perms.write {
                    WirePerms::Rw
                } else {
                    WirePerms::R
                },
                kind: match m.kind {
                    MapKind::Pinned => WireMapKind::Pinned,
                    MapKind::Revocable => WireMapKind::Revocable,
                },
                domain: e.domain,
            }));
        }
        out.sort_by_key(|m| (m.vcoproc, m.iova));
        Ok(Answer::Mappings { mappings: out })
    }

    /// `map`.
    // The wire request's fields, one argument each.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn map(
        &mut self,
        vcoproc: u32,
        iova: u64,
        offset: u64,
        len: u64,
        perms: WirePerms,
        kind: WireMapKind,
        fds: Vec<OwnedFd>,
    ) -> Result<Answer, WireError> {
        let e = self.entry(vcoproc, false)?;
        let fd = Self::one_fd(fds)?;
        let perms = match perms {
            WirePerms::R => Perms::R,
            WirePerms::Rw => Perms::RW,
        };
        let kind = match kind {
            WireMapKind::Pinned => MapKind::Pinned,
            WireMapKind::Revocable => MapKind::Revocable,
        };
        self.map_fd(vcoproc, &e, fd, offset, iova, len, perms, kind)?;
        Ok(Answer::Done)
    }

    /// `create-queue`.
    pub(super) fn create_queue(
        &mut self,
        vcoproc: u32,
        iova: u64,
        entries: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        let e = self.own_entry(vcoproc)?;
        let bytes = coproc_proto::queue::bytes_for(entries).ok_or_else(|| {
            err(
                ErrorCode::InvalidArgument,
                format!("{entries} entries: use a power of two up to 4096"),
            )
        })?;
        let len = bytes.div_ceil(4096) * 4096;
        let [mem, doorbell, completion]: [OwnedFd; 3] =
            fds.try_into().map_err(|f: Vec<OwnedFd>| {
                err(
                    ErrorCode::BadFd,
                    format!(
                        "a queue takes 3 descriptors (memory, doorbell, completion), got {}",
                        f.len()
                    ),
                )
            })?;
        if !is_eventfd(&doorbell) || !is_eventfd(&completion) {
            return Err(err(
                ErrorCode::BadFd,
                "doorbell and completion must be eventfds",
            ));
        }
        e.handle.check_map(iova, len).map_err(core_err)?;
        // The busy-poll budget in the header's flags word: refused
        // early if over the maximum (firmware clamps it anyway, as
        // the domain can rewrite it). Read with pread, and only from
        // a memfd (it has seals; a read of another file could
        // block); anything else is refused by the mapping below.
        let mut flags = [0u8; 4];
        let peeked = rustix::fs::fcntl_get_seals(&mem).is_ok()
            && rustix::io::pread(&mem, &mut flags, coproc_proto::queue::OFF_FLAGS)
                .is_ok_and(|n| n == flags.len());
        let poll_us = u32::from_ne_bytes(flags);
        if peeked && poll_us > coproc_proto::queue::MAX_POLL_US {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "busy-poll budget {poll_us} us over the maximum {} us",
                    coproc_proto::queue::MAX_POLL_US
                ),
            ));
        }
        let rule = d.rule(&self.who)?;
        d.reserve(
            self.who.domain,
            Quota::Queues,
            1,
            u64::from(rule.max_queues),
        )?;
        // The runner waits on the doorbell eventfd itself: a ring
        // reaches the device with no task or lock in between. Added
        // once the quota holds and before the mapping, so a refusal
        // (at most 64 per vcoproc) gives the quota back and leaves
        // nothing behind; should the mapping fail, the descriptor
        // only rings this vcoproc and goes with it.
        if let Err(err) = e.handle.add_doorbell_fd(doorbell) {
            d.unreserve(self.who.domain, Quota::Queues, 1);
            return Err(core_err(err));
        }
        let ring = match self.map_fd(vcoproc, &e, mem, 0, iova, len, Perms::RW, MapKind::Pinned) {
            Ok(r) => r,
            Err(e) => {
                d.unreserve(self.who.domain, Quota::Queues, 1);
                return Err(e);
            }
        };
        let recorded = d
            .tables()
            .vcoprocs
            .get_mut(&vcoproc)
            .map(|x| x.queues += 1)
            .is_some();
        if !recorded {
            // Destroyed meanwhile (by an admin).
            d.unreserve(self.who.domain, Quota::Queues, 1);
            return Err(err(ErrorCode::NotFound, format!("no vcoproc {vcoproc}")));
        }
        let hooks = self.hooks(vcoproc, &e);
        hooks
            .completions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(completion);
        hooks
            .rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(ring);
        hooks.start_writer();
        Ok(Answer::Done)
    }

    /// `unmap`.
    pub(super) fn unmap(&mut self, vcoproc: u32, iova: u64) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        let e = self.entry(vcoproc, false)?;
        e.handle.unmap(iova).map_err(core_err)?;
        let mut t = d.tables();
        let len = t
            .vcoprocs
            .get_mut(&vcoproc)
            .and_then(|x| x.mapped.remove(&iova));
        if let (Some(len), Some(u)) = (len, t.usage.get_mut(&self.who.domain)) {
            u.mapped_bytes = u.mapped_bytes.saturating_sub(len);
            u.mappings = u.mappings.saturating_sub(1);
        }
        Ok(Answer::Done)
    }

    /// `free-local`.
    pub(super) fn free_local(&mut self, vcoproc: u32, iova: u64) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        let e = self.entry(vcoproc, false)?;
        let len = e.handle.free_local(iova).map_err(core_err)?;
        let mut t = d.tables();
        let recorded = t
            .vcoprocs
            .get_mut(&vcoproc)
            .and_then(|x| x.mapped.remove(&iova));
        if let (Some(u), Some(_)) = (t.usage.get_mut(&self.who.domain), recorded) {
            u.mapped_bytes = u.mapped_bytes.saturating_sub(len);
            u.mappings = u.mappings.saturating_sub(1);
        }
        Ok(Answer::Done)
    }
}
