//! Start-up configuration: which pcoprocs exist (the equivalent of the
//! RFC's device tree), their policies, and which domains may use what with
//! which quotas. TOML; unknown keys are errors with their line.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use thiserror::Error;

/// The configuration used when no file is given.
pub const DEFAULT: &str = r#"# coprocd configuration (this is the built-in default).

[daemon]
# socket = "/run/coproc/coprocd.sock"  # default: $XDG_RUNTIME_DIR/coproc/ or /run/coproc/ for root
# admin_gid = 0                        # members of this group may use admin verbs (root always may)
# Limits a hostile local user cannot get around (docs/daemon.md):
# max_connections_per_uid = 64         # sessions at once per domain (admins: no limit)
# hello_timeout_ms = 5000              # close a connection silent this long before hello
# write_timeout_ms = 5000              # end a session that does not read its replies
# request_rate = 5000                  # requests per second per session (device work counts 10)
# request_burst = 500                  # requests at once above the rate
# domain_request_rate = 20000          # requests per second of all a domain's sessions together
# domain_request_burst = 2000
# Prometheus metrics (docs/metrics.md), off unless set:
# metrics_listen = "127.0.0.1:9464"   # loopback TCP only
# metrics_socket = "/run/coproc/metrics.sock"
# Cgroups that are containers (docs/daemon.md): a peer whose cgroup or an
# ancestor matches one is its own domain per (uid, container), and is no
# admin unless a [[domain]] rule with `cgroup` says `admin = true`. `*`
# matches within a path component, `**` across them. Default:
# container_cgroups = ["**/libpod-*", "**/docker-*.scope", "/docker/*", "**/crio-*",
#   "**/cri-containerd-*", "/kubepods/pod*", "/kubepods/*/pod*",
#   "/kubepods.slice/**-pod*.slice", "/machine.slice/*", "/lxc.payload.*", "/lxc/*"]

[[pcoproc]]
name = "mcu0"
class = "mcu"
# policy: rr | credit | priority | rt | table (docs/scheduling.md); its
# parameters as key = value (a list repeats a key, e.g. table windows).
policy = "rr"
policy_params = { slice_us = 5000 }
# class options of mcu: max_contexts, code_kib and data_kib (each vcoproc's
# code and data memory, 4..16384 KiB in whole 4 KiB pages; default 1024 and 256)
options = { max_contexts = 64 }

# A container rule comes first (the first matching rule wins), e.g.:
# [[domain]]
# cgroup = "**/libpod-*"   # these containers, each its own domain
# uids = "*"               # (default) and these (host) uids in them
# pcoprocs = ["mcu0"]
# max_vcoprocs = 4
# admin = false            # (default) root in such a container is no admin

[[domain]]
# Who: "*" for every local user, or a list of uids.
uids = "*"
pcoprocs = ["mcu0"]
max_vcoprocs = 16
max_mapped_bytes = 268435456
max_queues = 16
max_mappings = 64

# A GPU shared through Vulkan compute (docs/gpu.md); add its name to the
# domain rule's pcoprocs too. The daemon does not start if no Vulkan
# device matches.
# [[pcoproc]]
# name = "gpu0"
# class = "vulkan"
# policy = "rr"
# policy_params = { slice_us = 5000 }
# # device: "auto" (discrete, integrated, virtual, then CPU), an index, or
# # a name substring; import: "auto" (zero-copy where possible) or "copy";
# # pipeline_cache: a directory (default: pipeline-cache in the systemd
# # StateDirectory, else none)
# options = { device = "auto", import = "auto", watchdog_ms = 2000, max_contexts = 256, local_memory_mb = 256 }
"#;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Not valid TOML or not a valid configuration (message has the line).
    #[error("{0}")]
    Parse(String),
    /// Valid TOML, inconsistent meaning.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Daemon settings.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Physical coprocessors.
    #[serde(default, rename = "pcoproc")]
    pub pcoprocs: Vec<PcoprocConfig>,
    /// Domain rules, first match wins.
    #[serde(default, rename = "domain")]
    pub domains: Vec<DomainRule>,
}

