//! Device access rules: the defaults every container gets, the merge with the
//! spec's rules, the reference semantics (last matching rule wins, per access
//! type), and a model of the v1 devices controller used to program it with the
//! fewest writes and to refuse rule lists v1 cannot express.
//!
//! The same ordered list drives both cgroup versions: v1 writes it into
//! devices.allow/deny, v2 compiles it into an eBPF program (see `bpf`).

use std::fmt;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};
use serde::{Deserialize, Serialize};

use super::error::{CgroupError, Result};

/// What kind of device a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeviceKind {
    /// `a`: every device of every kind.
    #[serde(rename = "a")]
    All,
    /// `c`: character devices.
    #[serde(rename = "c")]
    Char,
    /// `b`: block devices.
    #[serde(rename = "b")]
    Block,
}

impl DeviceKind {
    pub fn as_char(self) -> char {
        match self {
            DeviceKind::All => 'a',
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        }
    }
}

/// A set of access types: read, write, mknod.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Access(u8);

impl Access {
    pub const READ: Access = Access(1);
    pub const WRITE: Access = Access(2);
    pub const MKNOD: Access = Access(4);
    pub const ALL: Access = Access(7);
    pub const NONE: Access = Access(0);

    /// The three single access types, in `rwm` order.
    pub const EACH: [Access; 3] = [Access::READ, Access::WRITE, Access::MKNOD];

    pub fn parse(s: &str) -> std::result::Result<Access, String> {
        let mut a = 0u8;
        for c in s.chars() {
            a |= match c {
                'r' => 1,
                'w' => 2,
                'm' => 4,
                other => return Err(format!("unknown access {other:?}: use a combination of r, w and m")),
            };
        }
        Ok(Access(a))
    }

    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersects(self, other: Access) -> bool {
        self.0 & other.0 != 0
    }

