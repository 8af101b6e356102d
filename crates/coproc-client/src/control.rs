//! Requests about one vcoproc's life: open, firmware, mailbox, doorbell,
//! start/stop/reset/destroy, state and notifications.

use crate::shm;
use crate::Answer;
use crate::Client;
use crate::ClientError;
use crate::Event;
use crate::Request;
use crate::ServerFrame;
use crate::VcoprocInfo;
use rustix::fd::AsFd;
use std::time::Duration;
use std::time::Instant;

impl Client {
    /// Open a vcoproc on `coproc`; returns its id.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?; // a vcoproc id, destroyed with the session
    /// c.destroy(v)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(&mut self, coproc: &str) -> Result<u32, ClientError> {
        answer!(self.call(
            Request::OpenVcoproc {
                coproc: coproc.into(),
            },
            &[],
        )?, Answer::Opened { vcoproc } => vcoproc)
    }

    /// Load a firmware image (sent as a memfd the daemon reads from).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let elf = std::fs::read("crc32.elf").expect("a firmware image");
    /// c.load_firmware(v, "crc32", &elf)?;
    /// c.start(v)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn load_firmware(
        &mut self,
        vcoproc: u32,
        label: &str,
        image: &[u8],
    ) -> Result<(), ClientError> {
        let fd = shm::sealed_image(image)?;
        let req = Request::LoadFirmware {
            vcoproc,
            label: label.into(),
            len: image.len() as u64,
        };
        answer!(self.call(req, &[fd.as_fd()])?, Answer::Done => ())
    }

    /// Write mailbox-in words from `index`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.mbox_write(v, 0, &[0x6000_0000, 4096])?; // words 0 and 1
    /// c.doorbell(v)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn mbox_write(
        &mut self,
        vcoproc: u32,
        index: u32,
        values: &[u32],
    ) -> Result<(), ClientError> {
        self.done(Request::MboxWrite {
            vcoproc,
            index,
            values: values.to_vec(),
        })
    }

    /// Read the mailbox-out words and the latest notification sequence.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let (words, seq) = c.mbox_read(v)?;
    /// println!("word 2 = {:#x} (notification {seq})", words[2]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mbox_read(&mut self, vcoproc: u32) -> Result<(Vec<u32>, u64), ClientError> {
        answer!(self.call(Request::MboxRead { vcoproc }, &[])?, Answer::Mailbox { words, notify_seq } => (words, notify_seq))
    }

    /// The lines the firmware printed to its console, oldest first, and how
    /// many older ones the daemon no longer keeps.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let (lines, dropped) = c.console(v)?;
    /// for l in lines {
    ///     println!("firmware: {l}");
    /// }
    /// assert_eq!(dropped, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn console(&mut self, vcoproc: u32) -> Result<(Vec<String>, u64), ClientError> {
        answer!(self.call(Request::Console { vcoproc }, &[])?, Answer::Console { lines, dropped } => (lines, dropped))
    }

    /// Ring the doorbell.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.subscribe(v)?;
    /// let (_, seen) = c.mbox_read(v)?;
    /// c.doorbell(v)?;
    /// let (seq, _value) = c.wait_notify(v, seen, Duration::from_secs(1))?;
    /// assert!(seq > seen);
    /// # Ok(())
    /// # }
    /// ```
    pub fn doorbell(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Doorbell { vcoproc })
    }

    /// Start it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.start(v)?;
    /// assert_eq!(c.query(v)?.state, "runnable");
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Start { vcoproc })
    }

    /// Stop (pause) it; [`Client::start`] resumes it.
    pub fn stop(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Stop { vcoproc })
    }

    /// Reset it.
    pub fn reset(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Reset { vcoproc })
    }

    /// Destroy it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.destroy(v)?;
    /// assert!(c.query(v).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn destroy(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Destroy { vcoproc })
    }

    /// Its state and counters.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let info = c.query(v)?;
    /// println!("{} ran {} ns", info.state, info.run_ns);
    /// # Ok(())
    /// # }
    /// ```
    pub fn query(&mut self, vcoproc: u32) -> Result<VcoprocInfo, ClientError> {
        answer!(self.call(Request::Query { vcoproc }, &[])?, Answer::Vcoproc { info } => info)
    }

    /// Receive its events.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.subscribe(v)?;
    /// c.start(v)?;
    /// match c.next_event(Duration::from_secs(1))? {
    ///     Event::Fault { fault, .. } => println!("faulted: {}", fault.reason),
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Subscribe { vcoproc })
    }

    /// The next event, waiting up to `timeout`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.subscribe(v)?;
    /// let event = c.next_event(Duration::from_millis(100))?;
    /// println!("{event:?}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn next_event(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        let deadline = Instant::now() + timeout;
        match self.read_frame(Some(deadline)) {
            Ok(ServerFrame::Event { event }) => Ok(event),
            Ok(other) => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Err(ClientError::Timeout(_)) => Err(ClientError::Timeout(timeout)),
            Err(e) => Err(e),
        }
    }

    /// Wait for a notification of `vcoproc` newer than `after` (subscribe
    /// first); fails if it faults or stops meanwhile. Returns (seq, tag).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.subscribe(v)?;
    /// let (_, seen) = c.mbox_read(v)?;
    /// c.doorbell(v)?;
    /// let (seq, value) = c.wait_notify(v, seen, Duration::from_secs(1))?;
    /// println!("notification {seq}: {value:#x}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_notify(
        &mut self,
        vcoproc: u32,
        after: u64,
        timeout: Duration,
    ) -> Result<(u64, u32), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left)? {
                Event::Notify {
                    vcoproc: v,
                    seq,
                    tag,
                } if v == vcoproc && seq > after => return Ok((seq, tag)),
                Event::State { vcoproc: v, state } if v == vcoproc => {
                    return Err(ClientError::Stopped { vcoproc, state })
                }
                _ => {}
            }
        }
    }
}