/// `[daemon]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Socket path.
    pub socket: Option<PathBuf>,
    /// Group whose members are administrators.
    pub admin_gid: Option<u32>,
    /// Connections (each one session) a domain (a uid, or a uid in one
    /// container) may hold at once; administrators are not limited.
    #[serde(default = "default_max_connections")]
    pub max_connections_per_uid: u32,
    /// A connection that has not said hello within this time is closed.
    #[serde(default = "default_hello_timeout")]
    pub hello_timeout_ms: u64,
    /// A reply or event the client does not take within this time ends its
    /// session (a client that never reads cannot hold the daemon).
    #[serde(default = "default_write_timeout")]
    pub write_timeout_ms: u64,
    /// Requests a session may make per second, on average (token bucket).
    /// Requests that do device work (map, unmap, start, stop, reset,
    /// load-firmware, create-queue, destroy, revoke, ...) count as
    /// [`RUNNER_REQUEST_COST`] each. Over budget, the session waits; others
    /// do not.
    #[serde(default = "default_request_rate")]
    pub request_rate: u32,
    /// Requests a session may make at once above its rate (bucket size).
    #[serde(default = "default_request_burst")]
    pub request_burst: u32,
    /// Requests all sessions of one domain may make per second together (a
    /// second bucket, so more sessions do not mean more requests).
    #[serde(default = "default_domain_request_rate")]
    pub domain_request_rate: u32,
    /// Requests all sessions of one domain may make at once above that rate.
    #[serde(default = "default_domain_request_burst")]
    pub domain_request_burst: u32,
    /// Serve Prometheus metrics over HTTP on this TCP address (loopback
    /// only: the metrics name every domain's vcoprocs); off when unset.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve the same metrics on this Unix socket path; off when unset.
    #[serde(default)]
    pub metrics_socket: Option<PathBuf>,
    /// Cgroup patterns that make a peer's cgroup (or an ancestor) a
    /// container (`crate::identity`); every `[[domain]] cgroup` counts too.
    #[serde(default = "default_container_cgroups")]
    pub container_cgroups: Vec<String>,
}

/// The container runtimes' cgroups: podman, docker (systemd and cgroupfs
/// drivers), CRI-O, containerd, Kubernetes pods (cgroupfs and systemd
/// drivers), systemd machines (nspawn, libvirt) and LXC.
pub fn default_container_cgroups() -> Vec<String> {
    [
        "**/libpod-*",
        "**/docker-*.scope",
        "/docker/*",
        "**/crio-*",
        "**/cri-containerd-*",
        "/kubepods/pod*",
        "/kubepods/*/pod*",
        "/kubepods.slice/**-pod*.slice",
        "/machine.slice/*",
        "/lxc.payload.*",
        "/lxc/*",
    ]
    .map(String::from)
    .to_vec()
}

/// What a request that does work on a pcoproc's runner counts against a
/// session's request budget, in requests.
pub const RUNNER_REQUEST_COST: u32 = 10;

fn default_max_connections() -> u32 {
    64
}
fn default_hello_timeout() -> u64 {
    5_000
}
fn default_write_timeout() -> u64 {
    5_000
}
fn default_request_rate() -> u32 {
    5_000
}
fn default_request_burst() -> u32 {
    500
}
fn default_domain_request_rate() -> u32 {
    20_000
}
fn default_domain_request_burst() -> u32 {
    2_000
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: None,
            admin_gid: None,
            max_connections_per_uid: default_max_connections(),
            hello_timeout_ms: default_hello_timeout(),
            write_timeout_ms: default_write_timeout(),
            request_rate: default_request_rate(),
            request_burst: default_request_burst(),
            domain_request_rate: default_domain_request_rate(),
            domain_request_burst: default_domain_request_burst(),
            metrics_listen: None,
            metrics_socket: None,
            container_cgroups: default_container_cgroups(),
        }
    }
}

/// `[[pcoproc]]`: read as written (`class` and `options` side by side),
/// then checked into a [`PcoprocConfig`] whose class options are typed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPcoproc {
    name: String,
    class: String,
    #[serde(default = "default_policy")]
    policy: String,
    #[serde(default)]
    policy_params: BTreeMap<String, ParamValue>,
    #[serde(default)]
    options: toml::Table,
}

/// `[[pcoproc]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawPcoproc")]
pub struct PcoprocConfig {
    /// Name.
    pub name: String,
    /// Its device class and that class's options.
    pub class: ClassOptions,
    /// Policy name.
    pub policy: String,
    /// Policy parameters.
    pub policy_params: BTreeMap<String, ParamValue>,
}

