//! `amphi run`: create, start, wait, delete; exits with the workload's code.

use crate::cli::{GlobalArgs, RunArgs};

pub fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<u8> {
    amphi::linux::exe::ensure_protected()?;
    let code = super::runtime(global).run(&args.id, &super::create_options(args.opts), args.detach, args.keep)?;
    Ok(code.clamp(0, 255) as u8)
}
