//! A real `coprocd` session, statefully: one `Daemon` with a small mcu
//! pcoproc for the whole run; each input opens a `Session` as a fuzzed
//! identity, sends it a sequence of requests, each with descriptors made
//! here (memfds of fuzzed sizes, contents and seals, eventfds, pipes,
//! /dev/null), drains its wake-ups, and closes it. After `close` the
//! daemon's tables hold no vcoproc and no usage for that domain, and the
//! pcoproc holds no live vcoproc.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use coproc_proto::{Answer, Identity, ParamChange, Request, WireMapKind, WirePerms};
use coprocd::config::Config;
use coprocd::daemon::Daemon;
use coprocd::session::Session;
use libfuzzer_sys::fuzz_target;
use rustix::fs::{MemfdFlags, SealFlags};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};

const CONFIG: &str = r#"
[[pcoproc]]
name = "mcu0"
class = "mcu"
policy = "rr"
policy_params = { slice_us = 1000 }
options = { max_contexts = 8 }

[[domain]]
uids = "*"
pcoprocs = ["mcu0"]
max_vcoprocs = 4
max_mapped_bytes = 1048576
max_queues = 4
max_mappings = 8
"#;

const IOVA_BASE: u64 = coproc_abi::control::IOVA_BASE as u64;

fn daemon() -> &'static Arc<Daemon> {
    static D: OnceLock<Arc<Daemon>> = OnceLock::new();
    D.get_or_init(|| {
        let c = Config::parse(CONFIG).expect("the fuzz configuration is valid");
        Arc::new(Daemon::start(c).expect("the daemon starts"))
    })
}

/// Whether to print each request and its answer (`COPROC_FUZZ_TRACE=1`,
/// when replaying an input by hand).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("COPROC_FUZZ_TRACE").is_some())
}

/// Which vcoproc a request names.
#[derive(Debug, Arbitrary)]
enum VRef {
    /// One this session opened (by index, wrapping).
    Mine(u8),
    /// Any number.
    Raw(u32),
}

/// An address: in the window, page-aligned, or anything.
#[derive(Debug, Arbitrary)]
enum Iova {
    Page(u8),
    Raw(u64),
}

impl Iova {
    fn get(&self) -> u64 {
        match *self {
            Iova::Page(k) => IOVA_BASE + u64::from(k) * 0x1000,
            Iova::Raw(v) => v,
        }
    }
}

/// A length: a few pages, or anything.
#[derive(Debug, Arbitrary)]
enum Len {
    Pages(u8),
    Raw(u64),
}

impl Len {
    fn get(&self) -> u64 {
        match *self {
            Len::Pages(n) => u64::from(n % 8) * 0x1000,
            Len::Raw(v) => v,
        }
    }
}

/// Entries of a queue: a power of two (mostly) or anything.
#[derive(Debug, Arbitrary)]
enum Entries {
    Shift(u8),
    Raw(u32),
}

/// What a memfd holds.
#[derive(Debug, Arbitrary)]
enum Content {
    Zeros,
    /// One of the example firmware images.
    Firmware(u8),
    Bytes(Vec<u8>),
}

/// A descriptor attached to a request.
#[derive(Debug, Arbitrary)]
enum Fd {
    Memfd {
        pages: u8,
        extra: u16,
        content: Content,
        seal_shrink: bool,
        seal_grow: bool,
        seal_write: bool,
        seal_seal: bool,
    },
    Eventfd,
    PipeRead,
    PipeWrite,
    DevNull,
}

