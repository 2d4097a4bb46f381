//! `amphi events`: stats records (and OOM events) as JSON lines.

use std::io::Write;

use crate::cli::{EventsArgs, GlobalArgs};

pub fn run(global: &GlobalArgs, a: EventsArgs) -> anyhow::Result<u8> {
    let interval = amphi::container::stats::parse_duration(&a.interval)?;
    let mut out = std::io::stdout().lock();
    super::runtime(global).events(&a.id, a.stats, interval, &mut |e| {
        serde_json::to_writer(&mut out, e)?;
        out.write_all(b"\n")?;
        out.flush()
    })?;
    Ok(0)
}
