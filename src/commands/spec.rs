//! `amphi spec`: writes a default config.json.

use crate::cli::SpecArgs;

pub fn run(args: SpecArgs) -> anyhow::Result<u8> {
    let dir = args.bundle.unwrap_or_else(|| ".".into());
    amphi::spec::write_default(&dir, args.rootless)?;
    Ok(0)
}
