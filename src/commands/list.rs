//! `amphi list`: a table like runc's, JSON, or ids only.

use crate::cli::{GlobalArgs, ListArgs, ListFormat};

pub fn run(global: &GlobalArgs, args: ListArgs) -> anyhow::Result<u8> {
    let list = super::runtime(global).list()?;
    if args.quiet {
        for s in &list {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    match args.format {
        ListFormat::Json => println!("{}", serde_json::to_string(&list)?),
        ListFormat::Table => {
            let rows: Vec<[String; 6]> = list
                .iter()
                .map(|s| {
                    [
                        s.id.clone(),
                        s.pid.to_string(),
                        s.status.to_string(),
                        s.bundle.display().to_string(),
                        s.created.clone(),
                        s.owner.clone(),
                    ]
                })
                .collect();
            print!("{}", amphi::container::table(["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"], &rows));
        }
    }
    Ok(0)
}