impl TryFrom<RawPcoproc> for PcoprocConfig {
    type Error = String;

    fn try_from(raw: RawPcoproc) -> Result<Self, String> {
        if !CLASSES.contains(&raw.class.as_str()) {
            return Err(format!(
                "pcoproc {:?}: unknown class {:?} (known: {})",
                raw.name,
                raw.class,
                CLASSES.join(", ")
            ));
        }
        let mut tagged = toml::Table::new();
        tagged.insert("class".into(), raw.class.clone().into());
        tagged.insert("options".into(), raw.options.into());
        let class = toml::Value::Table(tagged).try_into().map_err(|e| {
            format!(
                "pcoproc {:?}: {} options: {}",
                raw.name,
                raw.class,
                e.to_string().trim_end()
            )
        })?;
        Ok(PcoprocConfig {
            name: raw.name,
            class,
            policy: raw.policy,
            policy_params: raw.policy_params,
        })
    }
}

fn default_policy() -> String {
    "rr".into()
}

/// A policy parameter's value: text, a number, or a list (the key repeated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// `key = 5000`.
    Number(i64),
    /// `key = "text"`.
    Text(String),
    /// `key = ["a", "b"]`: the key given once per element.
    List(Vec<String>),
}

/// Classes a pcoproc may have.
pub const CLASSES: &[&str] = &["mcu", "vulkan"];

/// A pcoproc's class and its options: `class = "mcu"` with
/// `options = { … }` in the file. Every class has its own option type, so
/// an option of another class, a misspelt one or a wrong type is refused
/// with the key's path. Values are range-checked by
/// [`PcoprocConfig::device`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    tag = "class",
    content = "options",
    rename_all = "lowercase",
    deny_unknown_fields
)]
pub enum ClassOptions {
    /// `class = "mcu"`.
    Mcu(McuOptions),
    /// `class = "vulkan"`.
    Vulkan(VulkanOptions),
}

impl ClassOptions {
    /// The class's name as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            ClassOptions::Mcu(_) => "mcu",
            ClassOptions::Vulkan(_) => "vulkan",
        }
    }
}

/// Options of the `mcu` class; absent ones take the device's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McuOptions {
    /// Most vcoprocs at once (1..=65536).
    pub max_contexts: Option<u32>,
    /// Each vcoproc's code memory, KiB (4..=16384, whole 4 KiB pages).
    pub code_kib: Option<u32>,
    /// Each vcoproc's data memory, KiB (4..=16384, whole 4 KiB pages).
    pub data_kib: Option<u32>,
}

/// Options of the `vulkan` class; absent ones take the device's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VulkanOptions {
    /// Which GPU.
    pub device: Option<GpuChoice>,
    /// How domain memory reaches the GPU.
    pub import: Option<ImportMode>,
    /// Longest one command may run (1..=60000 ms).
    pub watchdog_ms: Option<u64>,
    /// Most vcoprocs at once (1..=65536).
    pub max_contexts: Option<u32>,
    /// Most device-local memory per vcoproc, MiB (0..=1048576).
    pub local_memory_mb: Option<u64>,
    /// The pipeline cache's directory: an absolute path, or "" for none;
    /// by default `pipeline-cache` in the state directory systemd gives
    /// the daemon (`StateDirectory=`), else none.
    pub pipeline_cache: Option<String>,
}

/// `device = "auto"`, an index, or a name substring.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub enum GpuChoice {
    /// `device = 1` (or `"1"`).
    Index(usize),
    /// `device = "auto"` or a name substring.
    Text(String),
}

impl TryFrom<toml::Value> for GpuChoice {
    type Error = String;

    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(n) => usize::try_from(n).map(GpuChoice::Index).map_err(|_| {
                format!("device index {n} is negative (use \"auto\", an index or a name)")
            }),
            toml::Value::String(s) if !s.trim().is_empty() => {
                Ok(GpuChoice::Text(s.trim().to_string()))
            }
            _ => {
                Err("device must be \"auto\", a device index or a non-empty name substring".into())
            }
        }
    }
}

/// `import = "auto"` (zero-copy where the device can) or `"copy"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportMode {
    /// Zero-copy where possible.
    Auto,
    /// Always staged copies.
    Copy,
}

