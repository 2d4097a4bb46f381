//! The CRI test (issue 12, docs/kubernetes.md): containerd 1.6 and its CRI
//! plugin run one pod through a runtime handler, driven over the CRI gRPC
//! API the way the kubelet drives it, and afterwards nothing of the pod may
//! be left on the host.
//!
//! `#[ignore]`d: it needs root and containerd. `tests/cri/run.sh` runs it
//! for one handler (`AMPHI_CRI_HANDLER`: `amphi`, the default, `amphi-vm` or
//! `runc`, which checks the harness itself). The environment (a private
//! containerd in a network namespace of its own, the CNI bridge, the
//! locally built images) is `tests/cri/env.sh`; this file only speaks CRI
//! and looks for leftovers. Each check prints `ok - ...` or `not ok - ...`
//! (run.sh counts them); the test fails when any check failed.
//!
//! `AMPHI_CRI_DIR` names the environment's directory (default: a new one in
//! /tmp); `AMPHI_CRI_KEEP_LOG=FILE` keeps containerd's log, which carries
//! the shims' logs too.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState, ContainerStatsRequest, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ExecSyncResponse, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxStatsRequest, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// The handlers tests/cri/env.sh configures.
const HANDLERS: [&str; 3] = ["amphi", "amphi-vm", "runc"];
/// Exit status of env.sh when the host cannot run it.
const ENV_SKIP: i32 = 77;
/// Each CRI call's limit: generous, a VM boots in seconds in the nested
/// test host, but a hung shim must not hang the suite.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// The containerd namespace of the CRI plugin.
const K8S_NS: &str = "k8s.io";

#[test]
#[ignore = "needs root and containerd with its CRI plugin: tests/cri/run.sh"]
fn a_pod_runs_through_the_cri_and_leaves_nothing_behind() {
    let handler = std::env::var("AMPHI_CRI_HANDLER").unwrap_or_else(|_| "amphi".into());
    assert!(HANDLERS.contains(&handler.as_str()), "AMPHI_CRI_HANDLER is one of {HANDLERS:?}, not {handler}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root (containerd creates namespaces, cgroups and mounts)");
        return;
    }
    let mut env = match Env::start() {
        Ok(env) => env,
        Err(Start::Skip(why)) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
        Err(Start::Fail(why)) => panic!("cannot start the CRI environment: {why}"),
    };
    if handler != "runc" && env.var("SHIM_DIR").is_empty() {
        panic!("containerd-shim-amphi-v2 is not on PATH: run scripts/setup.sh, or set SHIM_DIR to a build directory");
    }
    if handler == "amphi-vm" {
        if let Some(why) = no_vms_here(env.var("SHIM_DIR")) {
            eprintln!("SKIPPED: amphi-vm needs VM isolation, and `amphi vm check` says: {why}");
            return;
        }
    }
    println!("# handler {handler}, containerd's log: {}", env.var("CONTAINERD_LOG"));

    let mut report = Report::default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let ids = rt.block_on(pod_lifecycle(&env, &handler, &mut report));
    leftovers(&env, &ids, &mut report);

    if let Ok(keep) = std::env::var("AMPHI_CRI_KEEP_LOG") {
        let _ = std::fs::copy(env.var("CONTAINERD_LOG"), keep);
    }
    if !report.failed.is_empty() {
        println!("# containerd's log, its last lines:");
        let log = std::fs::read_to_string(env.var("CONTAINERD_LOG")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        for l in &lines[lines.len().saturating_sub(25)..] {
            println!("#   {}", l.chars().take(400).collect::<String>());
        }
    }
    let cleaned = env.stop();
    report.check("the environment's teardown found nothing of the pod to clean up", cleaned.is_empty(), || {
        cleaned.join("\n")
    });
    println!("# {} checks passed, {} failed", report.passed, report.failed.len());
    assert!(report.failed.is_empty(), "failed checks: {:#?}", report.failed);
}

/// What was created, for the leftover checks.
#[derive(Default)]
struct Ids {
    pod: Option<String>,
    containers: Vec<String>,
}

impl Ids {
    fn all(&self) -> impl Iterator<Item = &String> {
        self.pod.iter().chain(&self.containers)
    }
}

