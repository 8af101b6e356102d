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

[[pcoproc]]
name = "mcu0"
class = "mcu"
# policy: rr | credit | priority | rt | table (docs/scheduling.md); its
# parameters as key = value (a list repeats a key, e.g. table windows).
policy = "rr"
policy_params = { slice_us = 5000 }
# class options of mcu: max_contexts
options = { max_contexts = 64 }

[[domain]]
# Who: "*" for every local user, or a list of uids.
uids = "*"
pcoprocs = ["mcu0"]
max_vcoprocs = 16
max_mapped_bytes = 268435456
max_queues = 16
max_mappings = 64
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Socket path.
    pub socket: Option<PathBuf>,
    /// Group whose members are administrators.
    pub admin_gid: Option<u32>,
}

/// `[[pcoproc]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcoprocConfig {
    /// Name.
    pub name: String,
    /// Device class ("mcu").
    pub class: String,
    /// Policy name.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Policy parameters.
    #[serde(default)]
    pub policy_params: BTreeMap<String, ParamValue>,
    /// Class options.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
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

impl PcoprocConfig {
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
    /// Who.
    pub uids: Uids,
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
    /// Whether the rule covers `uid`.
    pub fn covers(&self, uid: u32) -> bool {
        match &self.uids {
            Uids::All(_) => true,
            Uids::List(l) => l.contains(&uid),
        }
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
            if p.class != "mcu" {
                return Err(ConfigError::Invalid(format!(
                    "pcoproc {:?}: unknown class {:?} (known: mcu)",
                    p.name, p.class
                )));
            }
            for (k, v) in &p.options {
                if k != "max_contexts" {
                    return Err(ConfigError::Invalid(format!(
                        "pcoproc {:?}: unknown mcu option {k:?}",
                        p.name
                    )));
                }
                if !v.as_integer().is_some_and(|n| (1..=65536).contains(&n)) {
                    return Err(ConfigError::Invalid(format!(
                        "pcoproc {:?}: max_contexts must be in 1..=65536",
                        p.name
                    )));
                }
            }
            coproc_core::policy::build(&p.policy, &p.params())
                .map_err(|e| ConfigError::Invalid(format!("pcoproc {:?}: {e}", p.name)))?;
        }
        for d in &self.domains {
            if let Uids::All(s) = &d.uids {
                if s != "*" {
                    return Err(ConfigError::Invalid(format!(
                        "domain uids {s:?}: use \"*\" or a list of uids"
                    )));
                }
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

    /// The rule for `uid`, if any.
    pub fn rule_for(&self, uid: u32) -> Option<&DomainRule> {
        self.domains.iter().find(|d| d.covers(uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses() {
        let c = Config::default_config();
        assert_eq!(c.pcoprocs[0].name, "mcu0");
        assert!(c.rule_for(1000).is_some());
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
        ];
        for b in bad {
            assert!(Config::parse(b).is_err(), "accepted: {b}");
        }
    }
}
