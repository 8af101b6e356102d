//! The example-firmware drivers over the daemon: the client SDK as a
//! [`Port`] and [`Memory`], and the `domain-run` workload a demo or test
//! domain process runs.

use crate::output::Format;
use anyhow::{bail, Context};
use coproc_client::{Client, ClientError, SharedMem, WireMapKind, WirePerms};
use coproc_firmware::drive::{self, DriveError, Memory, Port};
use coproc_firmware::reference::{self, TestRng};
use serde::Serialize;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// A vcoproc through the daemon.
pub struct RemotePort<'a> {
    /// The session.
    pub client: &'a RefCell<Client>,
    /// The vcoproc.
    pub vcoproc: u32,
}

fn port_err(e: ClientError) -> DriveError {
    DriveError::Port(e.to_string())
}

impl Port for RemotePort<'_> {
    fn last_seq(&self) -> Result<u64, DriveError> {
        Ok(self
            .client
            .borrow_mut()
            .mbox_read(self.vcoproc)
            .map_err(port_err)?
            .1)
    }
    fn post(&self, words: &[u32]) -> Result<(), DriveError> {
        let mut c = self.client.borrow_mut();
        c.mbox_write(self.vcoproc, 0, words).map_err(port_err)?;
        c.doorbell(self.vcoproc).map_err(port_err)
    }
    fn wait_seq(&self, after: u64, timeout: Duration) -> Result<(u64, u32), DriveError> {
        self.client
            .borrow_mut()
            .wait_notify(self.vcoproc, after, timeout)
            .map_err(port_err)
    }
    fn mailbox(&self) -> Result<[u32; 16], DriveError> {
        let (words, _) = self
            .client
            .borrow_mut()
            .mbox_read(self.vcoproc)
            .map_err(port_err)?;
        let mut out = [0u32; 16];
        for (o, w) in out.iter_mut().zip(words) {
            *o = w;
        }
        Ok(out)
    }
}

/// Shared memory mapped into a vcoproc at `iova`.
pub struct RemoteMem {
    /// The memory.
    pub mem: SharedMem,
    /// Where the vcoproc sees it.
    pub iova: u64,
}

