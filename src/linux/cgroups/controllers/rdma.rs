//! rdma: `linux.resources.rdma`, the same rdma.max file on v1 and v2, one
//! `<device> hca_handle=N hca_object=M` write per device.

use oci_spec::runtime::LinuxResources;

use super::{Controller, Ctx};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;

pub struct Rdma;

fn lines(res: &LinuxResources) -> Vec<String> {
    let mut out: Vec<String> = res
        .rdma()
        .iter()
        .flatten()
        .filter(|(_, r)| r.hca_handles().is_some() || r.hca_objects().is_some())
        .map(|(dev, r)| {
            let mut l = dev.clone();
            if let Some(h) = r.hca_handles() {
                l.push_str(&format!(" hca_handle={h}"));
            }
            if let Some(o) = r.hca_objects() {
                l.push_str(&format!(" hca_object={o}"));
            }
            l
        })
        .collect();
    // The spec's map has no order; keep writes reproducible.
    out.sort();
    out
}

impl Controller for Rdma {
    const SUBSYSTEM: Subsystem = Subsystem::Rdma;

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        (!lines(res).is_empty()).then_some("rdma")
    }

    fn validate(res: &LinuxResources, _v2: bool) -> Result<()> {
        if let Some(dev) =
            res.rdma().iter().flatten().map(|(d, _)| d).find(|d| d.is_empty() || d.contains(char::is_whitespace))
        {
            return Err(CgroupError::invalid("rdma", format!("{dev:?}"), "not an RDMA device name"));
        }
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()> {
        ctx.write_lines("rdma", "rdma.max", &lines(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};

    #[test]
    fn writes_each_device() {
        for v2 in [false, true] {
            let d = Dir::new(v2, &[("rdma.max", "")]);
            let r = res(r#"{"rdma":{"mlx5_1":{"hcaHandles":3},"mlx4_0":{"hcaHandles":2,"hcaObjects":2000}}}"#);
            assert_eq!(Rdma::requested(&r), Some("rdma"));
            d.apply::<Rdma>(&r).unwrap();
            assert_eq!(
                d.writes(),
                vec![
                    ("rdma.max".into(), "mlx4_0 hca_handle=2 hca_object=2000".into()),
                    ("rdma.max".into(), "mlx5_1 hca_handle=3".into())
                ]
            );
        }
    }
}
