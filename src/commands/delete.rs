//! `amphi delete`.

use crate::cli::{DeleteArgs, GlobalArgs};

pub fn run(global: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<u8> {
    super::runtime(global).delete(&args.id, args.force)?;
    Ok(0)
}
