//! Compiles an ordered device rule list into a BPF_PROG_TYPE_CGROUP_DEVICE
//! program with exactly the semantics of [`device_rules::allows`]: for each
//! access type the request carries, the last rule matching the device and
//! including that type decides; no match denies.
//!
//! Layout: load type, access, major and minor from the context, then one
//! block per access type (read, write, mknod). A block is skipped when the
//! request does not carry its type; otherwise it walks the rules that include
//! the type from last to first, and the first that matches jumps either to
//! the next block (allowed) or to the deny exit. A rule matching every device
//! ends its block, so everything before it (the leading deny-all, usually) is
//! never emitted. Jumps only go forward and no instruction is unreachable, as
//! the verifier demands.
//!
//! [`device_rules::allows`]: crate::linux::cgroups::device_rules::allows

use super::insn::{reg, EmitError, Emitter, Insn};
use crate::linux::cgroups::device_rules::{Access, DeviceKind, DeviceRule};

/// `bpf_cgroup_dev_ctx.access_type` low half: device type.
pub const BPF_DEVCG_DEV_BLOCK: i32 = 1;
pub const BPF_DEVCG_DEV_CHAR: i32 = 2;
/// `bpf_cgroup_dev_ctx.access_type` high half: requested access.
pub const BPF_DEVCG_ACC_MKNOD: i32 = 1;
pub const BPF_DEVCG_ACC_READ: i32 = 2;
pub const BPF_DEVCG_ACC_WRITE: i32 = 4;

fn bpf_access(a: Access) -> i32 {
    match a {
        Access::READ => BPF_DEVCG_ACC_READ,
        Access::WRITE => BPF_DEVCG_ACC_WRITE,
        _ => BPF_DEVCG_ACC_MKNOD,
    }
}