impl Memory for RemoteMem {
    fn len(&self) -> u64 {
        self.mem.len()
    }
    fn iova(&self) -> u64 {
        self.iova
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DriveError> {
        self.mem.write(offset, data).map_err(port_err)
    }
    fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, DriveError> {
        self.mem.read_vec(offset, len as usize).map_err(port_err)
    }
}

/// Options of `coproc domain-run`.
#[derive(Debug, clap::Args)]
pub struct DomainArgs {
    /// Example firmware: fir, crc32, echo, hog, faulty.
    #[arg(long)]
    firmware: String,
    /// Pcoproc.
    #[arg(long, default_value = "mcu0")]
    coproc: String,
    /// Scale of the work.
    #[arg(long, default_value_t = 1)]
    scale: u32,
    /// For hog: how long to keep running.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Seed of the test data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// For hog: run until standard input closes (instead of --seconds).
    #[arg(long)]
    until_eof: bool,
}

/// What a domain process reports.
#[derive(Debug, Serialize)]
pub struct DomainReport {
    /// Firmware.
    pub firmware: String,
    /// Its vcoproc id at the daemon.
    pub vcoproc: u32,
    /// Whether every result matched the reference (faulty: whether it faulted as expected).
    pub verified: bool,
    /// What was checked.
    pub detail: String,
    /// Final state.
    pub state: String,
    /// Device run time.
    pub run_ns: u64,
    /// Slices.
    pub slices: u64,
    /// Context switches onto it.
    pub switches: u64,
    /// Faults.
    pub faults: u64,
    /// Its latest fault, if any.
    pub fault: Option<coproc_client::FaultInfo>,
}

const T: Duration = Duration::from_secs(120);
const IOVA: u64 = 0x6000_0000;

fn workload(
    args: &DomainArgs,
    port: &RemotePort<'_>,
    mem: &RemoteMem,
) -> Result<String, DriveError> {
    let mut rng = TestRng::new(args.seed);
    let scale = args.scale.max(1);
    match args.firmware.as_str() {
        "fir" => {
            let (n, taps, jobs) = (8192, 32, 4 * scale);
            for j in 0..jobs {
                let (x, h) = (rng.samples(n), rng.samples(taps));
                if drive::fir(port, mem, &x, &h, j + 1, T)? != reference::fir_q15(&x, &h) {
                    return Err(DriveError::BadAnswer(format!(
                        "fir job {j} differs from the reference"
                    )));
                }
            }
            Ok(format!("{jobs} fir jobs equal the host reference"))
        }
        "crc32" => {
            let jobs = 6 * scale;
            for j in 0..jobs {
                let data = rng.bytes(64 * 1024 - j as usize);
                if drive::crc32(port, mem, &data, j + 1, T)? != reference::crc32(&data) {
                    return Err(DriveError::BadAnswer(format!(
                        "crc job {j} differs from the reference"
                    )));
                }
            }
            Ok(format!("{jobs} crc32 jobs equal the host reference"))
        }
        "echo" => {
            let msgs = 200 * scale;
            for seq in 1..=msgs {
                let w: [u32; 16] = std::array::from_fn(|_| rng.next_u64() as u32);
                if drive::echo(port, &w, T)? != reference::echo(&w, seq) {
                    return Err(DriveError::BadAnswer(format!("echo {seq} differs")));
                }
            }
            Ok(format!("{msgs} echo round trips in order"))
        }
        "hog" => {
            if args.until_eof {
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            } else {
                std::thread::sleep(Duration::from_secs_f64(args.seconds));
            }
            // It keeps running while we read its two words: the progress
            // read again bounds the states it may have published meanwhile.
            let out = port.mailbox()?;
            let done = u64::from(out[0]);
            if done == 0 {
                return Err(DriveError::BadAnswer("hog made no progress".into()));
            }
            let after = port.mailbox()?[0];
            if !reference::hog_state_between(out[0], out[1], after) {
                return Err(DriveError::BadAnswer(format!(
                    "LCG state {:#x} after ~{done}x65536 steps is wrong",
                    out[1]
                )));
            }
            Ok(format!(
                "{} M iterations, LCG state matches the reference",
                (done << 16) / 1_000_000
            ))
        }
        other => Err(DriveError::BadAnswer(format!(
            "no workload for firmware {other:?}"
        ))),
    }
}

/// Run one domain's workload through the daemon; exits non-zero if a
/// result is wrong.
pub fn domain_run(client: Client, args: &DomainArgs, format: Format) -> anyhow::Result<bool> {
    let fw = coproc_firmware::by_name(&args.firmware)
        .with_context(|| format!("no example firmware {:?}", args.firmware))?;
    let client = RefCell::new(client);
    let v = client.borrow_mut().open(&args.coproc)?;
    {
        let mut c = client.borrow_mut();
        c.load_firmware(v, fw.name, fw.elf)?;
        c.subscribe(v)?;
    }
    let mem = RemoteMem {
        mem: SharedMem::new(1 << 20)?,
        iova: IOVA,
    };
    client.borrow_mut().map(
        v,
        &mem.mem,
        0,
        IOVA,
        mem.mem.len(),
        WirePerms::Rw,
        WireMapKind::Pinned,
    )?;
    client.borrow_mut().start(v)?;
    let port = RemotePort {
        client: &client,
        vcoproc: v,
    };
    let started = Instant::now();
    let check: Result<String, String> = if fw.name == "faulty" {
        client.borrow_mut().doorbell(v)?;
        let waited = client.borrow_mut().wait_notify(v, 0, T);
        match waited {
            Err(ClientError::Stopped { state, .. }) if state == "faulted" => {
                let faults = client.borrow_mut().list_faults()?;
                match faults.iter().find(|f| f.vcoproc == v) {
                    Some(f) if f.addr == Some(0x7fff_f000) && f.access == "read" => Ok(format!(
                        "faulted as expected at {:#x} (read), pc {:#x}",
                        0x7fff_f000u64,
                        f.pc.unwrap_or(0)
                    )),
                    other => Err(format!("unexpected fault record {other:?}")),
                }
            }
            other => Err(format!("expected a fault, got {other:?}")),
        }
    } else {
        workload(args, &port, &mem).map_err(|e| e.to_string())
    };
    let info = client.borrow_mut().query(v)?;
    let fault = client
        .borrow_mut()
        .list_faults()?
        .into_iter()
        .rfind(|f| f.vcoproc == v);
    let report = DomainReport {
        firmware: fw.name.into(),
        vcoproc: v,
        verified: check.is_ok(),
        detail: check.unwrap_or_else(|e| format!("FAILED: {e}")),
        state: info.state,
        run_ns: info.run_ns,
        slices: info.slices,
        switches: info.switches,
        faults: info.faults,
        fault,
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => println!(
            "{} (vcoproc {}): {} in {:.2} s",
            report.firmware,
            report.vcoproc,
            report.detail,
            started.elapsed().as_secs_f64()
        ),
    }
    if !report.verified {
        bail!("{}: {}", report.firmware, report.detail);
    }
    Ok(true)
}