/// A pcoproc's device as its class and options describe it. A class is
/// there only when coprocd is built with its cargo feature (`mcu`,
/// `vulkan`; both by default).
#[derive(Debug, Clone)]
pub enum DeviceConfig {
    /// `class = "mcu"`.
    #[cfg(feature = "mcu")]
    Mcu(coproc_mcu::McuConfig),
    /// `class = "vulkan"`.
    #[cfg(feature = "vulkan")]
    Vulkan(coproc_vulkan::VulkanConfig),
}

/// `value`, if given, checked to lie in `lo..=hi`.
fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: Option<T>,
    lo: T,
    hi: T,
) -> Result<Option<T>, String> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(format!("{key} must be in {lo}..={hi}")),
        v => Ok(v),
    }
}

impl PcoprocConfig {
    /// The device this pcoproc asks for: its options range-checked (errors
    /// name the pcoproc and the option). Nothing is opened here: whether a
    /// Vulkan device exists is found out when the daemon starts.
    pub fn device(&self) -> Result<DeviceConfig, ConfigError> {
        self.device_checked()
            .map_err(|what| ConfigError::Invalid(format!("pcoproc {:?}: {what}", self.name)))
    }

    fn device_checked(&self) -> Result<DeviceConfig, String> {
        let not_built = |class: &str| {
            format!("class {class} is not built into this coprocd (cargo feature `{class}`)")
        };
        match &self.class {
            ClassOptions::Mcu(o) => {
                let max_contexts = in_range("max_contexts", o.max_contexts, 1, 65536)?;
                let code_kib = in_range("code_kib", o.code_kib, 4, 16 << 10)?;
                let data_kib = in_range("data_kib", o.data_kib, 4, 16 << 10)?;
                #[cfg(feature = "mcu")]
                {
                    let mut mcu = coproc_mcu::McuConfig::default();
                    if let Some(n) = max_contexts {
                        mcu.max_contexts = n;
                    }
                    // Code and data memory of every vcoproc, in KiB.
                    if let Some(k) = code_kib {
                        mcu.code_size = k << 10;
                    }
                    if let Some(k) = data_kib {
                        mcu.data_size = k << 10;
                    }
                    mcu.validate().map_err(|e| e.to_string())?;
                    Ok(DeviceConfig::Mcu(mcu))
                }
                #[cfg(not(feature = "mcu"))]
                {
                    let _ = (max_contexts, code_kib, data_kib);
                    Err(not_built("mcu"))
                }
            }
            ClassOptions::Vulkan(o) => {
                let max_contexts = in_range("max_contexts", o.max_contexts, 1, 65536)?;
                let watchdog_ms = in_range("watchdog_ms", o.watchdog_ms, 1, 60_000)?;
                let local_mb = in_range("local_memory_mb", o.local_memory_mb, 0, 1 << 20)?;
                #[cfg(feature = "vulkan")]
                {
                    let _ = not_built;
                    let mut vk = coproc_vulkan::VulkanConfig::default();
                    match &o.device {
                        None => {}
                        Some(GpuChoice::Index(i)) => {
                            vk.selector = coproc_vulkan::Selector::Index(*i);
                        }
                        Some(GpuChoice::Text(s)) => vk.selector = coproc_vulkan::Selector::parse(s),
                    }
                    match o.import {
                        None => {}
                        Some(ImportMode::Auto) => vk.import = coproc_vulkan::Import::Auto,
                        Some(ImportMode::Copy) => vk.import = coproc_vulkan::Import::Copy,
                    }
                    if let Some(ms) = watchdog_ms {
                        vk.watchdog = std::time::Duration::from_millis(ms);
                    }
                    if let Some(n) = max_contexts {
                        vk.max_contexts = n;
                    }
                    if let Some(mb) = local_mb {
                        vk.local_memory = mb << 20;
                    }
                    vk.pipeline_cache =
                        match o.pipeline_cache.as_deref() {
                            None => std::env::var_os("STATE_DIRECTORY")
                                .map(|d| std::path::PathBuf::from(d).join("pipeline-cache")),
                            Some("") => None,
                            Some(s) if s.starts_with('/') => Some(s.into()),
                            Some(_) => return Err(
                                "pipeline_cache must be an absolute directory path or \"\" (none)"
                                    .into(),
                            ),
                        };
                    Ok(DeviceConfig::Vulkan(vk))
                }
                #[cfg(not(feature = "vulkan"))]
                {
                    let _ = (max_contexts, watchdog_ms, local_mb);
                    Err(not_built("vulkan"))
                }
            }
        }
    }

