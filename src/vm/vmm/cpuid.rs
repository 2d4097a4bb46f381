//! Per-vCPU CPUID: start from KVM_GET_SUPPORTED_CPUID and describe the
//! topology amphi builds (N single-threaded cores in one package), this
//! vCPU's APIC id, and that the CPU runs under a hypervisor.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// Bits of the x2APIC id needed to number `n` cores.
fn core_bits(n: u8) -> u32 {
    (u32::from(n.max(1)) - 1).checked_ilog2().map_or(0, |b| b + 1)
}

/// Rewrites `entries` for vCPU `index` of `count`. `tsc_deadline`: KVM
/// emulates the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER), which the
/// supported list does not advertise by itself.
pub fn adjust(entries: &mut [kvm_cpuid_entry2], index: u8, count: u8, tsc_deadline: bool) {
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors per
                // package, [15:8] CLFLUSH line size in 8-byte units.
                e.ebx = (u32::from(index) << 24) | (u32::from(count) << 16) | (8 << 8);
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1.
                e.eax = (e.eax & 0x03ff_ffff) | (u32::from(count.max(1) - 1) << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = u32::from(index);
                match e.index {
                    // SMT level: one thread per core.
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    // Core level: `count` cores.
                    1 => {
                        e.eax = core_bits(count);
                        e.ebx = u32::from(count);
                        e.ecx = (2 << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[7:0]: cores - 1; [15:12]: APIC id bits.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits(count) << 12) | u32::from(count.max(1) - 1);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, ..Default::default() }
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![leaf(0x1, 0), leaf(0x4, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2), leaf(0x8000_0008, 0), leaf(0x7, 0)]
    }

    #[test]
    fn each_vcpu_sees_its_own_apic_id() {
        for i in 0..4u8 {
            let mut e = sample();
            adjust(&mut e, i, 4, false);
            assert_eq!(e[0].ebx >> 24, u32::from(i));
            assert_eq!((e[0].ebx >> 16) & 0xff, 4);
            assert!(e[2..5].iter().all(|x| x.edx == u32::from(i)));
        }
    }

    #[test]
    fn the_hypervisor_bit_and_tsc_deadline_are_set() {
        let mut e = sample();
        adjust(&mut e, 0, 1, true);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(e[0].edx & EDX_HTT, 0, "one vCPU: no HTT");
        let mut e = sample();
        adjust(&mut e, 0, 2, false);
        assert_eq!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn the_topology_leaves_describe_n_cores() {
        let mut e = sample();
        adjust(&mut e, 1, 3, false);
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx), (0, 1, 0x100));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx), (2, 3, 0x201));
        assert_eq!((e[4].eax, e[4].ebx, e[4].ecx), (0, 0, 2), "no level past the cores");
        assert_eq!(e[1].eax >> 26, 2);
        assert_eq!(e[5].ecx & 0xff, 2);
        assert_eq!(e[6], leaf(0x7, 0), "other leaves are untouched");
    }

    #[test]
    fn core_bits_round_up_to_a_power_of_two() {
        assert_eq!([1u8, 2, 3, 4, 5, 8, 9].map(core_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