/// Builds the program. Fails only on an internal emitter error (a program
/// longer than a 16-bit jump can span).
pub fn device_filter(rules: &[DeviceRule]) -> Result<Vec<Insn>, EmitError> {
    let mut e = Emitter::new();
    // r2 = type, r3 = access, r4 = major, r5 = minor (r1 = ctx).
    e.ldx_w(reg::R2, reg::R1, 0);
    e.and32_imm(reg::R2, 0xffff);
    e.ldx_w(reg::R3, reg::R1, 0);
    e.rsh32_imm(reg::R3, 16);
    e.ldx_w(reg::R4, reg::R1, 4);
    e.ldx_w(reg::R5, reg::R1, 8);

    let deny = e.label();
    let mut next_block = e.label();
    for bit in Access::EACH.iter() {
        let this_block = next_block;
        e.bind(this_block);
        next_block = e.label();
        let check = e.label();
        e.jset_imm(reg::R3, bpf_access(*bit), check);
        e.ja(next_block);
        e.bind(check);
        let mut ended = false;
        for r in rules.iter().rev().filter(|r| r.access.contains(*bit)) {
            let verdict = if r.allow { next_block } else { deny };
            if r.is_all_devices() {
                e.ja(verdict);
                ended = true;
                break;
            }
            let skip = e.label();
            match r.kind {
                DeviceKind::Char => e.jne_imm(reg::R2, BPF_DEVCG_DEV_CHAR, skip),
                DeviceKind::Block => e.jne_imm(reg::R2, BPF_DEVCG_DEV_BLOCK, skip),
                DeviceKind::All => {}
            }
            if let Some(m) = r.major {
                e.jne_imm(reg::R4, m as i32, skip);
            }
            if let Some(m) = r.minor {
                e.jne_imm(reg::R5, m as i32, skip);
            }
            e.ja(verdict);
            e.bind(skip);
        }
        if !ended {
            e.ja(deny);
        }
    }
    // After the mknod block: every requested type was allowed.
    e.bind(next_block);
    e.mov64_imm(reg::R0, 1);
    e.exit();
    if e.is_used(deny) {
        e.bind(deny);
        e.mov64_imm(reg::R0, 0);
        e.exit();
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::bpf::interp::run_device_filter;
    use crate::linux::cgroups::device_rules::{allows, effective_device_rules, DEFAULT_ALLOWED, DENY_ALL};

    fn rule(allow: bool, kind: DeviceKind, major: Option<u32>, minor: Option<u32>, access: &str) -> DeviceRule {
        DeviceRule::new(allow, kind, major, minor, Access::parse(access).unwrap())
    }

    fn check_agrees(rules: &[DeviceRule]) {
        let prog = device_filter(rules).unwrap();
        for kind in [DeviceKind::Char, DeviceKind::Block] {
            for major in [0, 1, 4, 5, 8, 10, 136, 254] {
                for minor in [0, 1, 2, 3, 5, 7, 8, 9, 200] {
                    for a in 1..=7u8 {
                        let access = Access::parse(
                            &Access::EACH
                                .iter()
                                .filter(|b| b.bits() & a != 0)
                                .map(|b| b.to_string())
                                .collect::<String>(),
                        )
                        .unwrap();
                        let want = allows(rules, kind, major, minor, access);
                        let got = run_device_filter(&prog, kind, major, minor, access).unwrap();
                        assert_eq!(got, want, "{kind:?} {major}:{minor} {access} with {rules:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn default_rules_program() {
        let rules = effective_device_rules(None, None).unwrap();
        check_agrees(&rules);
        let prog = device_filter(&rules).unwrap();
        // The leading deny-all is folded into the blocks' fall-through; the
        // program stays small.
        assert!(prog.len() < 160, "{}", prog.len());
        // Prologue bytes: r2 = *(u32 *)(r1 + 0); w2 &= 0xffff.
        assert_eq!(prog[0].to_bytes(), [0x61, 0x12, 0, 0, 0, 0, 0, 0]);
        assert_eq!(prog[1].to_bytes(), [0x54, 0x02, 0, 0, 0xff, 0xff, 0, 0]);
        assert_eq!(prog[3].to_bytes(), [0x74, 0x03, 0, 0, 16, 0, 0, 0]);
        // Ends with the deny exit.
        let n = prog.len();
        assert_eq!(prog[n - 2].to_bytes(), [0xb7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(prog[n - 1].code, 0x95);
    }

    #[test]
    fn spec_order_last_match_wins() {
        let c = DeviceKind::Char;
        check_agrees(&[DENY_ALL, rule(true, c, Some(1), None, "rwm"), rule(false, c, Some(1), Some(3), "w")]);
        check_agrees(&[DENY_ALL, rule(false, c, Some(1), Some(3), "w"), rule(true, c, Some(1), None, "rwm")]);
        check_agrees(&[
            DENY_ALL,
            rule(true, DeviceKind::All, None, None, "rwm"),
            rule(false, DeviceKind::Block, Some(8), None, "rw"),
        ]);
        check_agrees(&[
            DENY_ALL,
            rule(true, DeviceKind::All, Some(1), None, "r"),
            rule(true, c, Some(1), Some(5), "w"),
        ]);
        check_agrees(&[rule(true, DeviceKind::All, None, None, "rwm")]);
        check_agrees(&[]);
    }

    #[test]
    fn random_rule_lists_agree_with_the_reference() {
        // A small LCG keeps this deterministic without a rand dependency.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let majors = [None, Some(1), Some(5), Some(8), Some(136)];
        let minors = [None, Some(0), Some(3), Some(5), Some(9)];
        for _ in 0..200 {
            let len = next(8) as usize;
            let mut rules = vec![DENY_ALL];
            for _ in 0..len {
                let kind = [DeviceKind::All, DeviceKind::Char, DeviceKind::Block][next(3) as usize];
                let access = ["r", "w", "m", "rw", "rwm", "wm"][next(6) as usize];
                rules.push(rule(next(2) == 0, kind, majors[next(5) as usize], minors[next(5) as usize], access));
            }
            if next(2) == 0 {
                rules.extend_from_slice(&DEFAULT_ALLOWED);
            }
            check_agrees(&rules);
        }
    }

    #[test]
    fn only_deny_rules_still_end_with_an_allow_exit() {
        // No rule allows anything: the allow exit is still reachable (a
        // request skips each block it does not carry), the deny one too.
        let prog = device_filter(&[DENY_ALL]).unwrap();
        assert!(prog.iter().filter(|i| i.code == 0x95).count() == 2);
        // Everything allowed: no deny exit is emitted at all.
        let prog = device_filter(&[rule(true, DeviceKind::All, None, None, "rwm")]).unwrap();
        assert_eq!(prog.iter().filter(|i| i.code == 0x95).count(), 1);
    }
}
