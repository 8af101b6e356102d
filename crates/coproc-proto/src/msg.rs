//! Messages. Requests come from domains (and the CLI); each gets exactly one
//! reply with the same `id`; events come unasked, for vcoprocs the session
//! subscribed to. Frames that carry file descriptors say so in the request
//! (`LoadFirmware`, `Map`, `CreateQueue`); any other frame must carry none.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A request with its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the client; echoed in the reply.
    pub id: u64,
    /// What is asked.
    #[serde(flatten)]
    pub req: Request,
}

/// Access permissions of a mapping on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WirePerms {
    /// Read only.
    R,
    /// Read and write.
    Rw,
}

/// Mapping lifetime on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireMapKind {
    /// Until unmapped by its domain.
    Pinned,
    /// Also withdrawable by the daemon or an admin.
    Revocable,
}

/// Requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// First message of a session.
    Hello {
        /// The client's protocol version.
        version: u32,
    },
    /// Pcoprocs this domain may use (admins: all).
    ListCoprocs,
    /// Create a vcoproc on a pcoproc.
    OpenVcoproc {
        /// Pcoproc name.
        coproc: String,
    },
    /// Load firmware from the attached fd (a memfd or file), `len` bytes.
    LoadFirmware {
        /// Vcoproc.
        vcoproc: u32,
        /// Name shown in listings.
        label: String,
        /// Bytes to read from the fd, from offset 0.
        len: u64,
    },
    /// Map `len` bytes of the attached fd from `offset` at `iova`.
    Map {
        /// Vcoproc.
        vcoproc: u32,
        /// Device address.
        iova: u64,
        /// Offset in the fd.
        offset: u64,
        /// Length.
        len: u64,
        /// Permissions.
        perms: WirePerms,
        /// Lifetime.
        kind: WireMapKind,
    },
    /// Create a queue: the attached fds are the ring memory (a memfd of
    /// `queue::bytes_for(entries)` bytes or more, mapped read/write at
    /// `iova`), the doorbell eventfd the domain writes after submitting, and
    /// the completion eventfd the daemon writes when the firmware notifies.
    CreateQueue {
        /// Vcoproc.
        vcoproc: u32,
        /// Where the ring memory appears.
        iova: u64,
        /// Entries per ring (power of two, at most 4096).
        entries: u32,
    },
    /// Remove the mapping at `iova`.
    Unmap {
        /// Vcoproc.
        vcoproc: u32,
        /// Its start.
        iova: u64,
    },
    /// Write mailbox-in words starting at `index`.
    MboxWrite {
        /// Vcoproc.
        vcoproc: u32,
        /// First word.
        index: u32,
        /// Values (at most 16).
        values: Vec<u32>,
    },
    /// Read all mailbox-out words.
    MboxRead {
        /// Vcoproc.
        vcoproc: u32,
    },
    /// The firmware's console output: the lines it printed (the newest
    /// the daemon keeps; older ones are counted as dropped).
    Console {
        /// Vcoproc.
        vcoproc: u32,
    },
    /// Ring the doorbell.
    Doorbell {
        /// Vcoproc.
        vcoproc: u32,
    },
    /// Start (loaded → runnable).
    Start {
        /// Vcoproc.
        vcoproc: u32,
    },
    /// Stop (pause): runnable or waiting → loaded; `Start` resumes it.
    Stop {
        /// Vcoproc.
        vcoproc: u32,
    },
    /// Reset to the freshly loaded firmware.
    Reset {
        /// Vcoproc.
        vcoproc: u32,
    },
    /// Destroy.
    Destroy {
        /// Vcoproc.
        vcoproc: u32,
    },
    /// State and counters of one vcoproc.
    Query {
        /// Vcoproc.
        vcoproc: u32,
    },
    /// Send events (notifications, faults, state changes) of this vcoproc.
    Subscribe {
        /// Vcoproc.
        vcoproc: u32,
    },
    /// Vcoprocs visible to this session (its domain's; admins: all),
    /// optionally filtered.
    ListVcoprocs {
        /// Only this domain (uid).
        #[serde(default)]
        domain: Option<u32>,
        /// Only this pcoproc.
        #[serde(default)]
        coproc: Option<String>,
    },
    /// Domains with vcoprocs (admins: all; others: their own).
    ListDomains,
    /// Fault records visible to this session.
    ListFaults,
    /// Policy, parameters and standings of a pcoproc.
    SchedGet {
        /// Pcoproc.
        coproc: String,
    },
    /// Change a pcoproc's policy (admin).
    SchedSet {
        /// Pcoproc.
        coproc: String,
        /// Policy name.
        policy: String,
        /// Its parameters, `key=value`.
        #[serde(default)]
        params: Vec<(String, String)>,
    },
    /// Change a vcoproc's scheduling parameters (admin); fields left out
    /// keep their value.
    VcoprocSet {
        /// Vcoproc.
        vcoproc: u32,
        /// The changes.
        set: ParamChange,
    },
    /// Turn demand faults on (`timeout_ms`: the stall timeout, 1..=60000)
    /// or off (`null` or left out) for one of the session's own vcoprocs.
    /// With them on, a missing page in the iova window stalls the vcoproc
    /// and sends a `page-fault` event; a `map` covering the address resumes
    /// it; the timeout turns the stall into a fault.
    SetDemandFaults {
        /// Vcoproc.
        vcoproc: u32,
        /// Stall timeout in milliseconds; `None` turns demand faults off.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Allocate `len` bytes of zeroed device-local memory at `iova` in the
    /// vcoproc (page-aligned, inside the window, overlapping no mapping);
    /// counted against the domain's mapped-bytes quota until freed or the
    /// vcoproc is destroyed. Only the vcoproc can reach it.
    AllocLocal {
        /// Vcoproc.
        vcoproc: u32,
        /// Device address of the first byte.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Free the device-local memory at `iova`.
    FreeLocal {
        /// Vcoproc.
        vcoproc: u32,
        /// Its start.
        iova: u64,
    },
    /// Revoke the mapping at `iova`: its owner may revoke any of its
    /// mappings, an admin only revocable ones. Answers `revoked` or
    /// `not-mapped`; when it answers, the device cannot touch the pages.
    Revoke {
        /// Vcoproc.
        vcoproc: u32,
        /// The mapping's start.
        iova: u64,
    },
    /// Mappings visible to this session (its domain's; admins: all),
    /// optionally of one vcoproc.
    ListMappings {
        /// Only this vcoproc.
        #[serde(default)]
        vcoproc: Option<u32>,
    },
    /// Send this session the daemon's event stream from now on: vcoproc
    /// state changes and faults, revokes, policy and parameter changes
    /// (its own domain's and of the pcoprocs its rule allows; admins:
    /// all).
    Watch,
}

/// A mapping as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingInfo {
    /// Vcoproc.
    pub vcoproc: u32,
    /// Device address of the first byte.
    pub iova: u64,
    /// Length in bytes.
    pub len: u64,
    /// Permissions.
    pub perms: WirePerms,
    /// Lifetime.
    pub kind: WireMapKind,
    /// Owner (uid).
    pub domain: u32,
}

