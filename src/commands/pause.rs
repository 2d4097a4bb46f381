//! `amphi pause` and `amphi resume`.

use crate::cli::{GlobalArgs, IdArgs};

pub fn pause(global: &GlobalArgs, a: IdArgs) -> anyhow::Result<u8> {
    super::runtime(global).pause(&a.id)?;
    Ok(0)
}

pub fn resume(global: &GlobalArgs, a: IdArgs) -> anyhow::Result<u8> {
    super::runtime(global).resume(&a.id)?;
    Ok(0)
}