    /// The policy parameters as the `key=value` pairs policies take.
    pub fn params(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in &self.policy_params {
            match v {
                ParamValue::Number(n) => out.push((k.clone(), n.to_string())),
                ParamValue::Text(t) => out.push((k.clone(), t.clone())),
                ParamValue::List(l) => out.extend(l.iter().map(|t| (k.clone(), t.clone()))),
            }
        }
        out
    }
}

/// Which users a rule covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Uids {
    /// `"*"`: everyone.
    All(String),
    /// These uids.
    List(Vec<u32>),
}

/// `[[domain]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainRule {
    /// Who (`"*"` when not given).
    #[serde(default = "all_uids")]
    pub uids: Uids,
    /// Only peers in a container whose cgroup path matches this pattern
    /// (`crate::identity::glob_match`); each container is its own domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Whether administrators (by uid or group) inside these containers
    /// stay administrators; only with `cgroup`. Outside containers admin
    /// rights do not depend on rules.
    #[serde(default)]
    pub admin: bool,
    /// Pcoprocs they may use.
    pub pcoprocs: Vec<String>,
    /// Most vcoprocs at once.
    #[serde(default = "default_max_vcoprocs")]
    pub max_vcoprocs: u32,
    /// Most bytes mapped at once, over all their vcoprocs.
    #[serde(default = "default_max_mapped")]
    pub max_mapped_bytes: u64,
    /// Most queues at once.
    #[serde(default = "default_max_queues")]
    pub max_queues: u32,
    /// Most mappings at once, over all their vcoprocs (queues count: each
    /// maps its ring memory).
    #[serde(default = "default_max_mappings")]
    pub max_mappings: u32,
}

fn all_uids() -> Uids {
    Uids::All("*".to_string())
}

fn default_max_mappings() -> u32 {
    64
}

fn default_max_vcoprocs() -> u32 {
    16
}
fn default_max_mapped() -> u64 {
    256 << 20
}
fn default_max_queues() -> u32 {
    16
}

impl DomainRule {
    /// Whether the rule covers `uid` in `container` (none: outside
    /// containers). A rule without `cgroup` covers its uids anywhere.
    pub fn covers(&self, uid: u32, container: Option<&str>) -> bool {
        let uid_ok = match &self.uids {
            Uids::All(_) => true,
            Uids::List(l) => l.contains(&uid),
        };
        let where_ok = match (&self.cgroup, container) {
            (None, _) => true,
            (Some(p), Some(c)) => crate::identity::glob_match(p, c),
            (Some(_), None) => false,
        };
        uid_ok && where_ok
    }
}