/// Changes to a vcoproc's scheduling parameters; `None` keeps a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamChange {
    /// Weight (fair-share policies).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Cap in percent; 0 removes the cap.
    #[serde(default)]
    pub cap_pct: Option<u32>,
    /// Fixed priority.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Reservation budget, µs; 0 removes the reservation.
    #[serde(default)]
    pub budget_us: Option<u64>,
    /// Reservation period, µs.
    #[serde(default)]
    pub period_us: Option<u64>,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The frame or message was malformed.
    BadRequest,
    /// Protocol version not spoken.
    BadVersion,
    /// Hello was not the first request, or came twice.
    BadSequence,
    /// No such object (or not visible to this domain).
    NotFound,
    /// Not allowed for this domain.
    PermissionDenied,
    /// A quota would be exceeded.
    Quota,
    /// An argument is out of range or inconsistent.
    InvalidArgument,
    /// The file descriptors attached do not fit the request.
    BadFd,
    /// Not allowed in the vcoproc's state.
    State,
    /// The device refused.
    Device,
    /// The daemon failed.
    Internal,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Class of error.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl WireError {
    /// Build one.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }
}

impl ErrorCode {
    /// The name the protocol documents (and the wire carries), e.g.
    /// `not-found`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::BadVersion => "bad-version",
            ErrorCode::BadSequence => "bad-sequence",
            ErrorCode::NotFound => "not-found",
            ErrorCode::PermissionDenied => "permission-denied",
            ErrorCode::Quota => "quota",
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::BadFd => "bad-fd",
            ErrorCode::State => "state",
            ErrorCode::Device => "device",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for WireError {}

/// The identity the daemon saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Peer uid, as the daemon's user namespace sees it (a container's
    /// uids mapped to host uids).
    pub uid: u32,
    /// Peer gid.
    pub gid: u32,
    /// Peer pid.
    pub pid: i32,
    /// Whether admin verbs are allowed.
    pub admin: bool,
    /// The domain: the number every `domain` field names. The uid for a
    /// peer outside containers; a number of the daemon's choosing (at or
    /// above 2^31) for a (uid, container) pair. 0 from daemons before it.
    #[serde(default)]
    pub domain: u32,
    /// The peer's container (the cgroup path that made it one,
    /// docs/daemon.md), or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// A pcoproc as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoprocInfo {
    /// Name.
    pub name: String,
    /// Device class.
    pub class: String,
    /// Model / driver.
    pub model: String,
    /// Policy name.
    pub policy: String,
    /// Vcoprocs on it.
    pub vcoprocs: u32,
    /// Busy share of the device over the last 10 s, percent (the same as
    /// `utilisation_10s_pct`; daemons before it: since the device started).
    pub utilisation_pct: f64,
    /// Busy share over the last second, percent (0 from older daemons).
    #[serde(default)]
    pub utilisation_1s_pct: f64,
    /// Busy share over the last 10 s, percent (0 from older daemons).
    #[serde(default)]
    pub utilisation_10s_pct: f64,
    /// Device time spent running vcoprocs since the device started, ns.
    #[serde(default)]
    pub busy_ns: u64,
    /// Start of the device's iova window (where mappings may be placed).
    #[serde(default)]
    pub iova_base: u64,
    /// Size of the iova window.
    #[serde(default)]
    pub iova_size: u64,
    /// Memory of the device itself in bytes (a GPU's device-local heaps);
    /// 0 where the device has none of its own (mcu), or from a daemon that
    /// does not report it.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Class-specific limits by name (for a GPU: workgroup sizes and
    /// counts, binding alignments and ranges, bind groups, workgroup
    /// memory, subgroup size, push-constant bytes); empty from a daemon
    /// that does not report them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, u64>,
    /// Optional features the device has (for a GPU: `f16`, `f64`, `i64`,
    /// `i64-atomics`, `i16`, `subgroups`, `robustness2`, `storage-images`,
    /// `zero-copy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// `running`, or `failed` once device or policy code panicked where no
    /// single vcoproc could be blamed (nothing runs on it any more).
    #[serde(default = "running")]
    pub state: String,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

fn running() -> String {
    "running".into()
}

/// A fault as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultInfo {
    /// Pcoproc.
    pub coproc: String,
    /// Vcoproc.
    pub vcoproc: u32,
    /// Its domain.
    pub domain: u32,
    /// When, ns since the pcoproc started (monotonic).
    pub at_ns: u64,
    /// When, wall clock: ns since the Unix epoch (0 from older daemons).
    #[serde(default)]
    pub at_unix_ns: u64,
    /// Faulting address.
    pub addr: Option<u64>,
    /// read / write / fetch / none.
    pub access: String,
    /// Program counter.
    pub pc: Option<u64>,
    /// Reason.
    pub reason: String,
}

