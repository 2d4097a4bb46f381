//! `amphi features`: the OCI features document of this build.

pub fn run() -> anyhow::Result<u8> {
    println!("{}", serde_json::to_string_pretty(&amphi::features::document())?);
    Ok(0)
}
