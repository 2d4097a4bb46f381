//! Black-box tests of the binary that need no root: bad input is refused
//! with a clear message, a stable exit code, and nothing left behind.

mod common;

use common::{stderr, Amphi};

fn write_bundle(config: &str, rootfs: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    if rootfs {
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
    }
    std::fs::write(d.path().join("config.json"), config).unwrap();
    d
}

const GOOD: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
  "process":{"cwd":"/","args":["/bin/true"],"user":{"uid":0,"gid":0}}}"#;

/// Runs `create` and checks exit code, message and that the root is empty.
fn refused(bundle: &std::path::Path, id: &str, code: i32, needles: &[&str]) {
    let a = Amphi::new();
    let out = a.run(&["create", "--bundle", bundle.to_str().unwrap(), id]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert!(a.leftovers().is_empty(), "left behind: {:?}", a.leftovers());
}

#[test]
fn invalid_ids_are_refused() {
    let b = write_bundle(GOOD, true);
    refused(b.path(), "../escape", 5, &["invalid container id", "letters, digits"]);
    refused(b.path(), "", 5, &["empty"]);
    refused(b.path(), &"x".repeat(2000), 5, &["at most"]);
}

#[test]
fn missing_bundle_and_config() {
    refused(std::path::Path::new("/nonexistent/bundle"), "c1", 5, &["/nonexistent/bundle", "--bundle"]);
    let empty = tempfile::tempdir().unwrap();
    refused(empty.path(), "c1", 5, &["no config.json", "amphi spec"]);
}

#[test]
fn malformed_json_gives_line_and_column() {
    let b = write_bundle("{\n \"ociVersion\": \"1.0.2\",\n  \"root\": {\"path\": \"rootfs\"\n}", true);
    refused(b.path(), "c1", 5, &["malformed JSON at line"]);
}

#[test]
fn invalid_values_name_the_field() {
    let b = write_bundle(&GOOD.replace("\"cwd\":\"/\"", "\"cwd\":\"relative\""), true);
    refused(b.path(), "c1", 5, &["process.cwd", "absolute"]);
    let b = write_bundle(&GOOD.replace("\"1.0.2\"", "\"2.0.0\""), true);
    refused(b.path(), "c1", 5, &["unsupported ociVersion \"2.0.0\""]);
    let b = write_bundle(GOOD, false);
    refused(b.path(), "c1", 5, &["root filesystem", "does not exist"]);
    let b = write_bundle(
        &GOOD.replace(
            "\"user\":{\"uid\":0,\"gid\":0}",
            "\"user\":{\"uid\":0,\"gid\":0},\"capabilities\":{\"bounding\":[\"CAP_NOPE\"]}",
        ),
        true,
    );
    refused(b.path(), "c1", 5, &["CAP_NOPE", "line"]);
    let b = write_bundle(&GOOD.replacen('{', r#"{"linux":{"namespaces":[{"type":"warp"}]},"#, 1), true);
    refused(b.path(), "c1", 5, &["warp"]);
}

#[test]
fn unknown_container_and_signal() {
    let a = Amphi::new();
    for args in [vec!["state", "ghost"], vec!["start", "ghost"], vec!["delete", "ghost"], vec!["kill", "ghost", "KILL"]]
    {
        let out = a.run(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("container \"ghost\" does not exist"), "{}", stderr(&out));
    }
    for args in [
        vec!["exec", "ghost", "true"],
        vec!["ps", "ghost"],
        vec!["pause", "ghost"],
        vec!["resume", "ghost"],
        vec!["update", "--memory", "1m", "ghost"],
        vec!["events", "--stats", "ghost"],
    ] {
        let out = a.run(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("container \"ghost\" does not exist"), "{}", stderr(&out));
    }
    let out = a.run(&["kill", "ghost", "SIGWHAT"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("unknown signal \"SIGWHAT\""), "{}", stderr(&out));
}

#[test]
fn delete_force_of_a_missing_container_succeeds_like_runc() {
    let a = Amphi::new();
    let out = a.run(&["delete", "--force", "ghost"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(a.run(&["delete", "ghost"]).status.code(), Some(3));
}

#[test]
fn bad_update_and_events_arguments_are_named() {
    let a = Amphi::new();
    let out = a.run(&["update", "--memory", "lots", "ghost"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("--memory \"lots\""), "{}", stderr(&out));
    let out = a.run(&["events", "--interval", "soon", "ghost"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--interval \"soon\""), "{}", stderr(&out));
    let out = a.run(&["update", "--l3-cache-schema", "L3:0=f", "ghost"]);
    assert!(stderr(&out).contains("Intel RDT"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let a = Amphi::new();
    assert_eq!(a.run(&["start"]).status.code(), Some(2));
    assert_eq!(a.run(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn empty_list_in_every_format() {
    let a = Amphi::new();
    assert_eq!(a.ok(&["list"]), "ID  PID  STATUS  BUNDLE  CREATED  OWNER\n");
    assert_eq!(a.ok(&["list", "--format", "json"]).trim(), "[]");
    assert_eq!(a.ok(&["list", "-q"]), "");
}

#[test]
fn spec_writes_a_valid_config_and_refuses_to_overwrite() {
    let a = Amphi::new();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_str().unwrap();
    a.ok(&["spec", "--bundle", p]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(v["process"]["args"][0], "sh");
    let out = a.run(&["spec", "--bundle", p]);
    assert!(!out.status.success() && stderr(&out).contains("already exists"));
    let d2 = tempfile::tempdir().unwrap();
    a.ok(&["spec", "--rootless", "--bundle", d2.path().to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(d2.path().join("config.json")).unwrap()).unwrap();
    assert!(v["linux"]["uidMappings"].is_array());
}

#[test]
fn features_is_an_oci_features_document() {
    let a = Amphi::new();
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["features"])).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
    assert!(v["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n == "user"));
    assert!(v["mountOptions"].as_array().unwrap().iter().any(|o| o == "rbind"));
    assert!(v["linux"]["seccomp"]["actions"].as_array().unwrap().iter().any(|o| o == "SCMP_ACT_NOTIFY"));
    assert!(v["linux"]["apparmor"]["enabled"].is_boolean() && v["linux"]["selinux"]["enabled"].is_boolean());
}

#[test]
fn json_log_lines_carry_the_error() {
    let a = Amphi::new();
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = a
        .cmd()
        .args(["--log", log.path().to_str().unwrap(), "--log-format", "json", "state", "ghost"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = std::fs::read_to_string(log.path()).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("does not exist"));
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn systemd_cgroup_without_systemd_is_explained() {
    if std::path::Path::new("/run/systemd/system").exists() {
        eprintln!("SKIPPED: systemd runs on this host");
        return;
    }
    let a = Amphi::new();
    let b = write_bundle(GOOD, true);
    let out =
        a.cmd().args(["--systemd-cgroup", "create", "--bundle", b.path().to_str().unwrap(), "c1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("systemd is not running"), "{}", stderr(&out));
    assert!(a.leftovers().is_empty());
}