/// A vcoproc as listed or queried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcoprocInfo {
    /// Id.
    pub id: u32,
    /// Pcoproc.
    pub coproc: String,
    /// Domain (uid).
    pub domain: u32,
    /// Firmware label.
    pub firmware: String,
    /// State.
    pub state: String,
    /// Device run time, ns.
    pub run_ns: u64,
    /// Slices.
    pub slices: u64,
    /// Context switches onto it.
    pub switches: u64,
    /// Faults.
    pub faults: u64,
    /// Mappings.
    pub mappings: u32,
    /// Bytes mapped.
    pub mapped_bytes: u64,
    /// Exit code once stopped.
    pub exit_code: Option<u32>,
    /// Scheduling weight.
    #[serde(default)]
    pub weight: u32,
    /// Scheduling priority.
    #[serde(default)]
    pub priority: i32,
    /// Cap in percent.
    #[serde(default)]
    pub cap_pct: Option<u32>,
    /// Reservation (budget, period) in µs.
    #[serde(default)]
    pub reservation_us: Option<(u64, u64)>,
    /// Longest wake→run latency so far, ns.
    #[serde(default)]
    pub run_delay_max_ns: u64,
    /// Doorbells its domain rang (0 from older daemons).
    #[serde(default)]
    pub doorbells: u64,
    /// Slices cut short by a preempt request (0 from older daemons).
    #[serde(default)]
    pub preemptions: u64,
    /// Its latest fault, kept with the vcoproc as long as it exists
    /// (other domains' faults never push it out).
    #[serde(default)]
    pub last_fault: Option<Box<FaultInfo>>,
}