#[derive(Debug, Arbitrary)]
enum Req {
    Hello(u32),
    ListCoprocs,
    Open(bool),
    Load {
        v: VRef,
        /// None: the descriptor's size.
        len: Option<u16>,
    },
    Map {
        v: VRef,
        iova: Iova,
        offset: Len,
        len: Len,
        rw: bool,
        revocable: bool,
    },
    CreateQueue {
        v: VRef,
        iova: Iova,
        entries: Entries,
    },
    Unmap {
        v: VRef,
        iova: Iova,
    },
    MboxWrite {
        v: VRef,
        index: u32,
        values: Vec<u32>,
    },
    MboxRead(VRef),
    Console(VRef),
    Doorbell(VRef),
    Start(VRef),
    Stop(VRef),
    Reset(VRef),
    Destroy(VRef),
    Query(VRef),
    Subscribe(VRef),
    ListVcoprocs {
        domain: Option<u32>,
        mcu: Option<bool>,
    },
    ListDomains,
    ListFaults,
    SchedGet(bool),
    SchedSet {
        policy: u8,
        params: Vec<(u8, u32)>,
    },
    VcoprocSet {
        v: VRef,
        weight: Option<u32>,
        cap: Option<u32>,
        priority: Option<i32>,
        budget: Option<u64>,
        period: Option<u64>,
    },
    Demand {
        v: VRef,
        timeout_ms: Option<u64>,
    },
    AllocLocal {
        v: VRef,
        iova: Iova,
        len: Len,
    },
    FreeLocal {
        v: VRef,
        iova: Iova,
    },
    Revoke {
        v: VRef,
        iova: Iova,
    },
    ListMappings(Option<VRef>),
    Watch,
}

#[derive(Debug, Arbitrary)]
struct Step {
    req: Req,
    fds: Vec<Fd>,
    /// Attach `fds` as they are; otherwise (mostly) the count the request
    /// expects, padded with plausible ones.
    stray: bool,
}

/// Descriptors a request expects, and plausible ones to pad with.
fn expected(r: &Req) -> &'static [Fd] {
    const FIRMWARE: Fd = Fd::Memfd {
        pages: 0,
        extra: 0,
        content: Content::Firmware(8),
        seal_shrink: false,
        seal_grow: false,
        seal_write: false,
        seal_seal: false,
    };
    const MEMORY: Fd = Fd::Memfd {
        pages: 2,
        extra: 0,
        content: Content::Zeros,
        seal_shrink: true,
        seal_grow: false,
        seal_write: false,
        seal_seal: false,
    };
    match r {
        Req::Load { .. } => &[FIRMWARE],
        Req::Map { .. } => &[MEMORY],
        Req::CreateQueue { .. } => &[MEMORY, Fd::Eventfd, Fd::Eventfd],
        _ => &[],
    }
}

fn vid(v: &VRef, mine: &[u32]) -> u32 {
    match *v {
        VRef::Mine(i) if !mine.is_empty() => mine[usize::from(i) % mine.len()],
        VRef::Mine(i) => u32::from(i),
        VRef::Raw(r) => r,
    }
}

