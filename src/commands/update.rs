//! `amphi update`: new resource limits for a running container.

use amphi::container::UpdateOptions;

use crate::cli::{GlobalArgs, UpdateArgs};

pub fn run(global: &GlobalArgs, a: UpdateArgs) -> anyhow::Result<u8> {
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        anyhow::bail!("--l3-cache-schema and --mem-bw-schema set Intel RDT, which amphi does not manage: drop them");
    }
    let opts = UpdateOptions {
        resources: a.resources,
        blkio_weight: a.blkio_weight,
        cpu_period: a.cpu_period,
        cpu_quota: a.cpu_quota,
        cpu_share: a.cpu_share,
        cpu_rt_period: a.cpu_rt_period,
        cpu_rt_runtime: a.cpu_rt_runtime,
        cpuset_cpus: a.cpuset_cpus,
        cpuset_mems: a.cpuset_mems,
        memory: a.memory,
        memory_reservation: a.memory_reservation,
        memory_swap: a.memory_swap,
        kernel_memory: a.kernel_memory,
        kernel_memory_tcp: a.kernel_memory_tcp,
        pids_limit: a.pids_limit,
    };
    super::runtime(global).update(&a.id, &opts)?;
    Ok(0)
}