/// The pod's life, call by call as the kubelet makes them. A failed step
/// that later steps need ends the pod early, but it is still stopped and
/// removed through the CRI, as the kubelet would.
async fn pod_lifecycle(env: &Env, handler: &str, report: &mut Report) -> Ids {
    let mut ids = Ids::default();
    let mut cri = match connect(env.var("CRI_SOCKET")).await {
        Ok(c) => c,
        Err(e) => {
            report.fail("the client connects to containerd's CRI socket", e);
            return ids;
        }
    };
    match call(cri.version(VersionRequest { version: "v1".into() })).await {
        Ok(v) => report
            .check("Version: containerd answers the CRI v1 API", v.runtime_api_version == "v1", || format!("{v:?}")),
        Err(e) => report.fail("Version: containerd answers the CRI v1 API", e),
    };

    // The pod, as the kubelet describes it: its own cgroup below the node's
    // pods cgroup, network and IPC shared by its containers, pid per
    // container (Kubernetes' default).
    let uid = format!("{:08x}-cri-test", std::process::id());
    let log_dir = Path::new(env.var("CRI_LOG_DIR")).join(&uid);
    // amphi-vm puts the pod in a VM by its options file (env.sh), not by an
    // annotation: the pod says nothing about isolation.
    let annotations = HashMap::new();
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "cri-test".into(),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "cri-test".into(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: HashMap::from([("app".to_string(), "amphi-cri-test".to_string())]),
        annotations,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("{}/pod{uid}", env.var("CRI_CGROUP_PARENT")),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The kubelet creates the pod's log directory.
    if let Err(e) = std::fs::create_dir_all(&log_dir) {
        report.fail("the pod's log directory can be created", format!("{}: {e}", log_dir.display()));
        return ids;
    }
    let name = "RunPodSandbox starts the pod's sandbox";
    match call(
        cri.run_pod_sandbox(RunPodSandboxRequest { config: Some(pod_config.clone()), runtime_handler: handler.into() }),
    )
    .await
    {
        Ok(r) if !r.pod_sandbox_id.is_empty() => {
            report.pass(name);
            ids.pod = Some(r.pod_sandbox_id);
        }
        Ok(r) => report.fail(name, format!("no sandbox id: {r:?}")),
        Err(e) => report.fail(name, e),
    }
    let Some(pod) = ids.pod.clone() else { return ids };

    match call(cri.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })).await {
        Ok(r) => {
            let ip = r.status.as_ref().and_then(|s| s.network.as_ref()).map(|n| n.ip.clone()).unwrap_or_default();
            report.check(
                "PodSandboxStatus: the pod is ready with an address from the CNI bridge",
                ip.starts_with("10.88.212."),
                || format!("{r:?}"),
            );
        }
        Err(e) => report.fail("PodSandboxStatus: the pod is ready with an address from the CNI bridge", e),
    }

    containers(&mut cri, &pod, &pod_config, &log_dir, env.var("CRI_SOCKET"), &mut ids, report).await;

    let name = "StopPodSandbox stops the sandbox and tears the pod's network down";
    match call(cri.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() })).await {
        Ok(_) => report.pass(name),
        Err(e) => report.fail(name, e),
    }
    let name = "RemovePodSandbox removes the pod";
    match call(cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() })).await {
        Ok(_) => report.pass(name),
        Err(e) => report.fail(name, e),
    }
    let name = "ListPodSandbox and ListContainers no longer show the pod or its containers";
    let pods = call(cri.list_pod_sandbox(ListPodSandboxRequest {
        filter: Some(PodSandboxFilter { id: pod.clone(), ..Default::default() }),
    }))
    .await;
    let ctrs = call(cri.list_containers(ListContainersRequest {
        filter: Some(ContainerFilter { pod_sandbox_id: pod.clone(), ..Default::default() }),
    }))
    .await;
    match (pods, ctrs) {
        (Ok(p), Ok(c)) => report.check(name, p.items.is_empty() && c.containers.is_empty(), || format!("{p:?}\n{c:?}")),
        (p, c) => report.fail(name, format!("{p:?}\n{c:?}")),
    }
    ids
}

