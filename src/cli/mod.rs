//! Command-line argument structs, named and shaped like runc's so that
//! podman, conmon, containerd and go-runc drive amphi unchanged. Parsing only:
//! no behaviour lives here.

pub mod bench;
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
    /// annotation. `both` is for `bench` only.
    #[arg(long, global = true, value_enum, value_name = "container|vm")]
    pub isolation: Option<IsolationArg>,

    /// Whether new VM containers may restore a VM template instead of
    /// booting (default true); `false` boots every VM cold, as does the
    /// `run.amphi.vm.template=false` annotation.
    #[arg(long = "vm-template", global = true, env = VM_TEMPLATE_ENV, value_name = "true|false",
          value_parser = clap::value_parser!(bool))]
    pub vm_template: Option<bool>,
}

/// Sets `--vm-template` for clients that cannot add flags.
pub const VM_TEMPLATE_ENV: &str = "AMPHI_VM_TEMPLATE";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    Container,
    Vm,
    /// `bench` only: measure both isolations side by side.
    #[value(hide = true)]
    Both,
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
    /// Run another process in a running container.
    Exec(ExecArgs),
    /// List the processes of a container (ps(1) arguments may follow the id).
    Ps(PsArgs),
    /// Freeze every process of a container.
    Pause(IdArgs),
    /// Thaw a paused container.
    Resume(IdArgs),
    /// Change the resource limits of a running container.
    Update(UpdateArgs),
    /// Print resource statistics (and OOM events) of a container as JSON.
    Events(EventsArgs),
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
    /// Measure the same workloads in both isolations (and in runc or crun),
    /// side by side, and report them as a table, JSON or HTML.
    Bench(bench::BenchArgs),
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
pub struct ExecArgs {
    /// AF_UNIX socket that receives the pseudoterminal master of the process.
    #[arg(long = "console-socket", value_name = "PATH")]
    pub console_socket: Option<PathBuf>,

    /// Working directory in the container.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Set an environment variable (NAME=value); may be repeated.
    #[arg(short, long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,

    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,

    /// User as uid[:gid].
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,

    /// An additional group id; may be repeated.
    #[arg(short = 'g', long = "additional-gids", value_name = "GID", allow_negative_numbers = true)]
    pub additional_gids: Vec<i64>,

    /// The whole process as a runtime-spec process JSON file (the flags
    /// describing the process are then ignored).
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,

    /// Do not wait for the process.
    #[arg(short, long)]
    pub detach: bool,

    /// File to write the process's pid to.
    #[arg(long = "pid-file", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// SELinux label of the process.
    #[arg(long = "process-label", value_name = "LABEL")]
    pub process_label: Option<String>,

    /// AppArmor profile of the process.
    #[arg(long, value_name = "PROFILE")]
    pub apparmor: Option<String>,

    /// Set no_new_privs for the process (--no-new-privs=false clears it).
    #[arg(long = "no-new-privs", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub no_new_privs: Option<bool>,

    /// Add a capability to the process's bounding, effective and permitted
    /// sets; may be repeated.
    #[arg(short, long = "cap", value_name = "CAP")]
    pub cap: Vec<String>,

    /// Pass N more file descriptors (from fd 3) to the process.
    #[arg(long = "preserve-fds", default_value_t = 0, value_name = "N")]
    pub preserve_fds: u32,

    /// Allow exec into a paused container.
    #[arg(long = "ignore-paused")]
    pub ignore_paused: bool,

    /// Container id.
    pub id: String,

    /// The command and its arguments (not needed with --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Output format: a ps(1) table, or the pids as a JSON array.
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,

    /// Container id.
    pub id: String,

    /// Arguments for ps(1) (default -ef).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "PS_ARGS")]
    pub ps_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// A linux.resources JSON file with the new limits, or - for stdin (the
    /// other flags are then ignored).
    #[arg(short, long, value_name = "FILE")]
    pub resources: Option<PathBuf>,

    /// Block I/O weight, 10 to 1000.
    #[arg(long = "blkio-weight", value_name = "N")]
    pub blkio_weight: Option<u16>,

    /// CPU CFS period in microseconds.
    #[arg(long = "cpu-period", value_name = "US")]
    pub cpu_period: Option<u64>,

    /// CPU CFS quota in microseconds per period.
    #[arg(long = "cpu-quota", value_name = "US", allow_negative_numbers = true)]
    pub cpu_quota: Option<i64>,

    /// CPU shares (relative weight).
    #[arg(long = "cpu-share", value_name = "N")]
    pub cpu_share: Option<u64>,

    /// CPU real-time period in microseconds.
    #[arg(long = "cpu-rt-period", value_name = "US")]
    pub cpu_rt_period: Option<u64>,

    /// CPU real-time runtime in microseconds per period.
    #[arg(long = "cpu-rt-runtime", value_name = "US", allow_negative_numbers = true)]
    pub cpu_rt_runtime: Option<i64>,

    /// CPUs to use (0-3,7).
    #[arg(long = "cpuset-cpus", value_name = "LIST")]
    pub cpuset_cpus: Option<String>,