fn request(r: &Req, mine: &[u32], fd_len: u64) -> Request {
    let v = |x: &VRef| vid(x, mine);
    match r {
        Req::Hello(version) => Request::Hello {
            version: if *version < 8 { 1 } else { *version },
        },
        Req::ListCoprocs => Request::ListCoprocs,
        Req::Open(real) => Request::OpenVcoproc {
            coproc: if *real { "mcu0".into() } else { "gpu0".into() },
        },
        Req::Load { v: x, len } => Request::LoadFirmware {
            vcoproc: v(x),
            label: "fuzz".into(),
            len: len.map_or(fd_len, u64::from),
        },
        Req::Map {
            v: x,
            iova,
            offset,
            len,
            rw,
            revocable,
        } => Request::Map {
            vcoproc: v(x),
            iova: iova.get(),
            offset: offset.get(),
            len: len.get(),
            perms: if *rw { WirePerms::Rw } else { WirePerms::R },
            kind: if *revocable {
                WireMapKind::Revocable
            } else {
                WireMapKind::Pinned
            },
        },
        Req::CreateQueue {
            v: x,
            iova,
            entries,
        } => Request::CreateQueue {
            vcoproc: v(x),
            iova: iova.get(),
            entries: match *entries {
                Entries::Shift(k) => 1 << (k % 14),
                Entries::Raw(n) => n,
            },
        },
        Req::Unmap { v: x, iova } => Request::Unmap {
            vcoproc: v(x),
            iova: iova.get(),
        },
        Req::MboxWrite {
            v: x,
            index,
            values,
        } => Request::MboxWrite {
            vcoproc: v(x),
            index: *index,
            values: values.iter().copied().take(20).collect(),
        },
        Req::MboxRead(x) => Request::MboxRead { vcoproc: v(x) },
        Req::Console(x) => Request::Console { vcoproc: v(x) },
        Req::Doorbell(x) => Request::Doorbell { vcoproc: v(x) },
        Req::Start(x) => Request::Start { vcoproc: v(x) },
        Req::Stop(x) => Request::Stop { vcoproc: v(x) },
        Req::Reset(x) => Request::Reset { vcoproc: v(x) },
        Req::Destroy(x) => Request::Destroy { vcoproc: v(x) },
        Req::Query(x) => Request::Query { vcoproc: v(x) },
        Req::Subscribe(x) => Request::Subscribe { vcoproc: v(x) },
        Req::ListVcoprocs { domain, mcu } => Request::ListVcoprocs {
            domain: *domain,
            coproc: mcu.map(|m| if m { "mcu0".into() } else { "x".into() }),
        },
        Req::ListDomains => Request::ListDomains,
        Req::ListFaults => Request::ListFaults,
        Req::SchedGet(real) => Request::SchedGet {
            coproc: if *real { "mcu0".into() } else { "nope".into() },
        },
        Req::SchedSet { policy, params } => {
            const POLICIES: [&str; 6] = ["rr", "credit", "priority", "rt", "table", "bogus"];
            const KEYS: [&str; 7] = [
                "slice_us",
                "weight",
                "period_us",
                "budget_us",
                "window",
                "cap_pct",
                "x",
            ];
            Request::SchedSet {
                coproc: "mcu0".into(),
                policy: POLICIES[usize::from(*policy) % POLICIES.len()].into(),
                params: params
                    .iter()
                    .take(8)
                    .map(|(k, val)| (KEYS[usize::from(*k) % KEYS.len()].into(), val.to_string()))
                    .collect(),
            }
        }
        Req::VcoprocSet {
            v: x,
            weight,
            cap,
            priority,
            budget,
            period,
        } => Request::VcoprocSet {
            vcoproc: v(x),
            set: ParamChange {
                weight: *weight,
                cap_pct: *cap,
                priority: *priority,
                budget_us: *budget,
                period_us: *period,
            },
        },
        Req::Demand { v: x, timeout_ms } => Request::SetDemandFaults {
            vcoproc: v(x),
            // Keep stalls short: a stalled vcoproc waits for its timeout.
            timeout_ms: timeout_ms.map(|t| if t > 60_000 { t } else { t % 20 }),
        },
        Req::AllocLocal { v: x, iova, len } => Request::AllocLocal {
            vcoproc: v(x),
            iova: iova.get(),
            len: len.get(),
        },
        Req::FreeLocal { v: x, iova } => Request::FreeLocal {
            vcoproc: v(x),
            iova: iova.get(),
        },
        Req::Revoke { v: x, iova } => Request::Revoke {
            vcoproc: v(x),
            iova: iova.get(),
        },
        Req::ListMappings(x) => Request::ListMappings {
            vcoproc: x.as_ref().map(v),
        },
        Req::Watch => Request::Watch,
    }
}