    pub fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    pub fn minus(self, other: Access) -> Access {
        Access(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn bits(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, c) in [(1, 'r'), (2, 'w'), (4, 'm')] {
            if self.0 & bit != 0 {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl From<Access> for String {
    fn from(a: Access) -> String {
        a.to_string()
    }
}

impl TryFrom<String> for Access {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Access, String> {
        Access::parse(&s)
    }
}

/// One allow or deny rule. `None` for major or minor is the wildcard `*`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl DeviceRule {
    pub const fn new(allow: bool, kind: DeviceKind, major: Option<u32>, minor: Option<u32>, access: Access) -> Self {
        DeviceRule { allow, kind, major, minor, access }
    }

    /// The line written to devices.allow / devices.deny: `c 1:3 rwm`, `a *:* rwm`.
    pub fn v1_line(&self) -> String {
        if self.kind == DeviceKind::All {
            // The kernel reads the whole rule from the `a`.
            return "a *:* rwm".to_string();
        }
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        format!("{} {}:{} {}", self.kind.as_char(), num(self.major), num(self.minor), self.access)
    }

    /// Whether the rule is about the device (`kind` is `Char` or `Block`).
    pub fn matches(&self, kind: DeviceKind, major: u32, minor: u32) -> bool {
        (self.kind == DeviceKind::All || self.kind == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }

    /// Matches every device (type `a`, or any wildcard pair with type `a`).
    pub fn is_all_devices(&self) -> bool {
        self.kind == DeviceKind::All && self.major.is_none() && self.minor.is_none()
    }
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        write!(
            f,
            "{} {} {}:{} {}",
            if self.allow { "allow" } else { "deny" },
            self.kind.as_char(),
            num(self.major),
            num(self.minor),
            self.access
        )
    }
}

impl fmt::Debug for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceRule({self})")
    }
}

const fn allow_char(major: Option<u32>, minor: Option<u32>, access: Access) -> DeviceRule {
    DeviceRule::new(true, DeviceKind::Char, major, minor, access)
}

/// The devices every container may use whatever its spec says, as runc's
/// `AllowedDevices`: mknod of any char/block node, the standard character
/// devices, /dev/tty, /dev/ptmx and the pty slaves (/dev/pts/*).
///
/// /dev/console (5:1) is not here: the console is a pty slave bind-mounted on
/// /dev/console, so the 136:* rule covers it.
pub const DEFAULT_ALLOWED: [DeviceRule; 11] = [
    allow_char(None, None, Access::MKNOD),
    DeviceRule::new(true, DeviceKind::Block, None, None, Access::MKNOD),
    allow_char(Some(1), Some(3), Access::ALL),    // /dev/null
    allow_char(Some(1), Some(8), Access::ALL),    // /dev/random
    allow_char(Some(1), Some(7), Access::ALL),    // /dev/full
    allow_char(Some(5), Some(0), Access::ALL),    // /dev/tty
    allow_char(Some(1), Some(5), Access::ALL),    // /dev/zero
    allow_char(Some(1), Some(9), Access::ALL),    // /dev/urandom
    allow_char(Some(136), None, Access::ALL),     // /dev/pts/*
    allow_char(Some(5), Some(2), Access::ALL),    // /dev/ptmx
    allow_char(Some(10), Some(200), Access::ALL), // /dev/net/tun
];

/// Deny everything: the state every container starts from.
pub const DENY_ALL: DeviceRule = DeviceRule::new(false, DeviceKind::All, None, None, Access::ALL);

fn spec_number(n: Option<i64>, what: &str, index: usize) -> Result<Option<u32>> {
    match n {
        None | Some(-1) => Ok(None),
        // Device numbers are 12 (major) and 20 (minor) bits; anything that
        // does not fit in an i32 cannot be a device and would not survive the
        // eBPF immediate comparison.
        Some(n) if (0..=i32::MAX as i64).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(CgroupError::DeviceRule {
            what: format!("linux.resources.devices[{index}].{what}"),
            reason: format!("{n} is not a device number (use -1 or leave it out for any)"),
        }),
    }
}

/// Converts one `linux.resources.devices` entry.
pub fn rule_from_spec(index: usize, d: &LinuxDeviceCgroup) -> Result<DeviceRule> {
    let kind = match d.typ() {
        None | Some(LinuxDeviceType::A) => DeviceKind::All,
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => DeviceKind::Char,
        Some(LinuxDeviceType::B) => DeviceKind::Block,
        Some(LinuxDeviceType::P) => {
            return Err(CgroupError::DeviceRule {
                what: format!("linux.resources.devices[{index}].type"),
                reason: "\"p\" (fifo) is not a device cgroup type: use a, b or c".into(),
            })
        }
    };
    let access = match d.access().as_deref() {
        // The spec makes access optional; an absent one means all three, so
        // `{"allow": false}` denies everything as users expect.
        None => Access::ALL,
        Some("") => {
            return Err(CgroupError::DeviceRule {
                what: format!("linux.resources.devices[{index}].access"),
                reason: "empty: use a combination of r, w and m".into(),
            })
        }
        Some(s) => Access::parse(s).map_err(|reason| CgroupError::DeviceRule {
            what: format!("linux.resources.devices[{index}].access {s:?}"),
            reason,
        })?,
    };
    Ok(DeviceRule {
        allow: d.allow(),
        kind,
        major: spec_number(d.major(), "major", index)?,
        minor: spec_number(d.minor(), "minor", index)?,
        access,
    })
}

/// The rule that makes a `linux.devices` entry usable (fifos need none).
pub fn rule_from_linux_device(d: &LinuxDevice) -> Option<DeviceRule> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => DeviceKind::Char,
        LinuxDeviceType::B => DeviceKind::Block,
        LinuxDeviceType::P | LinuxDeviceType::A => return None,
    };
    // A number that cannot be a device gets no rule (never a wildcard); the
    // spec validation rejects such entries before we get here.
    let num = |n: i64| u32::try_from(n).ok().filter(|n| *n <= i32::MAX as u32);
    Some(DeviceRule::new(true, kind, Some(num(d.major())?), Some(num(d.minor())?), Access::ALL))
}

