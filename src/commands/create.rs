//! `amphi create`.

use crate::cli::{CreateArgs, GlobalArgs};

pub fn run(global: &GlobalArgs, args: CreateArgs) -> anyhow::Result<u8> {
    amphi::linux::exe::ensure_protected()?;
    super::runtime(global).create(&args.id, &super::create_options(args.opts))?;
    Ok(0)
}
