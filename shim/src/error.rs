//! The shim's errors and the ttrpc status each one reaches containerd as.
//!
//! containerd turns the ttrpc code into its errdefs (NotFound,
//! AlreadyExists, FailedPrecondition, InvalidArgument, Unimplemented) and
//! shows the message, so the message is the whole cause chain on one line,
//! and amphi's failures keep the code amphi's exit status stands for.

use containerd_shim::protos::ttrpc::{self, Code};

use crate::options::OptionsError;
use crate::rootfs::RootfsError;
use crate::runtime::AmphiError;
use crate::stats::StatsError;
use crate::stdio::StdioError;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error(transparent)]
    Amphi(#[from] AmphiError),
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Stats(#[from] StatsError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ShimError {
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) | ShimError::Options(_) => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Amphi(e) => e.code(),
            ShimError::Stdio(StdioError::Scheme { .. }) => Code::UNIMPLEMENTED,
            ShimError::Stdio(StdioError::NoTerminal) => Code::FAILED_PRECONDITION,
            ShimError::Stdio(StdioError::Open { .. }) => Code::INVALID_ARGUMENT,
            ShimError::Stats(StatsError::NoCgroup) => Code::FAILED_PRECONDITION,
            ShimError::Rootfs(_) | ShimError::Stdio(_) | ShimError::Stats(_) | ShimError::Io { .. } => Code::INTERNAL,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), amphi::logging::chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_the_code_and_the_whole_chain() {
        let e = ShimError::Io {
            what: "cannot read the pid file /b/init.pid".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let ttrpc::Error::RpcStatus(s) = ttrpc::Error::from(e) else { panic!("not a status") };
        assert_eq!(s.code(), Code::INTERNAL);
        assert!(s.message().starts_with("cannot read the pid file /b/init.pid: "), "{}", s.message());

        let ttrpc::Error::RpcStatus(s) = ttrpc::Error::from(ShimError::Unimplemented("no exec".into())) else {
            panic!("not a status")
        };
        assert_eq!((s.code(), s.message()), (Code::UNIMPLEMENTED, "no exec"));
    }
}
