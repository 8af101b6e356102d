//! Requests on a vcoproc's life: open, load firmware, start, stop, reset,
//! destroy, query, subscribe, mailbox, doorbell, demand faults.

use super::{
    core_err, err, info, Answer, Duration, Entry, ErrorCode, Event, Ordering, OwnedFd, Quota,
    Session, VcoprocState, WireError, MAX_FIRMWARE,
};
use coproc_core::policy::SchedParams;
use std::collections::BTreeMap;

/// The `len` bytes of a firmware image from `fd`, which must be a memfd
/// sealed against writing and shrinking: a read of it never blocks (no
/// FUSE file, pipe or device can stand in), and its contents cannot change
/// between the checks of the image and its use.
fn read_firmware(fd: &OwnedFd, len: u64) -> Result<Vec<u8>, WireError> {
    use rustix::fs::{fcntl_get_seals, SealFlags};
    let need = SealFlags::WRITE | SealFlags::SHRINK;
    let sealed = fcntl_get_seals(fd).is_ok_and(|s| s.contains(need));
    if !sealed {
        return Err(err(
            ErrorCode::BadFd,
            "firmware must come in a memfd sealed against writing and shrinking \
             (F_SEAL_WRITE | F_SEAL_SHRINK)",
        ));
    }
    let size = rustix::fs::fstat(fd)
        .map_err(|e| err(ErrorCode::BadFd, format!("cannot stat firmware fd: {e}")))?
        .st_size;
    if u64::try_from(size).map_or(true, |size| size < len) {
        return Err(err(
            ErrorCode::BadFd,
            format!("firmware memfd holds {size} bytes, {len} announced"),
        ));
    }
    let len = usize::try_from(len).map_err(|_| {
        err(
            ErrorCode::InvalidArgument,
            format!("firmware of {len} bytes"),
        )
    })?;
    let mut image = vec![0u8; len];
    let mut done = 0;
    while done < image.len() {
        match rustix::io::pread(fd, &mut image[done..], done as u64) {
            Ok(0) => {
                return Err(err(
                    ErrorCode::BadFd,
                    format!("fd ends after {done} of {len} bytes"),
                ))
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(err(
                    ErrorCode::BadFd,
                    format!("cannot read firmware fd: {e}"),
                ))
            }
        }
    }
    Ok(image)
}

