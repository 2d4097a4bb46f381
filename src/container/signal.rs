//! Signals as `kill` accepts them, with runc's leniency: a name with or
//! without `SIG` in any case (`KILL`, `SIGKILL`, `kill`), a real-time
//! signal by name (`RTMIN`, `SIGRTMIN+3`, `RTMAX-1`, as systemd-based images
//! use for their stop signal), or any number the kernel takes (1 to 64).
//!
//! [`Sig`] is a plain signal number rather than nix's `Signal`, which cannot
//! hold real-time signals.

use nix::sys::signal::Signal;

/// Lowest and highest real-time signal numbers of the kernel (glibc keeps
/// 32 and 33 for itself, but the kernel accepts them).
pub const SIGRTMIN: i32 = 34;
pub const SIGRTMAX: i32 = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown signal {0:?}: use a name such as TERM, SIGKILL, HUP or RTMIN+3, or a number from 1 to {SIGRTMAX}")]
pub struct SignalError(pub String);

/// A signal number, 1 to 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig(i32);

impl Sig {
    pub const KILL: Sig = Sig(libc::SIGKILL);
    pub const TERM: Sig = Sig(libc::SIGTERM);

    /// A signal by number; None outside 1..=64.
    pub fn from_number(n: i32) -> Option<Sig> {
        (1..=SIGRTMAX).contains(&n).then_some(Sig(n))
    }

    pub fn number(self) -> i32 {
        self.0
    }

    /// The classic signal, if this is one (not real-time).
    pub fn classic(self) -> Option<Signal> {
        Signal::try_from(self.0).ok()
    }
}

impl From<Signal> for Sig {
    fn from(s: Signal) -> Sig {
        Sig(s as i32)
    }
}

impl std::fmt::Display for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.classic() {
            Some(s) => write!(f, "{s}"),
            None if self.0 == SIGRTMIN => f.write_str("SIGRTMIN"),
            None if self.0 > SIGRTMIN && self.0 <= SIGRTMAX => write!(f, "SIGRTMIN+{}", self.0 - SIGRTMIN),
            None => write!(f, "signal {}", self.0),
        }
    }
}

pub fn parse(s: &str) -> Result<Sig, SignalError> {
    let err = || SignalError(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return Sig::from_number(n).ok_or_else(err);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rt) = realtime(name) {
        return rt.ok_or_else(err);
    }
    if name.is_empty() {
        return Err(err());
    }
    format!("SIG{name}").parse::<Signal>().map(Sig::from).map_err(|_| err())
}

/// `RTMIN`, `RTMIN+N`, `RTMAX`, `RTMAX-N`: Some(result) if the name is one
/// of these forms.
fn realtime(name: &str) -> Option<Option<Sig>> {
    let offset = |rest: &str, sign: char| -> Option<i32> {
        if rest.is_empty() {
            return Some(0);
        }
        rest.strip_prefix(sign)?.parse::<i32>().ok().filter(|n| (0..=SIGRTMAX - SIGRTMIN).contains(n))
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return Some(offset(rest, '+').map(|n| Sig(SIGRTMIN + n)));
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return Some(offset(rest, '-').map(|n| Sig(SIGRTMAX - n)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_sig_and_numbers() {
        for s in ["KILL", "SIGKILL", "kill", "9"] {
            assert_eq!(parse(s), Ok(Sig::KILL), "{s}");
        }
        assert_eq!(parse("term"), Ok(Sig::TERM));
        assert_eq!(parse("SIGUSR1").unwrap().number(), libc::SIGUSR1);
        assert_eq!(parse("1").unwrap().number(), libc::SIGHUP);
    }

    #[test]
    fn realtime_signals_by_name_and_number() {
        assert_eq!(parse("SIGRTMIN+3").unwrap().number(), 37);
        assert_eq!(parse("rtmin").unwrap().number(), 34);
        assert_eq!(parse("RTMAX-1").unwrap().number(), 63);
        assert_eq!(parse("SIGRTMAX").unwrap().number(), 64);
        assert_eq!(parse("40").unwrap().number(), 40);
        assert_eq!(parse("37").unwrap().to_string(), "SIGRTMIN+3");
        assert_eq!(parse("9").unwrap().to_string(), "SIGKILL");
    }

    #[test]
    fn unknown_signals_are_refused() {
        for s in ["", "SIGFOO", "0", "65", "-1", "SIG", "RTMIN+31", "RTMIN-1", "RTMAX+1", "RTMINX"] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
