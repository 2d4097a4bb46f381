//! Driving the amphi binary, as containerd's runc shim drives runc.
//!
//! The shim never isolates anything itself: every lifecycle step is one
//! `amphi` command, so whichever isolation amphi picks for the bundle
//! (container or VM) works through the shim unchanged. Each command gets
//! `--root` (the namespace's state root) and `--log <bundle>/log.json
//! --log-format json`; when a command fails, the last error amphi logged is
//! the message containerd shows, and amphi's stable exit code
//! (docs/exit-codes.md) picks the ttrpc status code.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use amphi::container::OciState;
use containerd_shim::protos::ttrpc::Code;

use crate::reaper::{Finished, Runner};

#[derive(Debug, thiserror::Error)]
pub enum AmphiError {
    #[error("cannot run {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("amphi {command}: {message}")]
    Failed { command: &'static str, status: i32, message: String },
    #[error("amphi state printed something that is not OCI state JSON")]
    BadState(#[source] serde_json::Error),
    #[error("amphi events --stats printed something that is not a stats record")]
    BadStats(#[source] serde_json::Error),
}

impl AmphiError {
    /// The ttrpc code for this failure, from amphi's exit code.
    pub fn code(&self) -> Code {
        match self {
            AmphiError::Failed { status, .. } => code_for_status(*status),
            _ => Code::INTERNAL,
        }
    }

    /// Whether amphi said the container does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AmphiError::Failed { status, .. } if *status == i32::from(amphi::exit::NOT_FOUND))
    }
}

/// amphi's exit codes to ttrpc (and so containerd errdefs) codes.
pub fn code_for_status(status: i32) -> Code {
    match u8::try_from(status) {
        Ok(amphi::exit::NOT_FOUND) => Code::NOT_FOUND,
        Ok(amphi::exit::CONFLICT) => Code::FAILED_PRECONDITION,
        Ok(amphi::exit::BAD_INPUT) | Ok(amphi::exit::USAGE) => Code::INVALID_ARGUMENT,
        Ok(amphi::exit::UNSUPPORTED) => Code::UNIMPLEMENTED,
        _ => Code::UNKNOWN,
    }
}

/// The stdio `amphi create` runs with; the container's init inherits it.
#[derive(Debug)]
pub struct CreateStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl CreateStdio {
    pub fn null() -> CreateStdio {
        CreateStdio { stdin: Stdio::null(), stdout: Stdio::null(), stderr: Stdio::null() }
    }
}

/// What `create` passes besides the id and the bundle.
#[derive(Debug, Default, Clone)]
pub struct CreateFlags {
    pub pid_file: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// `--isolation`, from the runtime's options file.
    pub isolation: Option<amphi::spec::Isolation>,
}

/// One amphi binary with its global flags.
#[derive(Clone)]
pub struct Amphi {
    binary: PathBuf,
    root: PathBuf,
    log: Option<PathBuf>,
    systemd_cgroup: bool,
    runner: Arc<dyn Runner>,
}

impl std::fmt::Debug for Amphi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amphi").field("binary", &self.binary).field("root", &self.root).finish()
    }
}

impl Amphi {
    pub fn new(binary: PathBuf, root: PathBuf, log: Option<PathBuf>, runner: Arc<dyn Runner>) -> Amphi {
        Amphi { binary, root, log, systemd_cgroup: false, runner }
    }

    pub fn with_systemd_cgroup(mut self, on: bool) -> Amphi {
        self.systemd_cgroup = on;
        self
    }

    fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        if let Some(log) = &self.log {
            c.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        if self.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c.arg(sub);
        c
    }

    /// Runs one command; a non-zero exit becomes [`AmphiError::Failed`]
    /// carrying amphi's own message.
    fn run(&self, command: &'static str, mut cmd: Command) -> Result<Finished, AmphiError> {
        let log_start = self.log.as_deref().and_then(|l| std::fs::metadata(l).ok()).map_or(0, |m| m.len());
        let done =
            self.runner.run(&mut cmd).map_err(|source| AmphiError::Spawn { binary: self.binary.clone(), source })?;
        if done.status == 0 {
            return Ok(done);
        }
        let logged = self.log.as_deref().and_then(|l| last_error_since(l, log_start));
        let message = logged
            .or_else(|| {
                let text = String::from_utf8_lossy(&done.stderr).trim().to_string();
                (!text.is_empty()).then_some(text)
            })
            .unwrap_or_else(|| format!("exited with status {} and said nothing", done.status));
        Err(AmphiError::Failed { command, status: done.status, message })
    }

    /// `amphi create`: the container's init ends up waiting for `start`.
    pub fn create(&self, id: &str, bundle: &Path, flags: &CreateFlags, stdio: CreateStdio) -> Result<(), AmphiError> {
        let mut c = self.command("create");
        c.arg("--bundle").arg(bundle).arg("--pid-file").arg(&flags.pid_file);
        if let Some(s) = &flags.console_socket {
            c.arg("--console-socket").arg(s);
        }
        if flags.no_pivot {
            c.arg("--no-pivot");
        }
        if flags.no_new_keyring {
            c.arg("--no-new-keyring");
        }
        if let Some(isolation) = flags.isolation {
            c.arg("--isolation").arg(isolation.to_string());
        }
        c.arg(id).current_dir(bundle).stdin(stdio.stdin).stdout(stdio.stdout).stderr(stdio.stderr);
        self.run("create", c).map(drop)
    }