impl Session {
    /// `open-vcoproc`.
    pub(super) fn open_vcoproc(&mut self, coproc: String) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        let pc = d.may_use(&self.who, &coproc)?;
        let rule = d.rule(&self.who)?;
        d.reserve(
            self.who.domain,
            Quota::Vcoprocs,
            1,
            u64::from(rule.max_vcoprocs),
        )?;
        let handle = match pc.create_vcoproc(
            coproc_core::DomainId(self.who.domain),
            SchedParams::default(),
        ) {
            Ok(h) => h,
            Err(e) => {
                d.unreserve(self.who.domain, Quota::Vcoprocs, 1);
                return Err(core_err(e));
            }
        };
        let id = d.register(Entry {
            coproc,
            handle,
            domain: self.who.domain,
            session: self.id,
            mapped: BTreeMap::default(),
            queues: 0,
            attachment: None,
        });
        Ok(Answer::Opened { vcoproc: id })
    }

    /// `load-firmware`.
    pub(super) fn load_firmware(
        &mut self,
        vcoproc: u32,
        label: String,
        len: u64,
        fds: Vec<OwnedFd>,
    ) -> Result<Answer, WireError> {
        let e = self.entry(vcoproc, false)?;
        let fd = Self::one_fd(fds)?;
        if len == 0 || len > MAX_FIRMWARE {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("firmware length {len} not in 1..={MAX_FIRMWARE}"),
            ));
        }
        if label.len() > 64 {
            return Err(err(
                ErrorCode::InvalidArgument,
                "label longer than 64 bytes",
            ));
        }
        if label.chars().any(char::is_control) {
            // Labels end up on admins' terminals.
            return Err(err(
                ErrorCode::InvalidArgument,
                "label has control characters",
            ));
        }
        let image = read_firmware(&fd, len)?;
        e.handle.load_firmware(&label, &image).map_err(core_err)?;
        Ok(Answer::Done)
    }

    /// `mbox-write`.
    pub(super) fn mbox_write(
        &mut self,
        vcoproc: u32,
        index: u32,
        values: Vec<u32>,
    ) -> Result<Answer, WireError> {
        let e = self.entry(vcoproc, false)?;
        let end = (index as usize).checked_add(values.len());
        if end.is_none_or(|end| end > coproc_core::control::MBOX_WORDS) {
            return Err(err(ErrorCode::InvalidArgument, "mailbox has 16 words"));
        }
        for (i, v) in values.iter().enumerate() {
            e.handle.mbox_write(index as usize + i, *v);
        }
        Ok(Answer::Done)
    }

    /// `mbox-read`.
    pub(super) fn mbox_read(&mut self, vcoproc: u32) -> Result<Answer, WireError> {
        let e = self.entry(vcoproc, false)?;
        let words = (0..coproc_core::control::MBOX_WORDS)
            .map(|i| e.handle.mbox_read(i))
            .collect();
        Ok(Answer::Mailbox {
            words,
            notify_seq: e.handle.last_notify().seq,
        })
    }

    /// `console`: the lines the firmware printed, as its control block
    /// keeps them (bounded; see `coproc_core::control`).
    pub(super) fn console(&mut self, vcoproc: u32) -> Result<Answer, WireError> {
        let (lines, dropped) = self.entry(vcoproc, false)?.handle.console();
        Ok(Answer::Console { lines, dropped })
    }

    /// `doorbell`.
    pub(super) fn doorbell(&mut self, vcoproc: u32) -> Result<Answer, WireError> {
        self.entry(vcoproc, false)?.handle.doorbell();
        Ok(Answer::Done)
    }

    /// `start`.
    pub(super) fn start(&mut self, vcoproc: u32) -> Result<Answer, WireError> {
        let e = self.entry(vcoproc, false)?;
        // A firmware stopped or reset while it polled its queues left
        // their polling words set; the one about to start has not polled
        // yet, and the domain must ring it.
        if let Some(h) = self.hooks.get(&vcoproc) {
            h.not_polling();
        }
        e.handle.start().map_err(core_err)?;
        Ok(Answer::Done)
    }

    /// `stop`.
    pub(super) fn stop(&mut self, vcoproc: u32) -> Result<Answer, WireError> {
        self.entry(vcoproc, true)?.handle.stop().map_err(core_err)?;
        Ok(Answer::Done)
    }

    /// `reset`.
    pub(super) fn reset(&mut self, vcoproc: u32) -> Result<Answer, WireError> {
        self.entry(vcoproc, true)?
            .handle
            .reset()
            .map_err(core_err)?;
        Ok(Answer::Done)
    }

    /// `destroy`.
    pub(super) fn destroy(&mut self, vcoproc: u32) -> Result<Answer, WireError> {
        let d = self.daemon.clone();
        let e = self.entry(vcoproc, true)?;
        self.hooks.remove(&vcoproc);
        // Out of the table first (its session's attachment goes with
        // it, whichever session this is), then out of the device.
        let removed = d.take(vcoproc);
        e.handle.destroy().map_err(core_err)?;
        if let Some(removed) = removed {
            d.release(&removed);
            if removed.session != self.id && removed.attachment.is_some() {
                // Its creator listened and no longer hears from
                // it: tell it.
                d.notice(
                    removed.session,
                    Event::State {
                        vcoproc,
                        state: VcoprocState::Destroyed.to_string(),
                    },
                );
            }
        }
        Ok(Answer::Done)
    }

    /// `query`.
    pub(super) fn query(&mut self, vcoproc: u32) -> Result<Answer, WireError> {
        let e = self.entry(vcoproc, true)?;
        Ok(Answer::Vcoproc {
            info: info(vcoproc, &e)?,
        })
    }

    /// `subscribe`.
    pub(super) fn subscribe(&mut self, vcoproc: u32) -> Result<Answer, WireError> {
        let e = self.own_entry(vcoproc)?;
        self.hooks(vcoproc, &e)
            .subscribed
            .store(true, Ordering::Release);
        Ok(Answer::Done)
    }

    /// `set-demand-faults`.
    pub(super) fn set_demand_faults(
        &mut self,
        vcoproc: u32,
        timeout_ms: Option<u64>,
    ) -> Result<Answer, WireError> {
        let e = self.entry(vcoproc, false)?;
        let timeout = timeout_ms.map(Duration::from_millis);
        e.handle.set_demand_faults(timeout).map_err(core_err)?;
        Ok(Answer::Done)
    }
}
