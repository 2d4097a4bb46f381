//! config.json loading and validation, through [`Bundle::load`] as
//! `create` calls it: the bytes are the bundle's config.json.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::spec::Bundle;

/// One bundle directory per process, its config.json rewritten per input.
fn bundle_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("amphi-fuzz-spec-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("rootfs"));
        dir
    })
}

pub fn config_json(data: &[u8]) {
    let dir = bundle_dir();
    if std::fs::write(dir.join("config.json"), data).is_err() {
        return;
    }
    if let Ok(bundle) = Bundle::load(dir) {
        let _ = bundle.requested_isolation();
        // What loads must print back (the state file stores it).
        let text = serde_json::to_string(&bundle.spec).expect("a loaded spec serializes");
        let _: oci_spec::runtime::Spec = serde_json::from_str(&text).expect("a serialized spec parses again");
    }
}
