//! `amphi vm ...`.

use std::process::ExitCode;

use crate::cli::{vm::VmCommand, GlobalArgs};

pub fn run(_global: &GlobalArgs, cmd: VmCommand) -> ExitCode {
    match cmd {}
}
