//! hugetlb: `linux.resources.hugepageLimits`.
//!
//! v1 writes hugetlb.<size>.limit_in_bytes, v2 hugetlb.<size>.max (-1 is
//! "max"); both also set the reservation limit (.rsvd.*) where the kernel has
//! one, as runc does, so that reserved but unfaulted pages count too. A page
//! size the kernel does not offer fails with the sizes it does offer (listed
//! by cgroups-rs from /sys/kernel/mm/hugepages). On a hybrid host such as
//! this project's development machine, hugetlb lives in the cgroup2 mount.

use oci_spec::runtime::LinuxResources;

use super::{Controller, Ctx};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;

pub struct Hugetlb;

fn valid_size(s: &str) -> bool {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && matches!(&s[digits..], "KB" | "MB" | "GB" | "TB" | "PB")
}

fn available_sizes() -> String {
    let c = cgroups_rs::fs::hugetlb::HugeTlbController::new("/".into(), "/".into(), false);
    let sizes = c.get_sizes();
    if sizes.is_empty() {
        "none".into()
    } else {
        sizes.join(", ")
    }
}

impl Controller for Hugetlb {
    const SUBSYSTEM: Subsystem = Subsystem::Hugetlb;

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        res.hugepage_limits().as_ref().filter(|l| !l.is_empty()).map(|_| "hugepageLimits")
    }

    fn validate(res: &LinuxResources, _v2: bool) -> Result<()> {
        for (i, l) in res.hugepage_limits().iter().flatten().enumerate() {
            if !valid_size(l.page_size()) {
                return Err(CgroupError::invalid(
                    format!("hugepageLimits[{i}].pageSize"),
                    format!("{:?}", l.page_size()),
                    "use <number><KB|MB|GB>, e.g. \"2MB\"",
                ));
            }
            if l.limit() < -1 {
                return Err(CgroupError::invalid(
                    format!("hugepageLimits[{i}].limit"),
                    l.limit(),
                    "use bytes, or -1 for unlimited",
                ));
            }
        }
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()> {
        let mut rsvd = true;
        for (i, l) in res.hugepage_limits().iter().flatten().enumerate() {
            let size = l.page_size();
            let field = format!("hugepageLimits[{i}]");
            let (file, rsvd_file, value) = if ctx.v2 {
                let v = if l.limit() == -1 { "max".to_string() } else { l.limit().to_string() };
                (format!("hugetlb.{size}.max"), format!("hugetlb.{size}.rsvd.max"), v)
            } else {
                (
                    format!("hugetlb.{size}.limit_in_bytes"),
                    format!("hugetlb.{size}.rsvd.limit_in_bytes"),
                    l.limit().to_string(),
                )
            };
            ctx.write(&field, &file, &value).map_err(|e| match e {
                CgroupError::Apply { source, .. } if source.raw_os_error() == Some(libc::ENOENT) => {
                    CgroupError::invalid(
                        format!("{field}.pageSize"),
                        format!("{size:?}"),
                        format!("this kernel offers no such huge page size (available: {})", available_sizes()),
                    )
                }
                other => other,
            })?;
            if rsvd {
                match ctx.write(&field, &rsvd_file, &value) {
                    // Kernels before 5.7 have no reservation limits.
                    Err(CgroupError::Apply { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                        rsvd = false
                    }
                    other => other?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};

    #[test]
    fn both_versions_with_reservations() {
        let d = Dir::new(
            false,
            &[
                ("hugetlb.2MB.limit_in_bytes", ""),
                ("hugetlb.2MB.rsvd.limit_in_bytes", ""),
                ("hugetlb.1GB.limit_in_bytes", ""),
            ],
        );
        let r = res(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":2147483648},{"pageSize":"1GB","limit":-1}]}"#);
        assert_eq!(Hugetlb::requested(&r), Some("hugepageLimits"));
        d.apply::<Hugetlb>(&r).unwrap();
        assert_eq!(d.get("hugetlb.2MB.limit_in_bytes"), "2147483648");
        assert_eq!(d.get("hugetlb.2MB.rsvd.limit_in_bytes"), "2147483648");
        assert_eq!(d.get("hugetlb.1GB.limit_in_bytes"), "-1");
        let d = Dir::new(true, &[("hugetlb.2MB.max", "max"), ("hugetlb.1GB.max", "max")]);
        d.apply::<Hugetlb>(&r).unwrap();
        assert_eq!(d.get("hugetlb.2MB.max"), "2147483648");
        assert_eq!(d.get("hugetlb.1GB.max"), "max");
        // No .rsvd files: tried once, then skipped.
        assert_eq!(d.writes().len(), 3);
    }

    #[test]
    fn wrong_sizes_are_refused_with_the_field() {
        let d = Dir::new(false, &[("hugetlb.2MB.limit_in_bytes", "")]);
        let e =
            d.apply::<Hugetlb>(&res(r#"{"hugepageLimits":[{"pageSize":"3MB","limit":1}]}"#)).unwrap_err().to_string();
        assert!(e.contains("hugepageLimits[0].pageSize: invalid value \"3MB\"") && e.contains("available:"), "{e}");
        let e =
            d.apply::<Hugetlb>(&res(r#"{"hugepageLimits":[{"pageSize":"2M","limit":1}]}"#)).unwrap_err().to_string();
        assert!(e.contains("<number><KB|MB|GB>"), "{e}");
        assert!(!valid_size("MB") && valid_size("64KB") && !valid_size("2 MB"));
    }
}