impl Config {
    /// Parse and check a configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// The built-in default.
    pub fn default_config() -> Config {
        Config::parse(DEFAULT).expect("the built-in configuration is valid")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.daemon;
        for (name, v) in [
            (
                "max_connections_per_uid",
                u64::from(d.max_connections_per_uid),
            ),
            ("hello_timeout_ms", d.hello_timeout_ms),
            ("write_timeout_ms", d.write_timeout_ms),
            ("request_rate", u64::from(d.request_rate)),
            ("request_burst", u64::from(d.request_burst)),
            ("domain_request_rate", u64::from(d.domain_request_rate)),
            ("domain_request_burst", u64::from(d.domain_request_burst)),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!(
                    "daemon {name} must be at least 1"
                )));
            }
        }
        if d.request_burst.min(d.domain_request_burst) < RUNNER_REQUEST_COST {
            return Err(ConfigError::Invalid(format!(
                "daemon request_burst and domain_request_burst must be at least {RUNNER_REQUEST_COST} (one request that does device work)"
            )));
        }
        if let Some(a) = d.metrics_listen {
            if !a.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "daemon metrics_listen {a}: only a loopback address (127.0.0.1, ::1); the metrics name every domain's vcoprocs"
                )));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.pcoprocs {
            if p.name.is_empty()
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::Invalid(format!(
                    "pcoproc name {:?}: use letters, digits, - and _",
                    p.name
                )));
            }
            if !names.insert(p.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "pcoproc {:?} defined twice",
                    p.name
                )));
            }
            p.device()?;
            coproc_core::policy::build(&p.policy, &p.params())
                .map_err(|e| ConfigError::Invalid(format!("pcoproc {:?}: {e}", p.name)))?;
        }
        for c in &self.daemon.container_cgroups {
            if !c.starts_with('/') && !c.starts_with("**") {
                return Err(ConfigError::Invalid(format!(
                    "daemon container_cgroups {c:?}: a cgroup path pattern starts with / (or **)"
                )));
            }
        }
        for d in &self.domains {
            if let Uids::All(s) = &d.uids {
                if s != "*" {
                    return Err(ConfigError::Invalid(format!(
                        "domain uids {s:?}: use \"*\" or a list of uids"
                    )));
                }
            }
            match &d.cgroup {
                Some(c) if !c.starts_with('/') && !c.starts_with("**") => {
                    return Err(ConfigError::Invalid(format!(
                        "domain cgroup {c:?}: a cgroup path pattern starts with / (or **)"
                    )));
                }
                None if d.admin => {
                    return Err(ConfigError::Invalid(
                        "domain admin = true needs cgroup: it grants admin rights inside containers; outside them admins are root and admin_gid".into(),
                    ));
                }
                _ => {}
            }
            for p in &d.pcoprocs {
                if !names.contains(p) {
                    return Err(ConfigError::Invalid(format!(
                        "domain rule names unknown pcoproc {p:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The rule for `uid` in `container`, if any.
    pub fn rule_for(&self, uid: u32, container: Option<&str>) -> Option<&DomainRule> {
        self.domains.iter().find(|d| d.covers(uid, container))
    }

    /// Every pattern that makes a cgroup a container:
    /// `[daemon] container_cgroups` and the rules' `cgroup`s.
    pub fn container_patterns(&self) -> Vec<&str> {
        self.daemon
            .container_cgroups
            .iter()
            .map(String::as_str)
            .chain(self.domains.iter().filter_map(|d| d.cgroup.as_deref()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses() {
        let c = Config::default_config();
        assert_eq!(c.pcoprocs[0].name, "mcu0");
        assert!(c.rule_for(1000, None).is_some());
        assert!(c
            .rule_for(0, Some("/machine.slice/libpod-1.scope"))
            .is_some());
    }

    #[test]
    fn container_rules_match_containers_and_only_they_grant_admin() {
        let pc = "[[pcoproc]]\nname = \"m\"\nclass = \"mcu\"\n";
        let c = Config::parse(&format!(
            "{pc}[[domain]]\ncgroup = \"**/libpod-*\"\npcoprocs = [\"m\"]\nmax_vcoprocs = 2\nadmin = true\n\
             [[domain]]\nuids = [1000]\npcoprocs = [\"m\"]\nmax_vcoprocs = 5\n"
        ))
        .unwrap();
        let pod = Some("/machine.slice/libpod-ab.scope");
        assert_eq!(c.rule_for(0, pod).unwrap().max_vcoprocs, 2);
        assert_eq!(c.rule_for(1000, pod).unwrap().max_vcoprocs, 2);
        // Outside containers a cgroup rule does not apply; a rule without
        // one applies in containers too.
        assert_eq!(c.rule_for(1000, None).unwrap().max_vcoprocs, 5);
        assert!(c.rule_for(0, None).is_none());
        assert_eq!(c.rule_for(1000, Some("/lxc/x")).unwrap().max_vcoprocs, 5);
        assert!(c.container_patterns().contains(&"**/libpod-*"));
        for bad in [
            "[[domain]]\npcoprocs = [\"m\"]\nadmin = true\n",
            "[[domain]]\ncgroup = \"libpod-*\"\npcoprocs = [\"m\"]\n",
            "[daemon]\ncontainer_cgroups = [\"docker\"]\n",
        ] {
            let e = Config::parse(&format!("{pc}{bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("cgroup"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_errors_with_the_line() {
        let text = "[daemon]\n\n[[pcoproc]]\nname = \"a\"\nclass = \"mcu\"\nslize_us = 4\n";
        let e = Config::parse(text).unwrap_err().to_string();
        assert!(e.contains("slize_us"), "{e}");
        assert!(e.contains("line 6"), "{e}");
    }

    #[test]
    fn policy_parameters_take_numbers_text_and_lists() {
        let c = Config::parse(
            "[[pcoproc]]\nname = \"a\"\nclass = \"mcu\"\npolicy = \"table\"\n\
             policy_params = { frame_us = 10000, fill = \"rr\", window = [\"1:0:2000\", \"2:2000:3000\"] }\n",
        )
        .unwrap();
        let p = c.pcoprocs[0].params();
        assert_eq!(
            p,
            [
                ("fill", "rr"),
                ("frame_us", "10000"),
                ("window", "1:0:2000"),
                ("window", "2:2000:3000")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        let bad = [
            "[[pcoproc]]\nname = \"a\"\nclass = \"gpu9000\"\n",
            "[[pcoproc]]\nname = \"a\"\nclass = \"mcu\"\npolicy = \"lottery\"\n",
            "[[pcoproc]]\nname = \"a\"\nclass = \"mcu\"\npolicy_params = { slice_us = \"0\" }\n",
            "[[pcoproc]]\nname = \"a\"\nclass = \"mcu\"\n[[pcoproc]]\nname = \"a\"\nclass = \"mcu\"\n",
            "[[domain]]\nuids = \"*\"\npcoprocs = [\"nope\"]\n",
            "[[domain]]\nuids = \"everyone\"\npcoprocs = []\n",
            "[[pcoproc]]\nname = \"a b\"\nclass = \"mcu\"\n",
            "[[pcoproc]]\nname = \"a\"\nclass = \"mcu\"\noptions = { max_contexts = 0 }\n",
            "[[pcoproc]]\nname = \"a\"\nclass = \"mcu\"\noptions = { max_contexts = \"many\" }\n",
            "[[pcoproc]]\nname = \"a\"\nclass = \"mcu\"\noptions = { watchdog_ms = 5 }\n",
            "[daemon]\nmetrics_listen = \"0.0.0.0:9464\"\n",
            "[daemon]\nmetrics_listen = \"localhost\"\n",
        ];
        for b in bad {
            assert!(Config::parse(b).is_err(), "accepted: {b}");
        }
    }

    #[cfg(feature = "mcu")]
    #[test]
    fn mcu_memory_sizes_are_parsed_and_checked() {
        let mcu = |opts: &str| {
            let text =
                format!("[[pcoproc]]\nname = \"a\"\nclass = \"mcu\"\noptions = {{ {opts} }}\n");
            Config::parse(&text).and_then(|c| c.pcoprocs[0].device())
        };
        match mcu("code_kib = 2048, data_kib = 64") {
            Ok(DeviceConfig::Mcu(m)) => assert_eq!((m.code_size, m.data_size), (2 << 20, 64 << 10)),
            other => panic!("{other:?}"),
        }
        match mcu("max_contexts = 2") {
            Ok(DeviceConfig::Mcu(m)) => {
                assert_eq!((m.code_size, m.data_size), (1 << 20, 256 << 10));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "code_kib = 2",
            "data_kib = 16385",
            "code_kib = 6",
            "data_kib = \"big\"",
        ] {
            let e = mcu(bad).unwrap_err().to_string();
            assert!(e.contains("pcoproc \"a\""), "{bad}: {e}");
        }
    }

    #[cfg(feature = "vulkan")]
    fn vulkan(options: &str) -> Result<DeviceConfig, ConfigError> {
        let text = format!(
            "[[pcoproc]]\nname = \"gpu0\"\nclass = \"vulkan\"\noptions = {{ {options} }}\n"
        );
        let c = Config::parse(&text)?;
        c.pcoprocs[0].device()
    }

    #[cfg(feature = "vulkan")]
    fn vk(options: &str) -> coproc_vulkan::VulkanConfig {
        match vulkan(options) {
            Ok(DeviceConfig::Vulkan(v)) => v,
            other => panic!("{options}: {other:?}"),
        }
    }

    #[test]
    #[cfg(all(feature = "mcu", feature = "vulkan"))]
    fn the_default_is_mcu_only() {
        let c = Config::default_config();
        assert_eq!(c.pcoprocs.len(), 1);
        assert!(matches!(c.pcoprocs[0].device(), Ok(DeviceConfig::Mcu(m)) if m.max_contexts == 64));
        // The commented-out vulkan example is valid once uncommented.
        let example: String = DEFAULT
            .split_once("# [[pcoproc]]")
            .map(|(_, rest)| format!("[[pcoproc]]{rest}"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("# #"))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&example).unwrap();
        assert!(matches!(
            c.pcoprocs[0].device(),
            Ok(DeviceConfig::Vulkan(_))
        ));
    }

    #[test]
    #[cfg(feature = "vulkan")]
    fn vulkan_options_are_parsed() {
        use coproc_vulkan::{Import, Selector};
        use std::time::Duration;
        let d = vk("");
        assert_eq!(d.selector, Selector::Auto);
        assert_eq!(d.import, Import::Auto);
        assert_eq!(d.watchdog, Duration::from_secs(2));
        assert_eq!(vk("device = \"auto\"").selector, Selector::Auto);
        assert_eq!(vk("device = \"AUTO\"").selector, Selector::Auto);
        assert_eq!(vk("device = 1").selector, Selector::Index(1));
        assert_eq!(vk("device = \"0\"").selector, Selector::Index(0));
        assert_eq!(
            vk("device = \"llvmpipe\"").selector,
            Selector::Name("llvmpipe".into())
        );
        assert_eq!(vk("import = \"copy\"").import, Import::Copy);
        assert_eq!(vk("import = \"auto\"").import, Import::Auto);
        assert_eq!(vk("watchdog_ms = 1").watchdog, Duration::from_millis(1));
        assert_eq!(vk("watchdog_ms = 60000").watchdog, Duration::from_secs(60));
        assert_eq!(vk("max_contexts = 8").max_contexts, 8);
        assert_eq!(vk("local_memory_mb = 16").local_memory, 16 << 20);
        assert_eq!(vk("local_memory_mb = 0").local_memory, 0);
        assert_eq!(
            vk("pipeline_cache = \"/var/cache/x\"").pipeline_cache,
            Some("/var/cache/x".into())
        );
        assert_eq!(vk("pipeline_cache = \"\"").pipeline_cache, None);
        let all = vk("device = 0, import = \"copy\", watchdog_ms = 500, max_contexts = 4, local_memory_mb = 1");
        assert_eq!(
            (
                all.selector,
                all.import,
                all.watchdog,
                all.max_contexts,
                all.local_memory
            ),
            (
                Selector::Index(0),
                Import::Copy,
                Duration::from_millis(500),
                4,
                1 << 20
            )
        );
    }

    #[test]
    #[cfg(feature = "vulkan")]
    fn bad_vulkan_options_are_refused_with_the_pcoproc_and_option() {
        let bad = [
            ("slice_us = 5", "unknown field `slice_us`"),
            ("Device = \"auto\"", "unknown field `Device`"),
            ("device = -1", "negative"),
            ("device = \"\"", "device must be"),
            ("device = 1.5", "device must be"),
            ("device = true", "device must be"),
            ("device = [0]", "device must be"),
            ("import = \"zero-copy\"", "`options.import`"),
            ("import = 1", "`options.import`"),
            ("watchdog_ms = 0", "watchdog_ms must be in 1..=60000"),
            ("watchdog_ms = 60001", "watchdog_ms"),
            ("watchdog_ms = \"2000\"", "`options.watchdog_ms`"),
            ("watchdog_ms = 2.5", "`options.watchdog_ms`"),
            ("max_contexts = 0", "max_contexts"),
            ("max_contexts = 65537", "max_contexts"),
            ("local_memory_mb = -1", "`options.local_memory_mb`"),
            ("local_memory_mb = 1048577", "local_memory_mb"),
            ("local_memory_mb = \"lots\"", "`options.local_memory_mb`"),
            ("pipeline_cache = \"rel/dir\"", "pipeline_cache must be"),
            ("pipeline_cache = 1", "`options.pipeline_cache`"),
        ];
        for (opts, want) in bad {
            let e = vulkan(opts).unwrap_err().to_string();
            assert!(e.contains(want), "{opts}: {e}");
            assert!(e.contains("\"gpu0\""), "{opts}: {e}");
        }
        // mcu options are not vulkan ones and the other way round.
        let e = Config::parse(
            "[[pcoproc]]\nname = \"m\"\nclass = \"mcu\"\noptions = { device = \"auto\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mcu options: unknown field `device`"), "{e}");
        let e = Config::parse("[[pcoproc]]\nname = \"g\"\nclass = \"gpu\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("known: mcu, vulkan"), "{e}");
    }
}
