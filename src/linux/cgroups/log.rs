//! Where the cgroups module's warnings and debug notes go.

pub(crate) fn debug(_msg: &str) {}

pub(crate) fn warn(msg: &str) {
    eprintln!("warning: {msg}");
}