/// The pod's containers: a server and a client on the pod's network, exec,
/// an exit code, listing, stats, and their stop and removal.
async fn containers(
    cri: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    pod_config: &PodSandboxConfig,
    log_dir: &Path,
    socket: &str,
    ids: &mut Ids,
    report: &mut Report,
) {
    let script = |s: &str| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()];
    // busybox's httpd serves "pong" on the pod's port 8080.
    let server = script("mkdir -p /tmp/www && echo pong > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www");
    // The client fetches it through the pod's loopback, prints it (to its
    // CRI log) and keeps it in /tmp/got for exec to read.
    let client =
        script("until wget -q -O /tmp/got http://127.0.0.1:8080/; do sleep 0.2; done; cat /tmp/got; exec sleep 100000");
    let exiter = script("echo bye; exit 7");

    let mut started = HashMap::new();
    for (name, command) in [("server", server), ("client", client), ("exiter", exiter)] {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: "localhost/amphi-busybox:latest".into(), ..Default::default() }),
            command,
            log_path: format!("{name}.log"),
            labels: HashMap::from([("role".to_string(), name.to_string())]),
            ..Default::default()
        };
        let check = format!("CreateContainer and StartContainer run the {name} container");
        let created = call(cri.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        }))
        .await;
        let id = match created {
            Ok(r) => r.container_id,
            Err(e) => {
                report.fail(&check, format!("CreateContainer: {e}"));
                continue;
            }
        };
        ids.containers.push(id.clone());
        match call(cri.start_container(StartContainerRequest { container_id: id.clone() })).await {
            Ok(_) => {
                report.pass(&check);
                started.insert(name, id);
            }
            Err(e) => report.fail(&check, format!("StartContainer: {e}")),
        }
    }

    if let Some(client) = started.get("client") {
        // The client loops until the server answers: give it time.
        let name = "the client reaches the server on the pod's loopback (ExecSync cat /tmp/got)";
        let deadline = Instant::now() + Duration::from_secs(30);
        let got = loop {
            let r = exec(cri, client, &["cat", "/tmp/got"]).await;
            if matches!(&r, Ok(r) if r.exit_code == 0) || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        match got {
            Ok(r) => report.check(name, r.exit_code == 0 && r.stdout == b"pong\n", || show_exec(&r)),
            Err(e) => report.fail(name, e),
        }
        let name = "the client's output reaches its CRI log file";
        let log = std::fs::read_to_string(log_dir.join("client.log")).unwrap_or_default();
        report.check(name, log.lines().any(|l| l.ends_with(" stdout F pong")), || format!("client.log: {log:?}"));
    }

    if let Some(server) = started.get("server") {
        let name = "ExecSync returns the command's stdout, stderr and exit code";
        match exec(cri, server, &["/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"]).await {
            Ok(r) => {
                report.check(name, r.stdout == b"hi\n" && r.stderr == b"oops\n" && r.exit_code == 3, || show_exec(&r))
            }
            Err(e) => report.fail(name, e),
        }
        let name = "ExecSync of a missing program fails with a non-zero exit code or an error";
        match exec(cri, server, &["/no/such/program"]).await {
            Ok(r) => report.check(name, r.exit_code != 0, || show_exec(&r)),
            Err(e) => println!("# {name}: the call failed: {}", e.lines().next().unwrap_or_default()),
        }
        // The containers join the sandbox's UTS namespace, which has the
        // pod's hostname.
        let name = "the server has the pod's hostname (the sandbox's UTS namespace)";
        match exec(cri, server, &["hostname"]).await {
            Ok(r) => report.check(name, r.stdout == b"cri-test\n", || show_exec(&r)),
            Err(e) => report.fail(name, e),
        }
    }

    if let Some(exiter) = started.get("exiter") {
        let name = "ContainerStatus shows the exit code 7 of a container that exited";
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match call(cri.container_status(ContainerStatusRequest { container_id: exiter.clone(), verbose: false }))
                .await
            {
                Ok(r) => {
                    let s = r.status.clone().unwrap_or_default();
                    if s.state == ContainerState::ContainerExited as i32 || Instant::now() > deadline {
                        report.check(
                            name,
                            s.state == ContainerState::ContainerExited as i32 && s.exit_code == 7,
                            || {
                                format!(
                                    "state {} exit code {} reason {:?} message {:?}",
                                    s.state, s.exit_code, s.reason, s.message
                                )
                            },
                        );
                        break;
                    }
                }
                Err(e) => {
                    report.fail(name, e);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Both shims serve a whole pod: they group containers by the sandbox id
    // annotation.
    let shims = processes_naming(&[], socket).iter().filter(|p| p.contains("containerd-shim")).count();
    report.check(
        &format!("one shim process serves the pod (sandbox and {} started containers)", started.len()),
        shims == 1,
        || format!("{shims} shim processes"),
    );

    let name = "ListContainers lists the pod's containers in their states";
    match call(cri.list_containers(ListContainersRequest {
        filter: Some(ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() }),
    }))
    .await
    {
        Ok(r) => {
            let state = |role: &str| {
                r.containers.iter().find(|c| c.labels.get("role").map(String::as_str) == Some(role)).map(|c| c.state)
            };
            let running = Some(ContainerState::ContainerRunning as i32);
            let ok = r.containers.len() == 3
                && state("server") == running
                && state("client") == running
                && state("exiter") == Some(ContainerState::ContainerExited as i32);
            report.check(name, ok, || format!("{r:?}"));
        }
        Err(e) => report.fail(name, e),
    }

    if let Some(server) = started.get("server") {
        let name = "ContainerStats reports the server's cpu and memory";
        match call(cri.container_stats(ContainerStatsRequest { container_id: server.clone() })).await {
            Ok(r) => {
                let s = r.stats.clone().unwrap_or_default();
                let cpu = s.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map(|v| v.value);
                let mem = s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value);
                report.check(name, cpu.is_some_and(|v| v > 0) && mem.is_some_and(|v| v > 0), || format!("{r:?}"));
            }
            Err(e) => report.fail(name, e),
        }
    }
    // containerd 1.6 reads the pod's stats from the pod's cgroup
    // (cgroup_parent) and each running container's from its shim.
    let name = "PodSandboxStats reports the pod's cpu, memory, processes and containers";
    match call(cri.pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: pod.into() })).await {
        Ok(r) => {
            let linux = r.stats.as_ref().and_then(|s| s.linux.clone()).unwrap_or_default();
            let procs = linux.process.as_ref().and_then(|p| p.process_count.as_ref()).map(|v| v.value);
            let ok = linux.cpu.is_some()
                && linux.memory.is_some()
                && procs.is_some_and(|n| n > 0)
                && linux.containers.len() >= 2;
            report.check(name, ok, || format!("{r:?}"));
        }
        Err(e) => report.fail(name, e),
    }

    for (role, id) in &started {
        let name = format!("StopContainer stops the {role} container");
        match call(cri.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 5 })).await {
            Ok(_) => {
                let state =
                    call(cri.container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false }))
                        .await
                        .map(|r| r.status.unwrap_or_default().state);
                report.check(&name, matches!(state, Ok(s) if s == ContainerState::ContainerExited as i32), || {
                    format!("state after StopContainer: {state:?}")
                });
            }
            Err(e) => report.fail(&name, e),
        }
    }
    for id in &ids.containers {
        let name = format!("RemoveContainer removes {}", short(id));
        match call(cri.remove_container(RemoveContainerRequest { container_id: id.clone() })).await {
            Ok(_) => report.pass(&name),
            Err(e) => report.fail(&name, e),
        }
    }
}

