//! `amphi start`.

use crate::cli::{GlobalArgs, IdArgs};

pub fn run(global: &GlobalArgs, args: IdArgs) -> anyhow::Result<u8> {
    super::runtime(global).start(&args.id)?;
    Ok(0)
}
