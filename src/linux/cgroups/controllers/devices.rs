//! devices: the container's effective device rules (see `device_rules`).
//!
//! v1 models the cgroup's state ([`V1DeviceState`]) and writes the fewest
//! lines to devices.allow / devices.deny that reach the target: a fresh cgroup
//! gets `a` (deny all) and then one allow line per exception; an update reads
//! devices.list and only writes differences, so a running container does not
//! briefly lose /dev/null. v2 compiles the rules into an eBPF program and
//! attaches it to the container's cgroup (an update attaches the new program
//! before detaching the old one).

use oci_spec::runtime::LinuxResources;

use super::{Controller, Ctx};
use crate::linux::cgroups::bpf;
use crate::linux::cgroups::device_rules::{effective_device_rules, V1DeviceState};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;

pub struct Devices;

impl Controller for Devices {
    const SUBSYSTEM: Subsystem = Subsystem::Devices;

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        res.devices().as_ref().map(|_| "devices")
    }

    fn validate(res: &LinuxResources, v2: bool) -> Result<()> {
        let rules = effective_device_rules(res.devices().as_deref(), None)?;
        if !v2 {
            V1DeviceState::from_rules(&rules)?;
        }
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, _res: &LinuxResources) -> Result<()> {
        if ctx.v2 {
            apply_v2(ctx)
        } else {
            apply_v1(ctx)
        }
    }
}

fn apply_v1(ctx: &Ctx<'_>) -> Result<()> {
    let target = V1DeviceState::from_rules(ctx.device_rules)?;
    let current = if ctx.fresh {
        None
    } else {
        let list = ctx.read("devices.list")?;
        Some(V1DeviceState::from_list(&list).map_err(|line| CgroupError::Parse { what: "devices.list", line })?)
    };
    let writes = target.transition_from(current.as_ref());
    // Consecutive lines to the same file share one open file.
    let mut i = 0;
    while i < writes.len() {
        let allow = writes[i].0;
        let run: Vec<String> = writes[i..].iter().take_while(|w| w.0 == allow).map(|w| w.1.clone()).collect();
        i += run.len();
        ctx.write_lines("devices", if allow { "devices.allow" } else { "devices.deny" }, &run)?;
    }
    Ok(())
}

fn apply_v2(ctx: &Ctx<'_>) -> Result<()> {
    let prog = bpf::device_filter(ctx.device_rules).map_err(|e| CgroupError::Bpf {
        op: "build",
        path: ctx.dir.to_path_buf(),
        log: String::new(),
        source: std::io::Error::other(e.to_string()),
    })?;
    ctx.sys.attach_device_filter(ctx.dir, &prog, !ctx.fresh).map_err(|f| CgroupError::Bpf {
        op: f.op,
        path: ctx.dir.to_path_buf(),
        log: if f.log.is_empty() { String::new() } else { format!("; verifier: {}", f.log) },
        source: f.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::bpf::interp::run_device_filter;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};
    use crate::linux::cgroups::device_rules::{Access, DeviceKind, DEFAULT_ALLOWED};

    fn default_rules() -> Vec<crate::linux::cgroups::device_rules::DeviceRule> {
        effective_device_rules(res(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#).devices().as_deref(), None)
            .unwrap()
    }

    #[test]
    fn v1_fresh_cgroup_gets_deny_all_then_allows() {
        let d = Dir::new(false, &[("devices.allow", ""), ("devices.deny", ""), ("devices.list", "a *:* rwm\n")]);
        let rules = default_rules();
        Devices::apply(&d.ctx(&rules), &res("{}")).unwrap();
        let w = d.writes();
        assert_eq!(w[0], ("devices.deny".into(), "a *:* rwm".into()));
        assert_eq!(w.len(), 1 + DEFAULT_ALLOWED.len());
        assert!(w[1..].iter().all(|(f, _)| f == "devices.allow"));
        assert!(w.contains(&("devices.allow".into(), "c 1:3 rwm".into())));
        assert!(w.contains(&("devices.allow".into(), "c 136:* rwm".into())));
        assert!(w.contains(&("devices.allow".into(), "b *:* m".into())));
    }

    #[test]
    fn v1_update_writes_only_the_difference() {
        let d = Dir::new(false, &[("devices.allow", ""), ("devices.deny", ""), ("devices.list", "")]);
        let rules = default_rules();
        let list: String = V1DeviceState::from_rules(&rules)
            .unwrap()
            .transition_from(None)
            .into_iter()
            .skip(1)
            .map(|(_, l)| l + "\n")
            .collect();
        std::fs::write(d.file("devices.list"), list).unwrap();
        let mut ctx = d.ctx(&rules);
        ctx.fresh = false;
        Devices::apply(&ctx, &res("{}")).unwrap();
        assert!(d.writes().is_empty(), "{:?}", d.writes());
        let mut more = rules.clone();
        more.push(crate::linux::cgroups::device_rules::DeviceRule::new(
            true,
            DeviceKind::Block,
            Some(8),
            Some(0),
            Access::READ,
        ));
        let mut ctx = d.ctx(&more);
        ctx.fresh = false;
        Devices::apply(&ctx, &res("{}")).unwrap();
        assert_eq!(d.writes(), vec![("devices.allow".into(), "b 8:0 r".into())]);
    }

    #[test]
    fn v1_refuses_rules_it_cannot_express() {
        let r = res(r#"{"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"access":"rwm"},
            {"allow":false,"type":"c","major":1,"minor":3,"access":"w"}]}"#);
        let e = Devices::validate(&r, false).unwrap_err().to_string();
        assert!(e.contains("cannot be applied on cgroup v1") && e.contains("punch a hole"), "{e}");
        Devices::validate(&r, true).unwrap();
    }

    #[test]
    fn v2_attaches_a_program_with_the_rules() {
        let d = Dir::new(true, &[]);
        let rules = effective_device_rules(
            res(r#"{"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":10,"minor":229,"access":"rw"}]}"#)
                .devices()
                .as_deref(),
            None,
        )
        .unwrap();
        Devices::apply(&d.ctx(&rules), &res("{}")).unwrap();
        let progs = d.sys.programs(d.dir());
        assert_eq!(progs.len(), 1);
        let p = &progs[0];
        assert!(run_device_filter(p, DeviceKind::Char, 1, 3, Access::READ.union(Access::WRITE)).unwrap());
        assert!(run_device_filter(p, DeviceKind::Char, 10, 229, Access::WRITE).unwrap());
        assert!(!run_device_filter(p, DeviceKind::Char, 10, 230, Access::READ).unwrap());
        assert!(!run_device_filter(p, DeviceKind::Block, 8, 0, Access::READ).unwrap());
        assert!(run_device_filter(p, DeviceKind::Block, 8, 0, Access::MKNOD).unwrap());
        // An update replaces the program.
        let mut ctx = d.ctx(&rules);
        ctx.fresh = false;
        Devices::apply(&ctx, &res("{}")).unwrap();
        assert_eq!(d.sys.programs(d.dir()).len(), 1);
    }

    #[test]
    fn v2_bpf_failure_carries_the_verifier_log() {
        let d = Dir::new(true, &[]);
        d.sys.fail_bpf(libc::EACCES);
        let e = Devices::apply(&d.ctx(&default_rules()), &res("{}")).unwrap_err().to_string();
        assert!(e.contains("cannot load the eBPF device filter") && e.contains("verifier: 0: (61)"), "{e}");
    }
}
