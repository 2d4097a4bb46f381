//! Where the cgroups module's warnings and debug notes go: the runtime's log
//! (`--log`, `--log-format`).

pub(crate) fn debug(msg: &str) {
    if crate::logging::debug_enabled() {
        crate::logging::debug(msg);
    }
}

pub(crate) fn warn(msg: &str) {
    crate::logging::warn(msg);
}