/// Nothing of the pod is left: processes, runtime state, cgroups, mounts,
/// address leases.
fn leftovers(env: &Env, ids: &Ids, report: &mut Report) {
    let ours: Vec<&String> = ids.all().collect();
    if ours.is_empty() {
        return;
    }
    // A shim exits shortly after containerd's Shutdown call.
    let socket = env.var("CRI_SOCKET");
    let deadline = Instant::now() + Duration::from_secs(10);
    let procs = loop {
        let procs = processes_naming(&ours, socket);
        if procs.is_empty() || Instant::now() > deadline {
            break procs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    report.check("no process of the pod is left (shims, VMMs, workloads)", procs.is_empty(), || procs.join("\n"));

    let state: Vec<String> = ["/run/containerd/amphi", "/run/containerd/runc"]
        .iter()
        .flat_map(|root| ours.iter().map(move |id| Path::new(root).join(K8S_NS).join(id)))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    report.check("no runtime state of the pod is left", state.is_empty(), || state.join("\n"));

    let parent = env.var("CRI_CGROUP_PARENT").trim_start_matches('/').to_string();
    let mut cgroups = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let top = hierarchy.path().join(&parent);
        // v2 mounts its single hierarchy at /sys/fs/cgroup itself.
        for dir in [top, Path::new("/sys/fs/cgroup").join(&parent)] {
            for pod in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                for c in std::fs::read_dir(pod.path()).into_iter().flatten().flatten() {
                    if c.path().is_dir() {
                        cgroups.push(c.path().display().to_string());
                    }
                }
            }
        }
    }
    cgroups.sort();
    cgroups.dedup();
    report.check("no cgroup of the pod's containers is left below the pod's cgroup", cgroups.is_empty(), || {
        cgroups.join("\n")
    });

    let dir = env.dir.to_string_lossy().into_owned();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&dir) || ours.iter().any(|id| l.contains(id.as_str())))
        .map(String::from)
        .collect();
    report
        .check("no mount of the pod is left (rootfs, shm, network namespace)", mounts.is_empty(), || mounts.join("\n"));

    // host-local keeps one file per leased address.
    let leases: Vec<String> = std::fs::read_dir(env.dir.join("cni/ipam/amphi-cri"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    report.check("the pod's address lease is released", leases.is_empty(), || leases.join(" "));
}

/// Processes whose command line names one of `ids` or containerd's
/// `socket` (the shims carry both), other than containerd itself.
fn processes_naming(ids: &[&String], socket: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        let is_containerd = cmdline.split(' ').next().is_some_and(|a| a.ends_with("containerd"));
        let names_ours =
            ids.iter().any(|id| cmdline.contains(id.as_str())) || cmdline.contains(&format!("-address {socket}"));
        if names_ours && !is_containerd {
            found.push(format!("{pid}: {}", cmdline.chars().take(200).collect::<String>()));
        }
    }
    found
}