/// A domain as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Uid.
    pub uid: u32,
    /// The domain's number (as `domain` fields name it; the uid outside
    /// containers; 0 from daemons before it).
    #[serde(default)]
    pub domain: u32,
    /// Its container (a cgroup path), or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Open sessions.
    pub sessions: u32,
    /// Vcoprocs.
    pub vcoprocs: u32,
    /// Bytes mapped.
    pub mapped_bytes: u64,
    /// Mappings.
    #[serde(default)]
    pub mappings: u32,
}

/// One vcoproc's standing: id, whether queued, policy figures.
pub type StandingInfo = (u32, bool, Vec<(String, i64)>);

/// A pcoproc's scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedInfo {
    /// Pcoproc.
    pub coproc: String,
    /// Policy.
    pub policy: String,
    /// Policy parameters.
    pub params: Vec<(String, String)>,
    /// Per vcoproc: id, queued, figures.
    pub standings: Vec<StandingInfo>,
}

/// Successful answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    /// To Hello.
    Welcome {
        /// Daemon protocol version.
        version: u32,
        /// Who we are to it.
        identity: Identity,
    },
    /// Done, nothing to say.
    Done,
    /// A vcoproc was created.
    Opened {
        /// Its id.
        vcoproc: u32,
    },
    /// Mailbox-out words.
    Mailbox {
        /// The 16 words.
        words: Vec<u32>,
        /// Latest notification sequence number.
        notify_seq: u64,
    },
    /// Console lines, oldest first.
    Console {
        /// The lines kept (without their newlines).
        lines: Vec<String>,
        /// Lines printed before these that were not kept.
        dropped: u64,
    },
    /// Pcoprocs.
    Coprocs {
        /// The list.
        coprocs: Vec<CoprocInfo>,
    },
    /// Vcoprocs.
    Vcoprocs {
        /// The list.
        vcoprocs: Vec<VcoprocInfo>,
    },
    /// One vcoproc.
    Vcoproc {
        /// It.
        info: VcoprocInfo,
    },
    /// Domains.
    Domains {
        /// The list.
        domains: Vec<DomainInfo>,
    },
    /// Faults.
    Faults {
        /// The list.
        faults: Vec<FaultInfo>,
    },
    /// Scheduler.
    Sched {
        /// It.
        sched: SchedInfo,
    },
    /// To Revoke: the mapping was removed.
    Revoked {
        /// Its length.
        len: u64,
    },
    /// To Revoke: no mapping starts there (nothing to do).
    NotMapped,
    /// Mappings.
    Mappings {
        /// The list.
        mappings: Vec<MappingInfo>,
    },
}

/// Events from the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The firmware notified (mailbox written).
    Notify {
        /// Vcoproc.
        vcoproc: u32,
        /// Sequence number.
        seq: u64,
        /// Tag.
        tag: u32,
    },
    /// The vcoproc faulted.
    Fault {
        /// The record.
        fault: FaultInfo,
    },
    /// The vcoproc changed state (stopped, faulted, destroyed).
    State {
        /// Vcoproc.
        vcoproc: u32,
        /// New state.
        state: String,
    },
    /// The vcoproc stalled on a missing page (demand faults): map a range
    /// covering `iova` to resume it.
    PageFault {
        /// Vcoproc.
        vcoproc: u32,
        /// The address the device reported.
        iova: u64,
        /// "read" or "write".
        access: String,
    },
    /// An admin revoked one of the vcoproc's mappings: the device can no
    /// longer touch it; the quota it used is given back. (To `watch`ers:
    /// any revoke that removed a mapping, the domain's own included.)
    MappingRevoked {
        /// Vcoproc.
        vcoproc: u32,
        /// The mapping's start.
        iova: u64,
        /// Its length.
        len: u64,
        /// Who revoked it (uid).
        by: u32,
    },
    /// (`watch` only.) A vcoproc appeared, changed state or went. States
    /// as in listings, except that `runnable`, `running` and `waiting`
    /// are all `running`; a vcoproc that went is `destroyed`.
    VcoprocState {
        /// Vcoproc.
        vcoproc: u32,
        /// Pcoproc.
        coproc: String,
        /// Its domain (uid).
        domain: u32,
        /// Firmware label.
        firmware: String,
        /// The state now.
        state: String,
        /// The state before; none for a vcoproc seen for the first time.
        previous: Option<String>,
    },
    /// (`watch` only.) An admin changed a pcoproc's policy.
    PolicyChanged {
        /// Pcoproc.
        coproc: String,
        /// The new policy.
        policy: String,
        /// Its parameters as given.
        params: Vec<(String, String)>,
        /// Who (uid).
        by: u32,
    },
    /// (`watch` only.) An admin changed a vcoproc's scheduling parameters.
    ParamsChanged {
        /// Vcoproc.
        vcoproc: u32,
        /// Its domain (uid).
        domain: u32,
        /// The change as asked (fields left out unchanged).
        set: ParamChange,
        /// Who (uid).
        by: u32,
    },
    /// (`watch` only.) This session did not keep up: `missed` events of
    /// the stream were dropped for it.
    Lagged {
        /// Events dropped.
        missed: u64,
    },
}

