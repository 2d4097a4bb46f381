//! `exec`: what process to run in an existing container, decided the way
//! runc decides it. Either the caller gives a whole process (`--process
//! FILE`, what containerd, conmon and docker use), or the process of the
//! bundle's config.json is the base and the flags change it: the command
//! line, `--cwd`, `--env` (appended), `--user uid[:gid]`,
//! `--additional-gids`, `--cap` (added to the bounding, effective and
//! permitted sets, and to ambient when the spec has inheritable ones),
//! `--no-new-privs`, `--apparmor`, `--process-label`, and `--tty` (off
//! unless given).
//!
//! Everything here is plain data; [`crate::container::Runtime::exec`] runs
//! it through the container's isolation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxCapabilities, Process};

use crate::spec::SpecError;

/// What `exec` takes besides the container id.
#[derive(Debug, Default, Clone)]
pub struct ExecOptions {
    /// `--process FILE`: the whole process; the flags below that describe
    /// the process are then ignored, as in runc.
    pub process: Option<PathBuf>,
    /// The command and its arguments.
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<String>,
    pub tty: bool,
    /// `uid[:gid]`, numbers.
    pub user: Option<String>,
    pub additional_gids: Vec<i64>,
    pub caps: Vec<String>,
    /// `--no-new-privs` when given (None: the base process decides).
    pub no_new_privs: Option<bool>,
    pub apparmor: Option<String>,
    pub process_label: Option<String>,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: u32,
    /// Allow exec into a paused container.
    pub ignore_paused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("exec needs a command: give it after the container id, or pass --process FILE")]
    NoCommand,
    #[error("cannot read the process file {path}")]
    ReadProcess {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("--user {0:?}: {1}; use numeric ids, uid[:gid]")]
    BadUser(String, &'static str),
    #[error("--additional-gids {0}: a group id cannot be negative")]
    NegativeGid(i64),
    #[error("--cap {0:?}: unknown capability; use names such as CAP_NET_ADMIN")]
    BadCap(String),
    #[error("cannot allocate a terminal for a detached exec without --console-socket to receive it")]
    DetachedTtyWithoutSocket,
    #[error("--console-socket was given but the process has no terminal: add --tty or drop the socket")]
    SocketWithoutTty,
    #[error("the container's config.json has no process to start from: pass the whole process with --process FILE")]
    NoBaseProcess,
}

/// The process to run: the one in `--process`, or `base` (config.json's)
/// changed by the flags.
pub fn build_process(
    opts: &ExecOptions,
    base: impl FnOnce() -> Result<Option<Process>, SpecError>,
) -> Result<Process, ExecError> {
    if let Some(path) = &opts.process {
        let text = read_process_file(path)?;
        return Ok(crate::spec::load_process(path, &text)?);
    }
    if opts.args.is_empty() {
        return Err(ExecError::NoCommand);
    }
    let mut p = base()?.ok_or(ExecError::NoBaseProcess)?;
    p.set_args(Some(opts.args.clone()));
    if let Some(cwd) = &opts.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some(a) = &opts.apparmor {
        p.set_apparmor_profile(Some(a.clone()));
    }
    if let Some(l) = &opts.process_label {
        p.set_selinux_label(Some(l.clone()));
    }
    if !opts.caps.is_empty() {
        add_caps(&mut p, &opts.caps)?;
    }
    if !opts.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        env.extend(opts.env.iter().cloned());
        p.set_env(Some(env));
    }
    p.set_terminal(Some(opts.tty));
    if let Some(nnp) = opts.no_new_privs {
        p.set_no_new_privileges(Some(nnp));
    }
    if let Some(u) = &opts.user {
        let (uid, gid) = parse_user(u)?;
        p.user_mut().set_uid(uid);
        if let Some(g) = gid {
            p.user_mut().set_gid(g);
        }
    }
    if !opts.additional_gids.is_empty() {
        let mut gids = p.user().additional_gids().clone().unwrap_or_default();
        for g in &opts.additional_gids {
            gids.push(u32::try_from(*g).map_err(|_| ExecError::NegativeGid(*g))?);
        }
        p.user_mut().set_additional_gids(Some(gids));
    }
    let config = PathBuf::from("config.json");
    crate::spec::check_process(&config, &p)?;
    Ok(p)
}

fn read_process_file(path: &Path) -> Result<String, ExecError> {
    std::fs::read_to_string(path).map_err(|source| ExecError::ReadProcess { path: path.to_path_buf(), source })
}

fn parse_user(u: &str) -> Result<(u32, Option<u32>), ExecError> {
    let bad = |why| ExecError::BadUser(u.to_string(), why);
    let (uid, gid) = match u.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (u, None),
    };
    let uid = uid.parse::<u32>().map_err(|_| bad("the uid is not a number"))?;
    let gid = gid.map(|g| g.parse::<u32>().map_err(|_| bad("the gid is not a number"))).transpose()?;
    Ok((uid, gid))
}

fn add_caps(p: &mut Process, caps: &[String]) -> Result<(), ExecError> {
    let parsed: Vec<Capability> = caps
        .iter()
        .map(|c| {
            let name = c.to_ascii_uppercase();
            let name = if name.starts_with("CAP_") { name } else { format!("CAP_{name}") };
            serde_json::from_value(serde_json::Value::String(name)).map_err(|_| ExecError::BadCap(c.clone()))
        })
        .collect::<Result<_, _>>()?;
    let mut sets = p.capabilities().clone().unwrap_or_else(empty_caps);
    let add = |set: &Option<HashSet<Capability>>| {
        let mut s = set.clone().unwrap_or_default();
        s.extend(parsed.iter().copied());
        Some(s)
    };
    let bounding = add(sets.bounding());
    let effective = add(sets.effective());
    let permitted = add(sets.permitted());
    sets.set_bounding(bounding).set_effective(effective).set_permitted(permitted);
    // Ambient needs inheritable; as runc, only when the spec has some.
    if sets.inheritable().is_some() {
        let ambient = add(sets.ambient());
        sets.set_ambient(ambient);
    }
    p.set_capabilities(Some(sets));
    Ok(())
}

