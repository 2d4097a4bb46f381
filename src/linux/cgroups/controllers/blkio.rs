//! blkio (v1) / io (v2): weight, leafWeight, weightDevice and the four
//! throttle lists of `linux.resources.blockIO`.
//!
//! v1 writes blkio.weight and blkio.weight_device (or their blkio.bfq.*
//! twins where only BFQ offers them), blkio.leaf_weight[_device] and
//! blkio.throttle.*_device, one write per device. v2 writes io.bfq.weight
//! (same 10..1000 scale) when BFQ is active, else io.weight converted as runc
//! does (1 + (w - 10) * 9999 / 990); throttles go to io.max as
//! `MAJ:MIN rbps=N` (0 lifts the limit, as it does on v1). v2 has no leaf
//! weights, so asking for one is an error there.

use oci_spec::runtime::{LinuxBlockIo, LinuxResources, LinuxThrottleDevice};

use super::{check_range, Controller, Ctx};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;

pub struct Blkio;

/// runc's blkio weight (10..1000) -> io.weight (1..10000) conversion.
pub fn weight_to_io_weight(w: u16) -> u64 {
    if w == 0 {
        return 0;
    }
    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
}

fn throttles(b: &LinuxBlockIo) -> [(&'static str, &'static str, &'static str, &Option<Vec<LinuxThrottleDevice>>); 4] {
    [
        ("blockIO.throttleReadBpsDevice", "blkio.throttle.read_bps_device", "rbps", b.throttle_read_bps_device()),
        ("blockIO.throttleWriteBpsDevice", "blkio.throttle.write_bps_device", "wbps", b.throttle_write_bps_device()),
        ("blockIO.throttleReadIOPSDevice", "blkio.throttle.read_iops_device", "riops", b.throttle_read_iops_device()),
        (
            "blockIO.throttleWriteIOPSDevice",
            "blkio.throttle.write_iops_device",
            "wiops",
            b.throttle_write_iops_device(),
        ),
    ]
}

fn nonempty<T>(v: &Option<Vec<T>>) -> &[T] {
    v.as_deref().unwrap_or_default()
}

/// A weight, with 0 meaning "not set" as in runc: docker 20.10 sends
/// `weight: 0` on hosts without blkio weights.
fn set(w: Option<u16>) -> Option<u16> {
    w.filter(|w| *w != 0)
}

impl Controller for Blkio {
    const SUBSYSTEM: Subsystem = Subsystem::Blkio;

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        let b = res.block_io().as_ref()?;
        if set(b.weight()).is_some() {
            return Some("blockIO.weight");
        }
        if set(b.leaf_weight()).is_some() {
            return Some("blockIO.leafWeight");
        }
        if !nonempty(b.weight_device()).is_empty() {
            return Some("blockIO.weightDevice");
        }
        throttles(b).into_iter().find(|t| !nonempty(t.3).is_empty()).map(|t| t.0)
    }

    fn validate(res: &LinuxResources, v2: bool) -> Result<()> {
        let Some(b) = res.block_io() else { return Ok(()) };
        if let Some(w) = set(b.weight()) {
            check_range("blockIO.weight", w, 10, 1000)?;
        }
        if let Some(w) = set(b.leaf_weight()) {
            check_range("blockIO.leafWeight", w, 10, 1000)?;
            if v2 {
                return Err(CgroupError::unsupported(
                    "blockIO.leafWeight",
                    "cgroup v2 has no leaf weights; remove the field",
                ));
            }
        }
        for d in nonempty(b.weight_device()) {
            if d.major() < 0 || d.minor() < 0 {
                return Err(CgroupError::invalid(
                    "blockIO.weightDevice",
                    format!("{}:{}", d.major(), d.minor()),
                    "not a device number",
                ));
            }
            if let Some(w) = set(d.weight()) {
                check_range("blockIO.weightDevice.weight", w, 10, 1000)?;
            }
            if let Some(w) = set(d.leaf_weight()) {
                check_range("blockIO.weightDevice.leafWeight", w, 10, 1000)?;
                if v2 {
                    return Err(CgroupError::unsupported(
                        "blockIO.weightDevice.leafWeight",
                        "cgroup v2 has no leaf weights; remove the field",
                    ));
                }
            }
        }
        for (field, _, _, list) in throttles(b) {
            if let Some(d) = nonempty(list).iter().find(|d| d.major() < 0 || d.minor() < 0) {
                return Err(CgroupError::invalid(field, format!("{}:{}", d.major(), d.minor()), "not a device number"));
            }
        }
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()> {
        let Some(b) = res.block_io() else { return Ok(()) };
        if ctx.v2 {
            apply_v2(ctx, b)
        } else {
            apply_v1(ctx, b)
        }
    }
}

fn no_leaf_weights(err: CgroupError) -> CgroupError {
    match err {
        CgroupError::Apply { field, path, value, source, .. } if source.raw_os_error() == Some(libc::ENOENT) => {
            CgroupError::Apply {
                field,
                path,
                value,
                hint: "; leaf weights existed only with the CFQ I/O scheduler, which Linux 5.0 removed: drop the field"
                    .into(),
                source,
            }
        }
        other => other,
    }
}

fn no_weight_knob(field: &str, err: CgroupError) -> CgroupError {
    match err {
        CgroupError::Apply { path, value, source, .. } if source.raw_os_error() == Some(libc::EOPNOTSUPP) => CgroupError::Apply {
            field: field.to_string(),
            path,
            value,
            hint: "; the device does not use the BFQ I/O scheduler (see /sys/block/<dev>/queue/scheduler)".into(),
            source,
        },
        CgroupError::Apply { path, value, source, .. } if source.raw_os_error() == Some(libc::ENOENT) => CgroupError::Apply {
            field: field.to_string(),
            path,
            value,
            hint: "; block I/O weights need the CFQ or BFQ I/O scheduler, which this host does not use (throttling works without it)"
                .into(),
            source,
        },
        other => other,
    }
}

fn apply_v1(ctx: &Ctx<'_>, b: &LinuxBlockIo) -> Result<()> {
    if let Some(w) = set(b.weight()) {
        let v = w.to_string();
        match ctx.write("blockIO.weight", "blkio.weight", &v) {
            Err(CgroupError::Apply { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                ctx.write("blockIO.weight", "blkio.bfq.weight", &v).map_err(|e| no_weight_knob("blockIO.weight", e))?
            }
            other => other?,
        }
    }
    if let Some(w) = set(b.leaf_weight()) {
        ctx.write("blockIO.leafWeight", "blkio.leaf_weight", &w.to_string()).map_err(no_leaf_weights)?;
    }
    let devs = nonempty(b.weight_device());
    let weights: Vec<String> =
        devs.iter().filter_map(|d| set(d.weight()).map(|w| format!("{}:{} {w}", d.major(), d.minor()))).collect();
    match ctx.write_lines("blockIO.weightDevice", "blkio.weight_device", &weights) {
        Err(CgroupError::Apply { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => ctx
            .write_lines("blockIO.weightDevice", "blkio.bfq.weight_device", &weights)
            .map_err(|e| no_weight_knob("blockIO.weightDevice", e))?,
        other => other?,
    }
    let leaves: Vec<String> =
        devs.iter().filter_map(|d| set(d.leaf_weight()).map(|w| format!("{}:{} {w}", d.major(), d.minor()))).collect();
    ctx.write_lines("blockIO.weightDevice", "blkio.leaf_weight_device", &leaves).map_err(no_leaf_weights)?;
    for (field, file, _, list) in throttles(b) {
        let lines: Vec<String> =
            nonempty(list).iter().map(|d| format!("{}:{} {}", d.major(), d.minor(), d.rate())).collect();
        ctx.write_lines(field, file, &lines)?;
    }
    Ok(())
}

fn apply_v2(ctx: &Ctx<'_>, b: &LinuxBlockIo) -> Result<()> {
    let devs = nonempty(b.weight_device());
    let wants_weight = set(b.weight()).is_some() || devs.iter().any(|d| set(d.weight()).is_some());
    let bfq = wants_weight && ctx.has("io.bfq.weight");
    if let Some(w) = set(b.weight()) {
        if bfq {
            ctx.write("blockIO.weight", "io.bfq.weight", &w.to_string())?;
        } else {
            ctx.write("blockIO.weight", "io.weight", &weight_to_io_weight(w).to_string())?;
        }
    }
    let lines: Vec<String> = devs
        .iter()
        .filter_map(|d| {
            let w = set(d.weight())?;
            let w = if bfq { u64::from(w) } else { weight_to_io_weight(w) };
            Some(format!("{}:{} {w}", d.major(), d.minor()))
        })
        .collect();
    ctx.write_lines("blockIO.weightDevice", if bfq { "io.bfq.weight" } else { "io.weight" }, &lines)?;
    for (field, _, key, list) in throttles(b) {
        let lines: Vec<String> = nonempty(list)
            .iter()
            .map(|d| {
                let rate = if d.rate() == 0 { "max".to_string() } else { d.rate().to_string() };
                format!("{}:{} {key}={rate}", d.major(), d.minor())
            })
            .collect();
        ctx.write_lines(field, "io.max", &lines)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};

    const RICH: &str = r#"{"blockIO":{"weight":500,"leafWeight":300,
        "weightDevice":[{"major":8,"minor":0,"weight":500,"leafWeight":300},{"major":8,"minor":16,"weight":200}],
        "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":102400},{"major":8,"minor":16,"rate":0}],
        "throttleWriteBpsDevice":[{"major":8,"minor":0,"rate":204800}],
        "throttleReadIOPSDevice":[{"major":8,"minor":0,"rate":100}],
        "throttleWriteIOPSDevice":[{"major":8,"minor":0,"rate":200}]}}"#;

    fn v1_dir() -> Dir {
        Dir::new(
            false,
            &[
                ("blkio.weight", "500"),
                ("blkio.weight_device", ""),
                ("blkio.leaf_weight", "500"),
                ("blkio.leaf_weight_device", ""),
                ("blkio.throttle.read_bps_device", ""),
                ("blkio.throttle.write_bps_device", ""),
                ("blkio.throttle.read_iops_device", ""),
                ("blkio.throttle.write_iops_device", ""),
            ],
        )
    }

    #[test]
    fn weight_zero_means_unset_as_docker_sends_it() {
        let r = res(r#"{"blockIO":{"weight":0,"leafWeight":0}}"#);
        assert_eq!(Blkio::requested(&r), None);
        for v2 in [false, true] {
            Blkio::validate(&r, v2).unwrap();
        }
        // No blkio.weight file at all (no BFQ): still nothing to write.
        let d = Dir::new(false, &[]);
        d.apply::<Blkio>(&r).unwrap();
        assert!(d.writes().is_empty());
    }

    #[test]
    fn v1_writes_every_list() {
        let d = v1_dir();
        d.apply::<Blkio>(&res(RICH)).unwrap();
        assert_eq!(d.get("blkio.weight"), "500");
        assert_eq!(d.get("blkio.leaf_weight"), "300");
        assert_eq!(d.get("blkio.weight_device"), "8:0 500\n8:16 200");
        assert_eq!(d.get("blkio.leaf_weight_device"), "8:0 300");
        assert_eq!(d.get("blkio.throttle.read_bps_device"), "8:0 102400\n8:16 0");
        assert_eq!(d.get("blkio.throttle.write_bps_device"), "8:0 204800");
        assert_eq!(d.get("blkio.throttle.read_iops_device"), "8:0 100");
        assert_eq!(d.get("blkio.throttle.write_iops_device"), "8:0 200");
        // One write(2) per device entry.
        assert_eq!(d.writes().iter().filter(|(f, _)| f == "blkio.throttle.read_bps_device").count(), 2);
    }

    #[test]
    fn v1_weight_falls_back_to_bfq_and_explains_its_absence() {
        let d = Dir::new(
            false,
            &[("blkio.bfq.weight", "100"), ("blkio.bfq.weight_device", ""), ("blkio.throttle.read_bps_device", "")],
        );
        d.apply::<Blkio>(&res(r#"{"blockIO":{"weight":700,"weightDevice":[{"major":8,"minor":0,"weight":300}]}}"#))
            .unwrap();
        assert_eq!(d.get("blkio.bfq.weight"), "700");
        assert_eq!(d.get("blkio.bfq.weight_device"), "8:0 300");
        d.sys.fail_writes(&d.file("blkio.bfq.weight_device"), &[libc::EOPNOTSUPP]);
        let e =
            d.apply::<Blkio>(&res(r#"{"blockIO":{"weightDevice":[{"major":8,"minor":0,"weight":300}]}}"#)).unwrap_err();
        assert!(e.to_string().contains("does not use the BFQ I/O scheduler"), "{e}");
        // This development host: throttling files only.
        let d = Dir::new(false, &[("blkio.throttle.read_bps_device", "")]);
        let e = d.apply::<Blkio>(&res(r#"{"blockIO":{"weight":700}}"#)).unwrap_err().to_string();
        assert!(e.contains("linux.resources.blockIO.weight") && e.contains("CFQ or BFQ"), "{e}");
        d.apply::<Blkio>(&res(r#"{"blockIO":{"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1}]}}"#)).unwrap();
    }

    #[test]
    fn v2_converts_weights_and_uses_io_max() {
        let d = Dir::new(true, &[("io.weight", "default 100"), ("io.max", "")]);
        let r = res(r#"{"blockIO":{"weight":500,"weightDevice":[{"major":8,"minor":0,"weight":1000}],
            "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":102400},{"major":8,"minor":16,"rate":0}],
            "throttleWriteIOPSDevice":[{"major":8,"minor":0,"rate":5}]}}"#);
        d.apply::<Blkio>(&r).unwrap();
        let w = d.writes();
        assert_eq!(w[0], ("io.weight".into(), "4950".into()));
        assert_eq!(w[1], ("io.weight".into(), "8:0 10000".into()));
        assert!(w.contains(&("io.max".into(), "8:0 rbps=102400".into())));
        assert!(w.contains(&("io.max".into(), "8:16 rbps=max".into())));
        assert!(w.contains(&("io.max".into(), "8:0 wiops=5".into())));
        let d = Dir::new(true, &[("io.bfq.weight", "default 100"), ("io.weight", "default 100")]);
        d.apply::<Blkio>(&res(r#"{"blockIO":{"weight":500}}"#)).unwrap();
        assert_eq!(d.get("io.bfq.weight"), "500");
    }

    #[test]
    fn weight_conversion_matches_runc() {
        assert_eq!(weight_to_io_weight(10), 1);
        assert_eq!(weight_to_io_weight(1000), 10000);
        assert_eq!(weight_to_io_weight(500), 4950);
        assert_eq!(weight_to_io_weight(0), 0);
    }

    #[test]
    fn validation() {
        let d = Dir::new(true, &[]);
        let e = d.apply::<Blkio>(&res(RICH)).unwrap_err().to_string();
        assert!(e.contains("blockIO.leafWeight is not supported"), "{e}");
        let e = d.apply::<Blkio>(&res(r#"{"blockIO":{"weight":5}}"#)).unwrap_err().to_string();
        assert!(e.contains("blockIO.weight: invalid value 5"), "{e}");
        let e = d
            .apply::<Blkio>(&res(r#"{"blockIO":{"throttleReadBpsDevice":[{"major":-8,"minor":0,"rate":1}]}}"#))
            .unwrap_err();
        assert!(e.to_string().contains("throttleReadBpsDevice"), "{e}");
        assert_eq!(
            Blkio::requested(&res(r#"{"blockIO":{"throttleWriteIOPSDevice":[{"major":8,"minor":0,"rate":1}]}}"#)),
            Some("blockIO.throttleWriteIOPSDevice")
        );
        assert_eq!(Blkio::requested(&res(r#"{"blockIO":{}}"#)), None);
    }

    #[test]
    fn zero_weights_are_unset_as_docker_sends_them() {
        let r = res(r#"{"blockIO":{"weight":0,"leafWeight":0}}"#);
        assert_eq!(Blkio::requested(&r), None);
        // Neither out of range nor a leaf weight v2 lacks; nothing written.
        let d = Dir::new(true, &[("io.weight", "default 100")]);
        d.apply::<Blkio>(&r).unwrap();
        assert!(d.writes().is_empty(), "{:?}", d.writes());
        let d = v1_dir();
        d.apply::<Blkio>(&r).unwrap();
        assert!(d.writes().iter().all(|(f, _)| f != "blkio.weight" && f != "blkio.leaf_weight"), "{:?}", d.writes());
    }
}