    /// Memory nodes to use.
    #[arg(long = "cpuset-mems", value_name = "LIST")]
    pub cpuset_mems: Option<String>,

    /// Memory limit (bytes, or with a unit: 512m, 1g; -1 for none).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,

    /// Memory soft limit.
    #[arg(long = "memory-reservation", value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,

    /// Memory plus swap limit (-1 for unlimited swap).
    #[arg(long = "memory-swap", value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,

    /// Obsolete, ignored by the kernel.
    #[arg(long = "kernel-memory", value_name = "SIZE", hide = true)]
    pub kernel_memory: Option<String>,

    /// Obsolete, ignored by the kernel.
    #[arg(long = "kernel-memory-tcp", value_name = "SIZE", hide = true)]
    pub kernel_memory_tcp: Option<String>,

    /// Maximum number of processes (-1 for unlimited).
    #[arg(long = "pids-limit", value_name = "N", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,

    /// Intel RDT L3 cache schema (not supported: amphi does not manage RDT).
    #[arg(long = "l3-cache-schema", value_name = "SCHEMA", hide = true)]
    pub l3_cache_schema: Option<String>,

    /// Intel RDT memory bandwidth schema (not supported).
    #[arg(long = "mem-bw-schema", value_name = "SCHEMA", hide = true)]
    pub mem_bw_schema: Option<String>,

    /// Container id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Time between two stats records (Go duration: 5s, 500ms, 1m).
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub interval: String,

    /// Print one stats record and exit.
    #[arg(long)]
    pub stats: bool,

    /// Container id.
    pub id: String,
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
    fn exec_takes_runcs_flags_and_leaves_the_commands_own_alone() {
        let cli = Cli::try_parse_from([
            "amphi",
            "exec",
            "-t",
            "-e",
            "A=1",
            "--env",
            "B=2",
            "-u",
            "1:2",
            "-g",
            "5",
            "--cap",
            "CAP_KILL",
            "--no-new-privs",
            "--preserve-fds",
            "2",
            "c1",
            "sh",
            "-c",
            "echo -e x",
        ])
        .unwrap();
        match cli.command {
            Command::Exec(e) => {
                assert!(e.tty);
                assert_eq!(e.env, ["A=1", "B=2"]);
                assert_eq!(e.user.as_deref(), Some("1:2"));
                assert_eq!(e.additional_gids, [5]);
                assert_eq!(e.no_new_privs, Some(true));
                assert_eq!(e.preserve_fds, 2);
                assert_eq!(e.id, "c1");
                assert_eq!(e.command, ["sh", "-c", "echo -e x"]);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["amphi", "exec", "--no-new-privs=false", "-p", "/p.json", "-d", "c1"]).unwrap();
        match cli.command {
            Command::Exec(e) => {
                assert_eq!(e.no_new_privs, Some(false));
                assert!(e.detach && e.command.is_empty());
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn ps_passes_its_arguments_to_ps() {
        let cli = Cli::try_parse_from(["amphi", "ps", "--format", "json", "c1"]).unwrap();
        match cli.command {
            Command::Ps(p) => assert_eq!((p.format, p.ps_args.len()), (ListFormat::Json, 0)),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["amphi", "ps", "c1", "-o", "pid,cmd"]).unwrap();
        match cli.command {
            Command::Ps(p) => assert_eq!(p.ps_args, ["-o", "pid,cmd"]),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn update_takes_sizes_and_negative_limits() {
        let cli = Cli::try_parse_from([
            "amphi",
            "update",
            "--memory",
            "512m",
            "--memory-swap",
            "-1",
            "--pids-limit",
            "-1",
            "c",
        ])
        .unwrap();
        match cli.command {
            Command::Update(u) => {
                assert_eq!(u.memory.as_deref(), Some("512m"));
                assert_eq!(u.memory_swap.as_deref(), Some("-1"));
                assert_eq!(u.pids_limit, Some(-1));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn vm_template_is_a_global_true_or_false_also_read_from_the_environment() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.global.vm_template);
        // The only test that sets the variable, and only to a valid value:
        // other tests parsing meanwhile see it but never read the field.
        std::env::remove_var(VM_TEMPLATE_ENV);
        assert_eq!(parse(&["amphi", "state", "c"]).unwrap(), None);
        assert_eq!(parse(&["amphi", "--vm-template", "false", "create", "c"]).unwrap(), Some(false));
        assert_eq!(parse(&["amphi", "--vm-template=true", "run", "c"]).unwrap(), Some(true));
        assert_eq!(parse(&["amphi", "create", "--vm-template=false", "c"]).unwrap(), Some(false));
        let e = parse(&["amphi", "--vm-template", "no", "create", "c"]).unwrap_err().to_string();
        assert!(e.contains("--vm-template") && e.contains("true") && e.contains("false"), "{e}");
        std::env::set_var(VM_TEMPLATE_ENV, "false");
        let from_env = parse(&["amphi", "create", "c"]);
        let flag_wins = parse(&["amphi", "--vm-template=true", "create", "c"]);
        std::env::remove_var(VM_TEMPLATE_ENV);
        assert_eq!(from_env.unwrap(), Some(false));
        assert_eq!(flag_wins.unwrap(), Some(true));
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
