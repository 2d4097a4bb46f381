//! Signal names and numbers as `kill` accepts them: `KILL`, `SIGKILL`,
//! `kill` and `9` all mean the same signal.

use nix::sys::signal::Signal;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown signal {0:?}: use a name such as TERM, SIGKILL or HUP, or a number from 1 to 31")]
pub struct SignalError(pub String);

pub fn parse(s: &str) -> Result<Signal, SignalError> {
    let err = || SignalError(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| err());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_sig_and_numbers() {
        for s in ["KILL", "SIGKILL", "kill", "9"] {
            assert_eq!(parse(s), Ok(Signal::SIGKILL), "{s}");
        }
        assert_eq!(parse("term"), Ok(Signal::SIGTERM));
        assert_eq!(parse("SIGUSR1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse("1"), Ok(Signal::SIGHUP));
    }

    #[test]
    fn unknown_signals_are_refused() {
        for s in ["", "SIGFOO", "0", "99", "-1", "SIG"] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