/// Why the shim's amphi cannot boot VMs on this host, if it cannot
/// (`amphi vm check` boots a guest: a PVM host or one without /dev/kvm
/// fails it with the reason).
fn no_vms_here(shim_dir: &str) -> Option<String> {
    let out = match Command::new(Path::new(shim_dir).join("amphi")).args(["vm", "check"]).output() {
        Ok(out) => out,
        Err(e) => return Some(format!("cannot run {shim_dir}/amphi: {e}")),
    };
    if out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stderr);
    Some(text.lines().next().unwrap_or("it failed").chars().take(300).collect())
}

async fn connect(socket: &str) -> Result<RuntimeServiceClient<Channel>, String> {
    let path = PathBuf::from(socket);
    // The URI is a placeholder: the connector ignores it and dials the socket.
    let channel = Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| format!("{socket}: {e}"))?;
    Ok(RuntimeServiceClient::new(channel))
}

/// One CRI call with the time limit; errors as text.
async fn call<T, F>(f: F) -> Result<T, String>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer in {CALL_TIMEOUT:?}")),
    }
}

async fn exec(cri: &mut RuntimeServiceClient<Channel>, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse, String> {
    call(cri.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 30,
    }))
    .await
}

fn show_exec(r: &ExecSyncResponse) -> String {
    format!(
        "exit code {}, stdout {:?}, stderr {:?}",
        r.exit_code,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    )
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The checks' outcomes, printed as they come.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: Vec<String>,
}

impl Report {
    fn pass(&mut self, name: &str) {
        self.passed += 1;
        println!("ok - {name}");
    }

    fn fail(&mut self, name: &str, detail: impl Into<String>) {
        println!("not ok - {name}");
        for l in detail.into().lines() {
            println!("#   {}", l.chars().take(400).collect::<String>());
        }
        self.failed.push(name.to_string());
    }

    fn check(&mut self, name: &str, ok: bool, detail: impl FnOnce() -> String) {
        if ok {
            self.pass(name)
        } else {
            self.fail(name, detail())
        }
    }
}

/// The environment of tests/cri/env.sh: started here, stopped when the test
/// ends, panics included.
struct Env {
    script: PathBuf,
    dir: PathBuf,
    vars: HashMap<String, String>,
    stopped: bool,
}

enum Start {
    Skip(String),
    Fail(String),
}

impl Env {
    fn start() -> Result<Env, Start> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cri/env.sh");
        let dir = match std::env::var_os("AMPHI_CRI_DIR") {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(format!("/tmp/amphi-cri.{}", std::process::id())),
        };
        let out = Command::new(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .map_err(|e| Start::Fail(format!("{}: {e}", script.display())))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut env = Env { script, dir, vars: HashMap::new(), stopped: false };
        match out.status.code() {
            Some(0) => {}
            Some(ENV_SKIP) => {
                env.stopped = true;
                return Err(Start::Skip(stdout.trim().trim_start_matches("SKIPPED: ").to_string()));
            }
            _ => {
                // Drop tears down what was started.
                return Err(Start::Fail(format!("{}{}", stdout, String::from_utf8_lossy(&out.stderr))));
            }
        }
        print!("{stdout}");
        let vars = std::fs::read_to_string(env.dir.join("env"))
            .map_err(|e| Start::Fail(format!("env.sh wrote no env: {e}")))?;
        env.vars =
            vars.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok(env)
    }

    fn var(&self, name: &str) -> &str {
        self.vars.get(name).map(String::as_str).unwrap_or_default()
    }

    /// Tears down; returns what env.sh had to clean up.
    fn stop(&mut self) -> Vec<String> {
        self.stopped = true;
        let out = Command::new(&self.script).arg("stop").arg(&self.dir).output();
        match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("cleaned:"))
                .map(String::from)
                .collect(),
            Err(e) => vec![format!("cannot run {}: {e}", self.script.display())],
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !self.stopped {
            for l in self.stop() {
                eprintln!("# {l}");
            }
        }
    }
}