/// The ordered rule list a container's cgroup enforces, used by both cgroup
/// versions: deny everything, then the spec's `linux.resources.devices` in
/// order, then the default devices ([`DEFAULT_ALLOWED`]), then an allow of
/// each `linux.devices` entry. The last rule that matches a device and an
/// access type decides, so, as with runc, the defaults and the devices the
/// spec creates cannot be denied by `linux.resources.devices`.
pub fn effective_device_rules(
    resources_devices: Option<&[LinuxDeviceCgroup]>,
    linux_devices: Option<&[LinuxDevice]>,
) -> Result<Vec<DeviceRule>> {
    let spec = resources_devices.unwrap_or_default();
    let extra = linux_devices.unwrap_or_default();
    let mut rules = Vec::with_capacity(1 + spec.len() + DEFAULT_ALLOWED.len() + extra.len());
    rules.push(DENY_ALL);
    for (i, d) in spec.iter().enumerate() {
        rules.push(rule_from_spec(i, d)?);
    }
    let defaults_start = rules.len();
    rules.extend_from_slice(&DEFAULT_ALLOWED);
    for r in extra.iter().filter_map(rule_from_linux_device) {
        // Devices such as /dev/null are often listed too; a duplicate of a
        // later-or-equal allow adds nothing.
        if !rules[defaults_start..].contains(&r) {
            rules.push(r);
        }
    }
    Ok(rules)
}

/// The reference semantics: is `access` to the device allowed? Each access
/// type is decided by the last rule that matches the device and includes that
/// type; no matching rule means deny. The eBPF program must agree with this
/// for every input.
pub fn allows(rules: &[DeviceRule], kind: DeviceKind, major: u32, minor: u32, access: Access) -> bool {
    Access::EACH.iter().filter(|bit| access.contains(**bit)).all(|bit| {
        rules.iter().rev().find(|r| r.access.contains(*bit) && r.matches(kind, major, minor)).is_some_and(|r| r.allow)
    })
}

type ExceptionKey = (DeviceKind, Option<u32>, Option<u32>);

/// Exceptions in the order the kernel keeps them (the order they were
/// added), which is also the order devices.list shows: writing them in the
/// spec's order makes devices.list read back in the spec's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exceptions(Vec<(ExceptionKey, Access)>);

