//! Command-line argument structs, named and shaped like runc's so that
//! podman, conmon, containerd and go-runc drive amphi unchanged. Parsing only:
//! no behaviour lives here.

pub mod vm;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The default state root, like runc's `/run/runc`.
pub const DEFAULT_ROOT: &str = "/run/amphi";

#[derive(Debug, Parser)]
#[command(
    name = "amphi",
    version,
    about = "OCI runtime: the same bundle as a Linux container or in a KVM microVM",
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before the subcommand, as runc takes them.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Directory for container state (should be on tmpfs).
    #[arg(long, global = true, default_value = DEFAULT_ROOT, value_name = "DIR")]
    pub root: PathBuf,

    /// Write logs to FILE instead of stderr.
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// Log format: text, or json (one object a line with level, msg and time).
    #[arg(long = "log-format", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log debug messages too.
    #[arg(long, global = true)]
    pub debug: bool,

    /// Manage cgroups through systemd (cgroupsPath "slice:prefix:name").
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,

    /// Accepted for runc compatibility (before the subcommand only, so that
    /// `spec --rootless` keeps its own meaning); amphi decides by itself.
    #[arg(long = "rootless", id = "global_rootless", value_name = "true|false|auto", hide = true)]
    pub rootless: Option<String>,

    /// Accepted for runc compatibility; checkpointing is not supported.
    #[arg(long, value_name = "PATH", hide = true)]
    pub criu: Option<PathBuf>,

    /// Isolation for new containers; overrides the `run.amphi.isolation`
    /// annotation.
    #[arg(long, global = true, value_enum, value_name = "container|vm")]
    pub isolation: Option<IsolationArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    Container,
    Vm,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container from a bundle; it waits for `start`.
    Create(CreateArgs),
    /// Start the user process of a created container.
    Start(IdArgs),
    /// Create, start, wait for and delete a container.
    Run(RunArgs),
    /// Print a container's state as OCI state JSON.
    State(IdArgs),
    /// Send a signal to a container's init process (or all its processes).
    Kill(KillArgs),
    /// Delete a container and everything it holds on the host.
    Delete(DeleteArgs),
    /// List containers.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Print the OCI features document of this build.
    Features,
    /// Write a default config.json into the bundle.
    Spec(SpecArgs),
    /// VM isolation tools.
    #[command(subcommand)]
    Vm(vm::VmCommand),
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Container id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Container id.
    pub id: String,

    #[command(flatten)]
    pub opts: CreateOpts,
}

/// The flags `create` and `run` share.
#[derive(Debug, Args)]
pub struct CreateOpts {
    /// Path to the bundle directory (default: the current directory).
    #[arg(short, long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,

    /// AF_UNIX socket that receives the console's pseudoterminal master.
    #[arg(long = "console-socket", value_name = "PATH")]
    pub console_socket: Option<PathBuf>,

    /// File to write the container's pid to.
    #[arg(long = "pid-file", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Do not use pivot_root (for a rootfs on a ramdisk).
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,

    /// Do not create a new session keyring for the container.
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,

    /// Pass N more file descriptors (from fd 3, after $LISTEN_FDS) to the
    /// container.
    #[arg(long = "preserve-fds", default_value_t = 0, value_name = "N")]
    pub preserve_fds: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Container id.
    pub id: String,

    #[command(flatten)]
    pub opts: CreateOpts,

    /// Do not wait: leave the container running.
    #[arg(short, long)]
    pub detach: bool,

    /// Do not delete the container after it exits.
    #[arg(long)]
    pub keep: bool,

    /// Accepted for runc compatibility.
    #[arg(long = "no-subreaper", hide = true)]
    pub no_subreaper: bool,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal all processes of the container, not only its init.
    #[arg(short, long)]
    pub all: bool,

    /// Container id.
    pub id: String,

    /// Signal by name (KILL, SIGKILL) or number (default: SIGTERM).
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill the container first if it is still running (SIGKILL).
    #[arg(short, long)]
    pub force: bool,

    /// Container id.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,

    /// Print only container ids.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Bundle directory to write config.json into (default: the current
    /// directory).
    #[arg(short, long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,

    /// Generate the configuration for a rootless container.
    #[arg(long)]
    pub rootless: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_the_subcommand_as_runc_takes_them() {
        let cli = Cli::try_parse_from([
            "amphi",
            "--root",
            "/tmp/r",
            "--log",
            "/tmp/l",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "c1",
        ])
        .unwrap();
        assert_eq!(cli.global.root, PathBuf::from("/tmp/r"));
        assert_eq!(cli.global.log_format, LogFormat::Json);
        match cli.command {
            Command::Create(c) => {
                assert_eq!(c.id, "c1");
                assert_eq!(c.opts.bundle, Some(PathBuf::from("/b")));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn rootless_means_two_things_like_in_runc() {
        let cli = Cli::try_parse_from(["amphi", "--rootless", "true", "spec", "--rootless"]).unwrap();
        assert_eq!(cli.global.rootless.as_deref(), Some("true"));
        match cli.command {
            Command::Spec(s) => assert!(s.rootless),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn kill_defaults_to_sigterm() {
        let cli = Cli::try_parse_from(["amphi", "kill", "c1"]).unwrap();
        match cli.command {
            Command::Kill(k) => assert_eq!(k.signal, "SIGTERM"),
            other => panic!("parsed as {other:?}"),
        }
    }
}
