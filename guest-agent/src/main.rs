//! `amphi-agent`: PID 1 in the guest.
//!
//! It mounts the basic filesystems, loads the kernel modules the image
//! lists (in dependency order), starts reaping orphans, then serves the
//! agent protocol ([`amphi::agent`]) on vsock port
//! [`amphi::agent::AGENT_VSOCK_PORT`]. It prints one line saying it
//! listens, which the VMM watches for. A fatal setup error is printed and
//! the guest powered off, so the host sees a quick, explained failure
//! instead of a timeout (PID 1 exiting would panic the kernel). A boot
//! that makes a VM template serves only what starts nothing until the
//! host says the guest was restored (restore.rs).

mod containers;
mod disks;
mod helper;
mod init;
mod network;
mod reaper;
mod restore;
mod server;
mod sessions;

use std::time::Instant;

fn main() {
    let start = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--version") {
        println!("amphi-agent {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    // The agent runs itself as the guest's runtime helper (helper.rs).
    if args.get(1).map(String::as_str) == Some("runtime") {
        std::process::exit(helper::main(&args[2..]));
    }
    if std::process::id() != 1 {
        eprintln!("amphi-agent: must run as PID 1 (/init) inside an amphi guest; it mounts filesystems and powers the machine off");
        std::process::exit(2);
    }
    let state = match init::setup() {
        Ok(s) => s,
        Err(e) => init::fatal(&format!("setup failed: {e}")),
    };
    let listener = match server::listen() {
        Ok(l) => l,
        Err(e) => init::fatal(&format!("cannot listen on vsock port {}: {e}", amphi::agent::AGENT_VSOCK_PORT)),
    };
    let init_ms = start.elapsed().as_millis() as u64;
    init::console(&format!(
        "{} {} (protocol {}, agent {}, {} ms)",
        amphi::agent::LISTENING_MARKER,
        amphi::agent::AGENT_VSOCK_PORT,
        amphi::agent::PROTOCOL_VERSION,
        env!("CARGO_PKG_VERSION"),
        init_ms
    ));
    if state.template {
        init::console("amphi-agent: VM template boot: nothing runs until the host sends restored");
    }
    let restore = restore::Restore::new(state.template, Box::new(restore::Linux));
    server::serve(listener, server::Context::new(state.modules_loaded, init_ms, state.exits, restore));
}
