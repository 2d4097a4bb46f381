//! `amphi kill`.

use crate::cli::{GlobalArgs, KillArgs};

pub fn run(global: &GlobalArgs, args: KillArgs) -> anyhow::Result<u8> {
    super::runtime(global).kill(&args.id, &args.signal, args.all)?;
    Ok(0)
}