/// Make one descriptor (None if the system refused).
fn make_fd(f: &Fd) -> Option<OwnedFd> {
    match f {
        Fd::Memfd {
            pages,
            extra,
            content,
            seal_shrink,
            seal_grow,
            seal_write,
            seal_seal,
        } => {
            let fd =
                rustix::fs::memfd_create("fuzz", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                    .ok()?;
            let mut file = std::fs::File::from(fd);
            match content {
                Content::Zeros => {}
                Content::Firmware(i) => {
                    let all = coproc_firmware::ALL;
                    file.write_all(all[usize::from(*i) % all.len()].elf).ok()?;
                }
                Content::Bytes(b) => file.write_all(b).ok()?,
            }
            let len = u64::from(*pages % 64) * 0x1000 + u64::from(*extra % 0x1000);
            let have = file.metadata().ok()?.len();
            file.set_len(have.max(len)).ok()?;
            let mut seals = SealFlags::empty();
            for (on, s) in [
                (*seal_shrink, SealFlags::SHRINK),
                (*seal_grow, SealFlags::GROW),
                (*seal_write, SealFlags::WRITE),
                (*seal_seal, SealFlags::SEAL),
            ] {
                if on {
                    seals |= s;
                }
            }
            rustix::fs::fcntl_add_seals(&file, seals).ok()?;
            Some(OwnedFd::from(file))
        }
        Fd::Eventfd => rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).ok(),
        Fd::PipeRead => rustix::pipe::pipe().ok().map(|(r, _)| r),
        Fd::PipeWrite => rustix::pipe::pipe().ok().map(|(_, w)| w),
        Fd::DevNull => std::fs::File::open("/dev/null").ok().map(OwnedFd::from),
    }
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let d = daemon();
    let uid = 1000 + u32::from(u8::arbitrary(u)? % 4);
    let who = Identity {
        uid,
        gid: uid,
        pid: 4242,
        admin: bool::arbitrary(u)?,
        domain: uid,
        container: None,
    };
    let greet = !u.ratio(1, 16)?;
    let (mut s, mut wakes, mut notices) = Session::open(Arc::clone(d), who);
    if greet {
        let hello = Request::Hello {
            version: coproc_proto::VERSION,
        };
        s.handle(hello, Vec::new()).expect("hello is answered");
    }
    let mut mine: Vec<u32> = Vec::new();
    let mut n = 0;
    while !u.is_empty() && n < 48 {
        n += 1;
        // Out of input: the session still ends properly.
        let Ok(step) = Step::arbitrary(u) else {
            break;
        };
        let fds: Vec<OwnedFd> = if step.stray {
            step.fds.iter().take(4).filter_map(make_fd).collect()
        } else {
            let want = expected(&step.req);
            (0..want.len())
                .filter_map(|i| make_fd(step.fds.get(i).unwrap_or(&want[i])))
                .collect()
        };
        let fd_len = fds
            .first()
            .and_then(|f| rustix::fs::fstat(f).ok())
            .map_or(0, |st| st.st_size as u64);
        let req = request(&step.req, &mine, fd_len);
        let trace = trace().then(|| format!("{req:?} with {} fds", fds.len()));
        let answer = s.handle(req, fds);
        if let Some(t) = trace {
            eprintln!("{t} -> {answer:?}");
        }
        if let Ok(Answer::Opened { vcoproc }) = answer {
            mine.push(vcoproc);
        }
        while let Ok(id) = wakes.try_recv() {
            let _ = s.wake_events(id);
        }
        while notices.try_recv().is_ok() {}
    }
    finish(d, s, uid);
    Ok(())
}

fn finish(d: &Arc<Daemon>, s: Session, uid: u32) {
    s.close();
    let t = d.tables();
    assert!(
        t.vcoprocs.is_empty(),
        "vcoprocs left after close: {:?}",
        t.vcoprocs.keys().collect::<Vec<_>>()
    );
    assert!(
        !t.usage.contains_key(&uid),
        "usage left after close: {:?}",
        t.usage.get(&uid)
    );
    drop(t);
    for p in d.pcoprocs.values() {
        let live: Vec<_> = p
            .vcoprocs()
            .into_iter()
            .filter(|v| v.state != coproc_core::state::VcoprocState::Destroyed)
            .collect();
        assert!(
            live.is_empty(),
            "live vcoprocs on {} after close: {live:?}",
            p.name()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
