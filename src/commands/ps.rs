//! `amphi ps`: the container's processes, as a ps(1) table or JSON pids.

use crate::cli::{GlobalArgs, ListFormat, PsArgs};

pub fn run(global: &GlobalArgs, a: PsArgs) -> anyhow::Result<u8> {
    let out = super::runtime(global).ps(&a.id, a.format == ListFormat::Json, &a.ps_args)?;
    print!("{out}");
    if a.format == ListFormat::Json {
        println!();
    }
    Ok(0)
}
