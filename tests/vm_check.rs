//! Black-box tests of `amphi vm check` that need no guest: argument and
//! host refusals. Booting a guest is tier 4 (tests/vm/run-tests.sh).

use std::process::Command;

fn amphi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_amphi"))
}

#[test]
fn vm_check_refuses_on_a_pvm_host_with_the_explanation() {
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        println!(
            "SKIPPED vm_check_refuses_on_a_pvm_host_with_the_explanation: this host is not PVM (no kvm_pvm module)"
        );
        return;
    }
    let start = std::time::Instant::now();
    let out = amphi().args(["vm", "check", "--timeout", "5"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(20), "stderr: {err}");
    assert!(err.contains("is PVM") && err.contains("stock distro kernel cannot boot here"), "{err}");
    assert!(err.contains("nested test host") && err.contains("VT-x or AMD-V"), "says what would work: {err}");
    assert!(start.elapsed().as_secs() < 5, "refuses at once, never hangs");
}

#[test]
fn vm_check_rejects_a_zero_cpu_count() {
    let out = amphi().args(["vm", "check", "--cpus", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_vmm_is_hidden_from_help() {
    let out = amphi().args(["vm", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("check") && !help.contains("run-vmm"), "{help}");
}