    fn captured(&self, sub: &'static str, args: &[OsString]) -> Result<Finished, AmphiError> {
        let mut c = self.command(sub);
        c.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        self.run(sub, c)
    }

    pub fn start(&self, id: &str) -> Result<(), AmphiError> {
        self.captured("start", &[id.into()]).map(drop)
    }

    pub fn state(&self, id: &str) -> Result<OciState, AmphiError> {
        let out = self.captured("state", &[id.into()])?;
        serde_json::from_slice(&out.stdout).map_err(AmphiError::BadState)
    }

    /// `amphi events --stats`: one record of the container's statistics,
    /// as amphi reads them (for a container of a VM pod, from the guest).
    pub fn stats(&self, id: &str) -> Result<amphi::container::stats::Stats, AmphiError> {
        let out = self.captured("events", &["--stats".into(), id.into()])?;
        let event: amphi::container::stats::Event =
            serde_json::from_slice(&out.stdout).map_err(AmphiError::BadStats)?;
        Ok(event.data.map(|d| *d).unwrap_or_default())
    }

    pub fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), AmphiError> {
        let mut args: Vec<OsString> = Vec::new();
        if all {
            args.push("--all".into());
        }
        args.push(id.into());
        args.push(signal.to_string().into());
        self.captured("kill", &args).map(drop)
    }

    /// `amphi exec --process FILE --detach --pid-file P`: the process runs
    /// with `stdio` (or the terminal sent to `console_socket`) once this
    /// returns; its pid is in the pid file.
    pub fn exec(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: CreateStdio,
    ) -> Result<(), AmphiError> {
        let mut c = self.command("exec");
        c.arg("--process").arg(process).arg("--detach").arg("--pid-file").arg(pid_file);
        if let Some(s) = console_socket {
            c.arg("--console-socket").arg(s);
        }
        c.arg(id).stdin(stdio.stdin).stdout(stdio.stdout).stderr(stdio.stderr);
        self.run("exec", c).map(drop)
    }

    pub fn pause(&self, id: &str) -> Result<(), AmphiError> {
        self.captured("pause", &[id.into()]).map(drop)
    }

    pub fn resume(&self, id: &str) -> Result<(), AmphiError> {
        self.captured("resume", &[id.into()]).map(drop)
    }

    /// `amphi update --resources FILE`.
    pub fn update(&self, id: &str, resources: &Path) -> Result<(), AmphiError> {
        self.captured("update", &["--resources".into(), resources.into(), id.into()]).map(drop)
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<(), AmphiError> {
        let mut args: Vec<OsString> = Vec::new();
        if force {
            args.push("--force".into());
        }
        args.push(id.into());
        self.captured("delete", &args).map(drop)
    }
}

/// The message of the last `error` entry amphi appended to its json log
/// after byte `offset`.
pub fn last_error_since(log: &Path, offset: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut text = String::new();
    f.read_to_string(&mut text).ok()?;
    last_error(&text)
}

