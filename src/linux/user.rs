//! The container process's identity: groups, gid, uid, umask and the
//! environment defaults that depend on the user (HOME).

use nix::unistd::{Gid, Uid};
use oci_spec::runtime::User;

use super::LinuxError;

/// Switches to the spec's user. `setgroups_allowed` is false inside a user
/// namespace whose setgroups is denied (rootless).
pub fn switch(user: &User, setgroups_allowed: bool) -> Result<(), LinuxError> {
    let uid = Uid::from_raw(user.uid());
    let gid = Gid::from_raw(user.gid());
    if setgroups_allowed {
        let groups: Vec<Gid> = user.additional_gids().iter().flatten().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).map_err(|e| LinuxError::sys("cannot set process.user.additionalGids", e))?;
    }
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| LinuxError::sys(format!("cannot switch to gid {gid}: is it mapped in the user namespace?"), e))?;
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| LinuxError::sys(format!("cannot switch to uid {uid}: is it mapped in the user namespace?"), e))?;
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask as libc::mode_t));
    }
    Ok(())
}

/// The home directory of `uid` from the container's /etc/passwd, or "/".
pub fn home_of(passwd: Option<&str>, uid: u32) -> String {
    passwd
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
            })
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// The environment the process gets: the spec's, plus HOME if missing.
pub fn environment(spec_env: &[String], home: impl FnOnce() -> String) -> Vec<String> {
    let mut env: Vec<String> = spec_env.to_vec();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_comes_from_passwd_or_defaults_to_root() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/srv/web:/bin/sh\nbad\n";
        assert_eq!(home_of(Some(passwd), 0), "/root");
        assert_eq!(home_of(Some(passwd), 1000), "/srv/web");
        assert_eq!(home_of(Some(passwd), 5), "/");
        assert_eq!(home_of(None, 0), "/");
    }

    #[test]
    fn home_is_added_only_when_missing() {
        let e = environment(&["PATH=/bin".into()], || "/root".into());
        assert_eq!(e, vec!["PATH=/bin".to_string(), "HOME=/root".to_string()]);
        let e = environment(&["HOME=/x".into()], || unreachable!());
        assert_eq!(e, vec!["HOME=/x".to_string()]);
    }
}
