//! A test-only interpreter for the instructions the device filter uses, so
//! unit tests can check the program's verdicts (and FakeSys can evaluate
//! attached filters) without loading anything into a kernel.

use super::insn::{op, Insn};
use super::program::{
    BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE, BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR,
};
use crate::linux::cgroups::device_rules::{Access, DeviceKind};

/// Runs `prog` on a `bpf_cgroup_dev_ctx` and returns r0 at exit.
pub fn run(prog: &[Insn], ctx: [u32; 3]) -> Result<u64, String> {
    let mut r = [0u64; 11];
    r[1] = 0x1000; // a fake context pointer
    let mut pc = 0usize;
    for _ in 0..100_000 {
        let i = prog.get(pc).ok_or_else(|| format!("pc {pc} out of program"))?;
        let (d, s) = (i.dst() as usize, i.src() as usize);
        let imm = i.imm as i64 as u64;
        pc += 1;
        match i.code {
            c if c == op::LDX | op::MEM | op::W => {
                let addr = r[s].wrapping_add(i.off as i64 as u64);
                let idx = addr.checked_sub(0x1000).filter(|o| o % 4 == 0 && *o < 12).ok_or("bad ctx load")?;
                r[d] = ctx[(idx / 4) as usize] as u64;
            }
            c if c == op::ALU | op::AND | op::K => r[d] = (r[d] as u32 & i.imm as u32) as u64,
            c if c == op::ALU | op::RSH | op::K => r[d] = ((r[d] as u32) >> i.imm) as u64,
            c if c == op::ALU64 | op::MOV | op::K => r[d] = imm,
            c if c == op::JMP | op::JA => pc = (pc as i64 + i.off as i64) as usize,
            c if c == op::JMP | op::JEQ | op::K => {
                if r[d] == imm {
                    pc = (pc as i64 + i.off as i64) as usize
                }
            }
            c if c == op::JMP | op::JNE | op::K => {
                if r[d] != imm {
                    pc = (pc as i64 + i.off as i64) as usize
                }
            }
            c if c == op::JMP | op::JSET | op::K => {
                if r[d] & imm != 0 {
                    pc = (pc as i64 + i.off as i64) as usize
                }
            }
            c if c == op::JMP | op::EXIT => return Ok(r[0]),
            c => return Err(format!("unsupported opcode {c:#x} at {}", pc - 1)),
        }
    }
    Err("program did not terminate".into())
}

/// Whether the device filter allows the access (the kernel's reading of r0).
pub fn run_device_filter(
    prog: &[Insn],
    kind: DeviceKind,
    major: u32,
    minor: u32,
    access: Access,
) -> Result<bool, String> {
    let t = match kind {
        DeviceKind::Block => BPF_DEVCG_DEV_BLOCK,
        _ => BPF_DEVCG_DEV_CHAR,
    } as u32;
    let mut a = 0u32;
    if access.contains(Access::READ) {
        a |= BPF_DEVCG_ACC_READ as u32;
    }
    if access.contains(Access::WRITE) {
        a |= BPF_DEVCG_ACC_WRITE as u32;
    }
    if access.contains(Access::MKNOD) {
        a |= BPF_DEVCG_ACC_MKNOD as u32;
    }
    Ok(run(prog, [t | (a << 16), major, minor])? != 0)
}