fn last_error(text: &str) -> Option<String> {
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v.get("level")?.as_str()? == "error").then(|| v.get("msg")?.as_str().map(str::to_string))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    /// Runs commands without a reaper thread: tests have none.
    struct Direct;

    impl Runner for Direct {
        fn run(&self, cmd: &mut Command) -> std::io::Result<Finished> {
            let mut child = cmd.spawn()?;
            let (stdout, stderr) = crate::reaper::collect_output(&mut child);
            let status = child.wait()?;
            use std::os::unix::process::ExitStatusExt;
            let status = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            Ok(Finished { status, stdout, stderr })
        }
    }

    /// Records the command lines it is asked to run and answers with a
    /// canned result.
    struct Recorder(Mutex<Vec<Vec<String>>>, Finished);

    impl Runner for Recorder {
        fn run(&self, cmd: &mut Command) -> std::io::Result<Finished> {
            let line = std::iter::once(cmd.get_program()).chain(cmd.get_args());
            self.0.lock().unwrap().push(line.map(|a| a.to_string_lossy().into_owned()).collect());
            Ok(self.1.clone())
        }
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("amphi");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn commands_carry_root_log_and_runc_flags() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new()), Finished::default()));
        let a = Amphi::new("/bin/amphi".into(), "/run/r/ns".into(), Some("/b/log.json".into()), rec.clone());
        a.kill("c1", 9, true).unwrap();
        a.delete("c1", true).unwrap();
        a.start("c1").unwrap();
        let flags = CreateFlags {
            pid_file: "/b/init.pid".into(),
            console_socket: Some("/tmp/s/console.sock".into()),
            no_pivot: true,
            no_new_keyring: false,
            isolation: Some(amphi::spec::Isolation::Vm),
        };
        a.create("c1", Path::new("/b"), &flags, CreateStdio::null()).unwrap();
        a.exec("c1", Path::new("/b/p.json"), Path::new("/b/e1.pid"), Some(Path::new("/s/c.sock")), CreateStdio::null())
            .unwrap();
        a.pause("c1").unwrap();
        a.resume("c1").unwrap();
        a.update("c1", Path::new("/b/r.json")).unwrap();
        let lines = rec.0.lock().unwrap();
        let g = "/bin/amphi --root /run/r/ns --log /b/log.json --log-format json";
        assert_eq!(lines[0].join(" "), format!("{g} kill --all c1 9"));
        assert_eq!(lines[1].join(" "), format!("{g} delete --force c1"));
        assert_eq!(lines[2].join(" "), format!("{g} start c1"));
        assert_eq!(
            lines[3].join(" "),
            format!("{g} create --bundle /b --pid-file /b/init.pid --console-socket /tmp/s/console.sock --no-pivot --isolation vm c1")
        );
        assert_eq!(
            lines[4].join(" "),
            format!("{g} exec --process /b/p.json --detach --pid-file /b/e1.pid --console-socket /s/c.sock c1")
        );
        assert_eq!(lines[5].join(" "), format!("{g} pause c1"));
        assert_eq!(lines[6].join(" "), format!("{g} resume c1"));
        assert_eq!(lines[7].join(" "), format!("{g} update --resources /b/r.json c1"));
    }

    #[test]
    fn failures_carry_amphis_logged_message_and_code() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log.json");
        std::fs::write(&log, "{\"level\":\"error\",\"msg\":\"an old failure\",\"time\":\"t\"}\n").unwrap();
        let bin = script(
            d.path(),
            r#"log=$4
echo '{"level":"warning","msg":"noise","time":"t"}' >> "$log"
echo '{"level":"error","msg":"container \"ghost\" does not exist","time":"t"}' >> "$log"
echo '{"level":"info","msg":"after","time":"t"}' >> "$log"
echo 'stderr text' >&2
exit 3"#,
        );
        let a = Amphi::new(bin, d.path().join("root"), Some(log), Arc::new(Direct));
        let e = a.kill("ghost", 15, false).unwrap_err();
        assert_eq!(e.to_string(), "amphi kill: container \"ghost\" does not exist");
        assert_eq!(e.code(), Code::NOT_FOUND);
        assert!(e.is_not_found());
    }

    #[test]
    fn without_a_log_entry_stderr_is_the_message() {
        let d = tempfile::tempdir().unwrap();
        let bin = script(d.path(), "echo 'cannot start container \"c\": it is running' >&2; exit 4");
        let a = Amphi::new(bin.clone(), d.path().into(), Some(d.path().join("log.json")), Arc::new(Direct));
        let e = a.start("c").unwrap_err();
        assert_eq!(e.to_string(), "amphi start: cannot start container \"c\": it is running");
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);

        let silent = script(d.path(), "exit 6");
        let a = Amphi::new(silent, d.path().into(), None, Arc::new(Direct));
        let e = a.delete("c", false).unwrap_err();
        assert!(e.to_string().contains("status 6"), "{e}");
        assert_eq!(e.code(), Code::UNIMPLEMENTED);
    }

    #[test]
    fn state_parses_oci_state_json() {
        let d = tempfile::tempdir().unwrap();
        let bin = script(
            d.path(),
            r#"echo '{"ociVersion":"1.2.1","id":"c","pid":42,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"x","owner":"root"}'"#,
        );
        let a = Amphi::new(bin, d.path().into(), None, Arc::new(Direct));
        let s = a.state("c").unwrap();
        assert_eq!((s.pid, s.status), (42, amphi::container::Status::Running));

        let garbage = script(d.path(), "echo not json");
        let a = Amphi::new(garbage, d.path().into(), None, Arc::new(Direct));
        assert!(matches!(a.state("c"), Err(AmphiError::BadState(_))));
    }

    #[test]
    fn a_missing_binary_is_a_spawn_error() {
        let a = Amphi::new("/nonexistent/amphi".into(), "/r".into(), None, Arc::new(Direct));
        let e = a.start("c").unwrap_err();
        assert!(matches!(e, AmphiError::Spawn { .. }), "{e}");
        assert_eq!(e.code(), Code::INTERNAL);
    }

    #[test]
    fn exit_codes_map_to_ttrpc_codes() {
        assert_eq!(code_for_status(1), Code::UNKNOWN);
        assert_eq!(code_for_status(2), Code::INVALID_ARGUMENT);
        assert_eq!(code_for_status(3), Code::NOT_FOUND);
        assert_eq!(code_for_status(4), Code::FAILED_PRECONDITION);
        assert_eq!(code_for_status(5), Code::INVALID_ARGUMENT);
        assert_eq!(code_for_status(6), Code::UNIMPLEMENTED);
        assert_eq!(code_for_status(137), Code::UNKNOWN);
        assert_eq!(code_for_status(-1), Code::UNKNOWN);
    }
}
