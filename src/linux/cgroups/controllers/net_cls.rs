//! net_cls: `linux.resources.network.classID`, v1 only (cgroup v2 tags
//! packets with eBPF instead, which is outside the OCI spec's model).

use oci_spec::runtime::LinuxResources;

use super::{Controller, Ctx};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;

pub struct NetCls;

fn class_id(res: &LinuxResources) -> Option<u32> {
    res.network().as_ref()?.class_id()
}

impl Controller for NetCls {
    const SUBSYSTEM: Subsystem = Subsystem::NetCls;

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        class_id(res).map(|_| "network.classID")
    }

    fn validate(res: &LinuxResources, v2: bool) -> Result<()> {
        if v2 && class_id(res).is_some() {
            return Err(CgroupError::unsupported(
                "network.classID",
                "cgroup v2 has no net_cls controller; remove the field",
            ));
        }
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()> {
        if let Some(id) = class_id(res) {
            ctx.write("network.classID", "net_cls.classid", &id.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};

    #[test]
    fn class_id_v1_only() {
        let d = Dir::new(false, &[("net_cls.classid", "0")]);
        let r = res(r#"{"network":{"classID":1048577}}"#);
        assert_eq!(NetCls::requested(&r), Some("network.classID"));
        d.apply::<NetCls>(&r).unwrap();
        assert_eq!(d.get("net_cls.classid"), "1048577");
        let e = Dir::new(true, &[]).apply::<NetCls>(&r).unwrap_err().to_string();
        assert!(e.contains("network.classID is not supported"), "{e}");
        assert_eq!(NetCls::requested(&res(r#"{"network":{}}"#)), None);
    }
}
