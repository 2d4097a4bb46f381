//! `amphi exec`: another process in a running container; exits with its
//! status unless detached.

use amphi::container::ExecOptions;

use crate::cli::{ExecArgs, GlobalArgs};

pub fn run(global: &GlobalArgs, a: ExecArgs) -> anyhow::Result<u8> {
    // The exec'd process is a fork of amphi until it execs (CVE-2019-5736).
    amphi::linux::exe::ensure_protected()?;
    let opts = ExecOptions {
        process: a.process,
        args: a.command,
        cwd: a.cwd,
        env: a.env,
        tty: a.tty,
        user: a.user,
        additional_gids: a.additional_gids,
        caps: a.cap,
        no_new_privs: a.no_new_privs,
        apparmor: a.apparmor,
        process_label: a.process_label,
        console_socket: a.console_socket,
        pid_file: a.pid_file,
        detach: a.detach,
        preserve_fds: a.preserve_fds,
        ignore_paused: a.ignore_paused,
    };
    let code = super::runtime(global).exec(&a.id, &opts)?;
    Ok(code.clamp(0, 255) as u8)
}
