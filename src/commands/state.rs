//! `amphi state`: the OCI state document.

use crate::cli::{GlobalArgs, IdArgs};

pub fn run(global: &GlobalArgs, args: IdArgs) -> anyhow::Result<u8> {
    let state = super::runtime(global).state(&args.id)?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(0)
}