fn empty_caps() -> LinuxCapabilities {
    let mut c = LinuxCapabilities::default();
    c.set_bounding(None).set_effective(None).set_inheritable(None).set_permitted(None).set_ambient(None);
    c
}

/// Checks that the terminal-related options fit together, before anything
/// runs (the same rules as runc).
pub fn check_terminal(process: &Process, opts: &ExecOptions) -> Result<(), ExecError> {
    let tty = process.terminal().unwrap_or(false);
    match (tty, opts.console_socket.is_some(), opts.detach) {
        (true, false, true) => Err(ExecError::DetachedTtyWithoutSocket),
        (false, true, _) => Err(ExecError::SocketWithoutTty),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Result<Option<Process>, SpecError> {
        let p: Process = serde_json::from_str(
            r#"{"terminal":true,"user":{"uid":1,"gid":2,"additionalGids":[3]},"args":["sh"],"env":["A=1"],
                "cwd":"/","capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"],
                "inheritable":["CAP_KILL"]},"noNewPrivileges":true}"#,
        )
        .unwrap();
        Ok(Some(p))
    }

    fn opts(args: &[&str]) -> ExecOptions {
        ExecOptions { args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn flags_change_the_config_process() {
        let mut o = opts(&["ls", "-l"]);
        o.cwd = Some("/tmp".into());
        o.env = vec!["B=2".into()];
        o.user = Some("1000:1001".into());
        o.additional_gids = vec![7];
        o.caps = vec!["net_admin".into()];
        o.no_new_privs = Some(false);
        o.apparmor = Some("docker-default".into());
        let p = build_process(&o, base).unwrap();
        assert_eq!(p.args().as_deref().unwrap(), ["ls", "-l"]);
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!(p.env().as_deref().unwrap(), ["A=1", "B=2"]);
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1001));
        assert_eq!(p.user().additional_gids().as_deref().unwrap(), [3, 7]);
        assert_eq!(p.terminal(), Some(false), "tty is off unless --tty");
        assert_eq!(p.no_new_privileges(), Some(false));
        assert_eq!(p.apparmor_profile().as_deref(), Some("docker-default"));
        let c = p.capabilities().as_ref().unwrap();
        for set in [c.bounding(), c.effective(), c.permitted(), c.ambient()] {
            assert!(set.as_ref().unwrap().contains(&Capability::NetAdmin));
        }
        assert!(!c.inheritable().as_ref().unwrap().contains(&Capability::NetAdmin));
    }

    #[test]
    fn a_user_without_gid_keeps_the_configs_gid() {
        let mut o = opts(&["id"]);
        o.user = Some("5".into());
        let p = build_process(&o, base).unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (5, 2));
    }

    #[test]
    fn bad_flags_are_named() {
        let mut o = opts(&["id"]);
        o.user = Some("nobody".into());
        assert!(build_process(&o, base).unwrap_err().to_string().contains("--user \"nobody\""));
        let mut o = opts(&["id"]);
        o.additional_gids = vec![-1];
        assert!(matches!(build_process(&o, base), Err(ExecError::NegativeGid(-1))));
        let mut o = opts(&["id"]);
        o.caps = vec!["CAP_FLY".into()];
        assert!(matches!(build_process(&o, base), Err(ExecError::BadCap(_))));
        assert!(matches!(build_process(&opts(&[]), base), Err(ExecError::NoCommand)));
        let mut o = opts(&["id"]);
        o.cwd = Some("rel".into());
        assert!(build_process(&o, base).unwrap_err().to_string().contains("cwd"));
        assert!(matches!(build_process(&opts(&["id"]), || Ok(None)), Err(ExecError::NoBaseProcess)));
    }

    #[test]
    fn a_process_file_wins_over_the_flags() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.json");
        std::fs::write(&f, r#"{"args":["/bin/true"],"cwd":"/","terminal":true}"#).unwrap();
        let mut o = opts(&["ignored"]);
        o.process = Some(f);
        o.tty = false;
        let p = build_process(&o, || unreachable!("config.json is not read")).unwrap();
        assert_eq!(p.args().as_deref().unwrap(), ["/bin/true"]);
        assert_eq!(p.terminal(), Some(true));
        o.process = Some(d.path().join("missing.json"));
        assert!(matches!(build_process(&o, base), Err(ExecError::ReadProcess { .. })));
    }

    #[test]
    fn terminal_rules() {
        let p = |tty: bool| {
            let mut p = Process::default();
            p.set_terminal(Some(tty));
            p
        };
        let mut o = ExecOptions { detach: true, ..Default::default() };
        assert!(matches!(check_terminal(&p(true), &o), Err(ExecError::DetachedTtyWithoutSocket)));
        o.console_socket = Some("/s".into());
        check_terminal(&p(true), &o).unwrap();
        assert!(matches!(check_terminal(&p(false), &o), Err(ExecError::SocketWithoutTty)));
        check_terminal(&p(true), &ExecOptions::default()).unwrap();
    }
}
