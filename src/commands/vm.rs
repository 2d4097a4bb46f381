//! `amphi vm ...`.

use crate::cli::{vm::VmCommand, GlobalArgs};

pub fn run(_global: &GlobalArgs, cmd: VmCommand) -> anyhow::Result<u8> {
    match cmd {}
}