/// What the daemon sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerFrame {
    /// The reply to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// Its outcome.
        result: Result<Answer, WireError>,
    },
    /// An event.
    Event {
        /// It.
        event: Event,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coproc_info_carries_memory_and_old_replies_still_decode() {
        let info = CoprocInfo {
            name: "gpu0".into(),
            class: "vulkan".into(),
            model: "llvmpipe (LLVM 15.0.6, 256 bits) (llvmpipe Mesa 22.3.6)".into(),
            policy: "rr".into(),
            vcoprocs: 2,
            utilisation_pct: 12.5,
            utilisation_1s_pct: 50.0,
            utilisation_10s_pct: 12.5,
            busy_ns: 1_000,
            iova_base: 0x1000_0000,
            iova_size: 0xe000_0000,
            memory_bytes: 8 << 30,
            limits: [("subgroup_size".to_string(), 8)].into(),
            features: vec!["f16".into()],
            state: "running".into(),
            failure: None,
        };
        let text = serde_json::to_string(&info).unwrap();
        assert!(text.contains("\"memory_bytes\":8589934592"), "{text}");
        assert!(text.contains("\"limits\":{\"subgroup_size\":8}"), "{text}");
        assert!(text.contains("\"features\":[\"f16\"]"), "{text}");
        assert_eq!(serde_json::from_str::<CoprocInfo>(&text).unwrap(), info);
        // A daemon from before memory_bytes (and before the iova window).
        let old = r#"{"name":"mcu0","class":"mcu","model":"Cortex-M4","policy":"rr","vcoprocs":0,"utilisation_pct":0.0}"#;
        let o: CoprocInfo = serde_json::from_str(old).unwrap();
        assert_eq!((o.memory_bytes, o.iova_base, o.iova_size), (0, 0, 0));
        assert_eq!((o.state.as_str(), o.failure), ("running", None));
    }

    #[test]
    fn error_code_names_are_the_wire_names() {
        for c in [
            ErrorCode::BadRequest,
            ErrorCode::BadVersion,
            ErrorCode::BadSequence,
            ErrorCode::NotFound,
            ErrorCode::PermissionDenied,
            ErrorCode::Quota,
            ErrorCode::InvalidArgument,
            ErrorCode::BadFd,
            ErrorCode::State,
            ErrorCode::Device,
            ErrorCode::Internal,
        ] {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
        let e = WireError::new(ErrorCode::NotFound, "no vcoproc 9");
        assert_eq!(e.to_string(), "not-found: no vcoproc 9");
    }

    #[test]
    fn identities_and_domains_carry_the_container_and_old_ones_still_decode() {
        let d = DomainInfo {
            uid: 0,
            domain: 0x8000_0001,
            container: Some("/machine.slice/libpod-ab.scope".into()),
            sessions: 1,
            vcoprocs: 2,
            mapped_bytes: 0,
            mappings: 0,
        };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DomainInfo>(&text).unwrap(), d);
        // A host domain carries no container; a daemon from before neither.
        let old = r#"{"uid":1000,"sessions":1,"vcoprocs":0,"mapped_bytes":0}"#;
        let o: DomainInfo = serde_json::from_str(old).unwrap();
        assert_eq!((o.domain, o.container), (0, None));
        let host = serde_json::to_string(&Identity {
            uid: 1000,
            gid: 1000,
            pid: 1,
            admin: false,
            domain: 1000,
            container: None,
        })
        .unwrap();
        assert!(!host.contains("container"), "{host}");
        let old = r#"{"uid":0,"gid":0,"pid":7,"admin":true}"#;
        let o: Identity = serde_json::from_str(old).unwrap();
        assert_eq!((o.domain, o.container), (0, None));
    }
}