impl Exceptions {
    pub fn get(&self, k: &ExceptionKey) -> Option<Access> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, a)| *a)
    }

    /// Widens the exception `k` (added at the end when new).
    fn add(&mut self, k: ExceptionKey, a: Access) {
        match self.0.iter_mut().find(|(key, _)| *key == k) {
            Some((_, cur)) => *cur = cur.union(a),
            None => self.0.push((k, a)),
        }
    }

    /// Narrows the exception `k`, dropping it when nothing is left.
    fn remove_access(&mut self, k: &ExceptionKey, a: Access) {
        if let Some(i) = self.0.iter().position(|(key, _)| key == k) {
            let left = self.0[i].1.minus(a);
            if left.is_empty() {
                self.0.remove(i);
            } else {
                self.0[i].1 = left;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ExceptionKey, &Access)> {
        self.0.iter().map(|(k, a)| (k, a))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The state of a v1 devices cgroup as the kernel keeps it: a default
/// behaviour plus exceptions keyed by exact (type, major, minor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1DeviceState {
    pub default_allow: bool,
    pub exceptions: Exceptions,
}

impl V1DeviceState {
    /// A cgroup that allows nothing.
    pub fn deny_all() -> Self {
        V1DeviceState { default_allow: false, exceptions: Exceptions::default() }
    }

    /// Replays `rules` the way the kernel applies writes to devices.allow and
    /// devices.deny, refusing rules whose kernel effect would differ from the
    /// last-match-wins semantics of [`allows`]: an `a` rule with partial
    /// access (the kernel resets everything), or a rule that removes access
    /// inside an earlier wildcard exception (the kernel only removes the
    /// exception with the exact same numbers, leaving the wildcard in force).
    pub fn from_rules(rules: &[DeviceRule]) -> Result<Self> {
        let mut s = V1DeviceState::deny_all();
        for (i, r) in rules.iter().enumerate() {
            s.apply(r).map_err(|reason| CgroupError::DeviceRuleV1 { index: i, rule: r.to_string(), reason })?;
        }
        Ok(s)
    }

    fn apply(&mut self, r: &DeviceRule) -> std::result::Result<(), String> {
        if r.kind == DeviceKind::All {
            if r.access != Access::ALL {
                return Err("the v1 devices controller applies a rule of type a to every access type; use rwm".into());
            }
            if r.major.is_some() || r.minor.is_some() {
                return Err("the v1 devices controller reads type a as every device; leave major and minor out".into());
            }
            *self = V1DeviceState { default_allow: r.allow, exceptions: Exceptions::default() };
            return Ok(());
        }
        let key = (r.kind, r.major, r.minor);
        if r.allow != self.default_allow {
            // Adds (or widens) an exception.
            self.exceptions.add(key, r.access);
            return Ok(());
        }
        // Removes access from the exception with exactly these numbers; any
        // broader exception that overlaps stays, which last-match-wins would
        // not do.
        for (k, a) in self.exceptions.iter() {
            let broader =
                *k != key && k.0 == r.kind && (k.1.is_none() || k.1 == r.major) && (k.2.is_none() || k.2 == r.minor);
            if broader && a.intersects(r.access) {
                let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
                return Err(format!(
                    "it would have to punch a hole in the earlier wildcard rule {} {} {}:{} {}, which v1 cannot do; \
                     list the devices one by one instead of using the wildcard",
                    if self.default_allow { "deny" } else { "allow" },
                    k.0.as_char(),
                    num(k.1),
                    num(k.2),
                    a
                ));
            }
        }
        self.exceptions.remove_access(&key, r.access);
        Ok(())
    }

    /// Reads devices.list, which lists what is allowed: `a *:* rwm` alone in
    /// allow-by-default mode (whose deny exceptions are invisible), otherwise
    /// the allow exceptions of a deny-by-default cgroup.
    pub fn from_list(list: &str) -> std::result::Result<Self, String> {
        let mut s = V1DeviceState::deny_all();
        for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let bad = || format!("unexpected devices.list line {line:?}");
            let mut it = line.split_whitespace();
            let (Some(t), Some(nums), Some(acc)) = (it.next(), it.next(), it.next()) else {
                return Err(bad());
            };
            let kind = match t {
                "a" => DeviceKind::All,
                "c" => DeviceKind::Char,
                "b" => DeviceKind::Block,
                _ => return Err(bad()),
            };
            let (maj, min) = nums.split_once(':').ok_or_else(bad)?;
            let num = |n: &str| -> std::result::Result<Option<u32>, String> {
                if n == "*" {
                    Ok(None)
                } else {
                    n.parse().map(Some).map_err(|_| bad())
                }
            };
            let access = Access::parse(acc).map_err(|_| bad())?;
            let rule = DeviceRule::new(true, kind, num(maj)?, num(min)?, access);
            if kind == DeviceKind::All {
                s = V1DeviceState { default_allow: true, exceptions: Exceptions::default() };
            } else {
                s.apply(&rule)?;
            }
        }
        Ok(s)
    }

    /// The writes that take a cgroup from `current` (None: unknown, e.g.
    /// freshly created and inheriting its parent) to `self`, each as
    /// (allow?, line). A disruptive `a` write is only used when the default
    /// behaviour changes or the current deny exceptions cannot be known, so
    /// that updating a running container does not briefly cut its devices.
    pub fn transition_from(&self, current: Option<&V1DeviceState>) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        let base = match current {
            Some(c) if !c.default_allow && c.default_allow == self.default_allow => Some(c),
            _ => None,
        };
        let empty = Exceptions::default();
        let old = match base {
            Some(c) => &c.exceptions,
            None => {
                out.push((self.default_allow, "a *:* rwm".to_string()));
                &empty
            }
        };
        let line = |k: &ExceptionKey, a: Access| DeviceRule::new(true, k.0, k.1, k.2, a).v1_line();
        for (k, a) in old.iter() {
            let dropped = a.minus(self.exceptions.get(k).unwrap_or_default());
            if !dropped.is_empty() {
                out.push((self.default_allow, line(k, dropped)));
            }
        }
        for (k, a) in self.exceptions.iter() {
            let gained = a.minus(old.get(k).unwrap_or_default());
            if !gained.is_empty() {
                out.push((!self.default_allow, line(k, gained)));
            }
        }
        out
    }

    /// Whether the state allows `access` to a device, as the kernel decides:
    /// an exception matches when its numbers match and it covers every
    /// requested access type on its own (kernel `match_exception`).
    pub fn allows(&self, kind: DeviceKind, major: u32, minor: u32, access: Access) -> bool {
        let matched = self.exceptions.iter().any(|(k, a)| {
            k.0 == kind && k.1.is_none_or(|m| m == major) && k.2.is_none_or(|m| m == minor) && a.contains(access)
        });
        self.default_allow != matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceCgroupBuilder};

    fn spec_rule(
        allow: bool,
        t: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).typ(t).access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    fn rule(allow: bool, kind: DeviceKind, major: Option<u32>, minor: Option<u32>, access: &str) -> DeviceRule {
        DeviceRule::new(allow, kind, major, minor, Access::parse(access).unwrap())
    }

    #[test]
    fn default_spec_gives_deny_all_then_defaults() {
        let spec = [spec_rule(false, LinuxDeviceType::A, None, None, "rwm")];
        let rules = effective_device_rules(Some(&spec), None).unwrap();
        assert_eq!(rules[0], DENY_ALL);
        assert_eq!(rules[1], DENY_ALL);
        assert_eq!(&rules[2..], &DEFAULT_ALLOWED);
        let c = DeviceKind::Char;
        assert!(allows(&rules, c, 1, 3, Access::ALL));
        assert!(allows(&rules, c, 136, 4, Access::READ.union(Access::WRITE)));
        assert!(allows(&rules, c, 10, 200, Access::ALL));
        assert!(allows(&rules, DeviceKind::Block, 8, 0, Access::MKNOD));
        assert!(!allows(&rules, DeviceKind::Block, 8, 0, Access::READ));
        assert!(!allows(&rules, c, 4, 1, Access::WRITE));
        assert!(!allows(&rules, c, 5, 1, Access::READ));
    }

    #[test]
    fn spec_cannot_deny_defaults_and_linux_devices_are_appended() {
        let spec = [
            spec_rule(true, LinuxDeviceType::C, Some(4), Some(1), "rw"),
            spec_rule(false, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
        ];
        let dev =
            LinuxDeviceBuilder::default().path("/dev/sda").typ(LinuxDeviceType::B).major(8).minor(0).build().unwrap();
        let fifo = LinuxDeviceBuilder::default().path("/dev/f").typ(LinuxDeviceType::P).build().unwrap();
        let rules = effective_device_rules(Some(&spec), Some(&[dev, fifo])).unwrap();
        assert_eq!(rules.len(), 1 + 2 + DEFAULT_ALLOWED.len() + 1);
        assert_eq!(*rules.last().unwrap(), rule(true, DeviceKind::Block, Some(8), Some(0), "rwm"));
        assert!(allows(&rules, DeviceKind::Char, 1, 3, Access::WRITE));
        assert!(allows(&rules, DeviceKind::Char, 4, 1, Access::READ));
        // mknod comes from the default `c *:* m`, read from the spec.
        assert!(allows(&rules, DeviceKind::Char, 4, 1, Access::MKNOD));
        assert!(!allows(&rules, DeviceKind::Char, 4, 2, Access::READ));
        assert!(allows(&rules, DeviceKind::Block, 8, 0, Access::ALL));
    }

    #[test]
    fn bad_spec_rules_name_the_field() {
        let p = spec_rule(true, LinuxDeviceType::P, None, None, "rwm");
        let e = effective_device_rules(Some(&[p]), None).unwrap_err().to_string();
        assert!(e.contains("linux.resources.devices[0].type"), "{e}");
        let bad = spec_rule(true, LinuxDeviceType::C, Some(1), None, "rwx");
        let e = effective_device_rules(Some(&[bad]), None).unwrap_err().to_string();
        assert!(e.contains("devices[0].access") && e.contains("'x'"), "{e}");
        let empty = spec_rule(true, LinuxDeviceType::C, Some(1), None, "");
        assert!(effective_device_rules(Some(&[empty]), None).unwrap_err().to_string().contains("empty"));
        let neg = spec_rule(true, LinuxDeviceType::C, Some(-5), None, "r");
        assert!(effective_device_rules(Some(&[neg]), None).unwrap_err().to_string().contains("major"));
        let no_access = LinuxDeviceCgroupBuilder::default().allow(false).build().unwrap();
        let r = effective_device_rules(Some(&[no_access]), None).unwrap();
        assert_eq!(r[1], DENY_ALL);
    }

    #[test]
    fn last_match_wins_per_access_type() {
        let c = DeviceKind::Char;
        let rules = [
            DENY_ALL,
            rule(true, c, Some(1), Some(3), "r"),
            rule(true, c, Some(1), Some(3), "w"),
            rule(false, c, Some(1), None, "w"),
        ];
        assert!(allows(&rules, c, 1, 3, Access::READ));
        assert!(!allows(&rules, c, 1, 3, Access::WRITE));
        assert!(!allows(&rules, c, 1, 3, Access::READ.union(Access::WRITE)));
        let rules = [DENY_ALL, rule(true, c, Some(1), Some(3), "r"), rule(true, c, Some(1), Some(3), "w")];
        assert!(allows(&rules, c, 1, 3, Access::READ.union(Access::WRITE)));
        assert!(!allows(&rules, c, 1, 3, Access::ALL));
    }

    #[test]
    fn v1_lines() {
        assert_eq!(DENY_ALL.v1_line(), "a *:* rwm");
        assert_eq!(rule(true, DeviceKind::Char, Some(136), None, "rwm").v1_line(), "c 136:* rwm");
        assert_eq!(rule(true, DeviceKind::Block, None, None, "m").v1_line(), "b *:* m");
    }

    #[test]
    fn v1_model_agrees_with_last_match_wins_on_defaults() {
        let spec = [
            spec_rule(false, LinuxDeviceType::A, None, None, "rwm"),
            spec_rule(true, LinuxDeviceType::B, Some(8), Some(0), "r"),
        ];
        let rules = effective_device_rules(Some(&spec), None).unwrap();
        let s = V1DeviceState::from_rules(&rules).unwrap();
        assert!(!s.default_allow);
        for kind in [DeviceKind::Char, DeviceKind::Block] {
            for major in [1, 5, 8, 10, 136, 200] {
                for minor in [0, 1, 2, 3, 5, 7, 8, 9, 200] {
                    // What the kernel asks for: mknod alone, or any mix of
                    // read and write (open). Mixed requests whose types are
                    // granted by different wildcard/exact exceptions are where
                    // v1 is stricter than last-match-wins (docs/cgroups.md).
                    for a in [1u8, 2, 3, 4] {
                        let access = Access(a);
                        assert_eq!(
                            s.allows(kind, major, minor, access),
                            allows(&rules, kind, major, minor, access),
                            "{kind:?} {major}:{minor} {access}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn v1_refuses_hole_punching_and_partial_a() {
        let c = DeviceKind::Char;
        let rules = [DENY_ALL, rule(true, c, Some(1), None, "rwm"), rule(false, c, Some(1), Some(3), "w")];
        let e = V1DeviceState::from_rules(&rules).unwrap_err().to_string();
        assert!(e.contains("device rule 2 (deny c 1:3 w)") && e.contains("allow c 1:* rwm"), "{e}");
        // Removing access the wildcard does not grant is fine.
        let rules = [DENY_ALL, rule(true, c, Some(1), None, "r"), rule(false, c, Some(1), Some(3), "w")];
        assert!(V1DeviceState::from_rules(&rules).is_ok());
        let rules = [rule(true, DeviceKind::All, None, None, "r")];
        assert!(V1DeviceState::from_rules(&rules).unwrap_err().to_string().contains("use rwm"));
    }

    #[test]
    fn v1_writes_follow_the_spec_order() {
        // As the validation suite checks: devices.list (the kernel's order of
        // additions) must list the spec's allows first, in the spec's order.
        let spec = [
            spec_rule(false, LinuxDeviceType::A, None, None, "rwm"),
            spec_rule(true, LinuxDeviceType::C, Some(10), Some(229), "rwm"),
            spec_rule(true, LinuxDeviceType::B, Some(8), Some(20), "rw"),
            spec_rule(true, LinuxDeviceType::B, Some(10), Some(200), "r"),
        ];
        let rules = effective_device_rules(Some(&spec), None).unwrap();
        let w = V1DeviceState::from_rules(&rules).unwrap().transition_from(None);
        let lines: Vec<&str> = w.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(&lines[..4], ["a *:* rwm", "c 10:229 rwm", "b 8:20 rw", "b 10:200 r"]);
        assert_eq!(lines[4], "c *:* m");
    }

    #[test]
    fn v1_privileged_allows_everything() {
        let rules = [DENY_ALL, rule(true, DeviceKind::All, None, None, "rwm")];
        let s = V1DeviceState::from_rules(&rules).unwrap();
        assert!(s.default_allow && s.exceptions.is_empty());
        assert_eq!(s.transition_from(None), vec![(true, "a *:* rwm".to_string())]);
    }

    #[test]
    fn v1_transitions_are_minimal_for_a_known_deny_list() {
        let c = DeviceKind::Char;
        let target = V1DeviceState::from_rules(&[
            DENY_ALL,
            rule(true, c, Some(1), Some(3), "rw"),
            rule(true, c, Some(1), Some(5), "rwm"),
        ])
        .unwrap();
        // Fresh cgroup: reset, then every exception.
        assert_eq!(
            target.transition_from(None),
            vec![(false, "a *:* rwm".into()), (true, "c 1:3 rw".into()), (true, "c 1:5 rwm".into())]
        );
        let current = V1DeviceState::from_list("c 1:3 rwm\nc 1:9 rwm\n").unwrap();
        assert_eq!(
            target.transition_from(Some(&current)),
            vec![(false, "c 1:3 m".into()), (false, "c 1:9 rwm".into()), (true, "c 1:5 rwm".into())]
        );
        assert!(target.transition_from(Some(&target)).is_empty());
        // Allow-by-default: its deny exceptions are invisible, so reset.
        let open = V1DeviceState::from_list("a *:* rwm\n").unwrap();
        assert!(open.default_allow);
        assert_eq!(target.transition_from(Some(&open))[0], (false, "a *:* rwm".into()));
        assert!(V1DeviceState::from_list("x 1:2 r").is_err());
    }

    #[test]
    fn access_serde_is_a_string() {
        let r = rule(true, DeviceKind::Char, Some(1), None, "rm");
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, r#"{"allow":true,"kind":"c","major":1,"minor":null,"access":"rm"}"#);
        assert_eq!(serde_json::from_str::<DeviceRule>(&j).unwrap(), r);
    }
}
