//! net_prio: `linux.resources.network.priorities`, v1 only; one
//! `<interface> <priority>` write per entry into net_prio.ifpriomap.

use oci_spec::runtime::LinuxResources;

use super::{Controller, Ctx};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;

pub struct NetPrio;

fn priorities(res: &LinuxResources) -> Vec<(String, u32)> {
    res.network()
        .as_ref()
        .and_then(|n| n.priorities().as_ref())
        .map(|p| p.iter().map(|p| (p.name().clone(), p.priority())).collect())
        .unwrap_or_default()
}

impl Controller for NetPrio {
    const SUBSYSTEM: Subsystem = Subsystem::NetPrio;

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        (!priorities(res).is_empty()).then_some("network.priorities")
    }

    fn validate(res: &LinuxResources, v2: bool) -> Result<()> {
        let p = priorities(res);
        if v2 && !p.is_empty() {
            return Err(CgroupError::unsupported(
                "network.priorities",
                "cgroup v2 has no net_prio controller; remove the field",
            ));
        }
        if let Some((name, _)) = p.iter().find(|(n, _)| n.is_empty() || n.contains(char::is_whitespace)) {
            return Err(CgroupError::invalid("network.priorities.name", format!("{name:?}"), "not an interface name"));
        }
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()> {
        let lines: Vec<String> = priorities(res).into_iter().map(|(n, p)| format!("{n} {p}")).collect();
        ctx.write_lines("network.priorities", "net_prio.ifpriomap", &lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};

    #[test]
    fn one_write_per_interface() {
        let d = Dir::new(false, &[("net_prio.ifpriomap", "lo 0\n")]);
        let r = res(r#"{"network":{"priorities":[{"name":"lo","priority":10},{"name":"eth0","priority":30}]}}"#);
        assert_eq!(NetPrio::requested(&r), Some("network.priorities"));
        d.apply::<NetPrio>(&r).unwrap();
        assert_eq!(
            d.writes(),
            vec![("net_prio.ifpriomap".into(), "lo 10".into()), ("net_prio.ifpriomap".into(), "eth0 30".into())]
        );
        assert!(Dir::new(true, &[]).apply::<NetPrio>(&r).is_err());
        let bad = res(r#"{"network":{"priorities":[{"name":"a b","priority":1}]}}"#);
        assert!(d.apply::<NetPrio>(&bad).unwrap_err().to_string().contains("interface name"));
    }
}
