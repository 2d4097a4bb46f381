//! A tiny eBPF instruction emitter: just the opcodes the device filter needs
//! (32-bit loads from the context, ALU with immediates, conditional and
//! unconditional forward jumps, exit), with labels resolved when the program
//! is finished.
//!
//! Written by hand instead of pulling in a full eBPF toolchain crate (aya,
//! libbpf): the device filter is a dozen instruction shapes, and this keeps the
//! program bytes fully visible to unit tests.

use std::fmt;

/// One instruction, laid out exactly as the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode: class | size/op | source bits.
    pub code: u8,
    /// Destination register in the low nibble, source register in the high one.
    pub regs: u8,
    /// Jump offset (in instructions, relative to the next one) or memory offset.
    pub off: i16,
    /// Immediate operand.
    pub imm: i32,
}

impl Insn {
    pub fn dst(&self) -> u8 {
        self.regs & 0x0f
    }

    pub fn src(&self) -> u8 {
        self.regs >> 4
    }

    /// The 8 bytes the kernel reads (little-endian, as on every host amphi runs on).
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

/// Opcode bits (include/uapi/linux/bpf_common.h, bpf.h).
pub mod op {
    pub const LDX: u8 = 0x01;
    pub const ALU: u8 = 0x04;
    pub const JMP: u8 = 0x05;
    pub const ALU64: u8 = 0x07;

    pub const W: u8 = 0x00;
    pub const MEM: u8 = 0x60;

    pub const K: u8 = 0x00;
    pub const X: u8 = 0x08;

    pub const AND: u8 = 0x50;
    pub const RSH: u8 = 0x70;
    pub const MOV: u8 = 0xb0;

    pub const JA: u8 = 0x00;
    pub const JEQ: u8 = 0x10;
    pub const JSET: u8 = 0x40;
    pub const JNE: u8 = 0x50;
    pub const EXIT: u8 = 0x90;
}

/// Registers used by the device filter.
pub mod reg {
    pub const R0: u8 = 0;
    pub const R1: u8 = 1;
    pub const R2: u8 = 2;
    pub const R3: u8 = 3;
    pub const R4: u8 = 4;
    pub const R5: u8 = 5;
}

/// A jump target, bound to a position with [`Emitter::bind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

/// Why a program could not be finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitError {
    /// A jump refers to a label that was never bound.
    Unbound,
    /// A jump goes backwards (the kernel's verifier rejects loops) or too far.
    BadJump { from: usize, to: usize },
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::Unbound => write!(f, "jump to an unbound label"),
            EmitError::BadJump { from, to } => write!(f, "jump from {from} to {to} is backwards or too far"),
        }
    }
}

/// Builds a program instruction by instruction.
#[derive(Debug, Default)]
pub struct Emitter {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    /// (instruction index, label) pairs whose offset is patched in `finish`.
    fixups: Vec<(usize, Label)>,
    used: Vec<bool>,
}

impl Emitter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        self.used.push(false);
        Label(self.labels.len() - 1)
    }

    /// Binds `l` to the next instruction emitted.
    pub fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }

    /// Whether some jump refers to `l` (a block nobody jumps to must not be
    /// emitted: the verifier rejects unreachable instructions).
    pub fn is_used(&self, l: Label) -> bool {
        self.used[l.0]
    }

    fn push(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm });
    }

    fn push_jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, target: Label) {
        self.fixups.push((self.insns.len(), target));
        self.used[target.0] = true;
        self.push(code, dst, src, 0, imm);
    }

    /// `dst = *(u32 *)(src + off)`
    pub fn ldx_w(&mut self, dst: u8, src: u8, off: i16) {
        self.push(op::LDX | op::MEM | op::W, dst, src, off, 0);
    }

    /// `dst = (u32)dst & imm`
    pub fn and32_imm(&mut self, dst: u8, imm: i32) {
        self.push(op::ALU | op::AND | op::K, dst, 0, 0, imm);
    }

    /// `dst = (u32)dst >> imm`
    pub fn rsh32_imm(&mut self, dst: u8, imm: i32) {
        self.push(op::ALU | op::RSH | op::K, dst, 0, 0, imm);
    }

    /// `dst = imm` (64-bit, sign-extended)
    pub fn mov64_imm(&mut self, dst: u8, imm: i32) {
        self.push(op::ALU64 | op::MOV | op::K, dst, 0, 0, imm);
    }

    /// `if dst != imm goto target`
    pub fn jne_imm(&mut self, dst: u8, imm: i32, target: Label) {
        self.push_jump(op::JMP | op::JNE | op::K, dst, 0, imm, target);
    }

    /// `if dst == imm goto target`
    pub fn jeq_imm(&mut self, dst: u8, imm: i32, target: Label) {
        self.push_jump(op::JMP | op::JEQ | op::K, dst, 0, imm, target);
    }

    /// `if dst & imm goto target`
    pub fn jset_imm(&mut self, dst: u8, imm: i32, target: Label) {
        self.push_jump(op::JMP | op::JSET | op::K, dst, 0, imm, target);
    }

    /// `goto target`
    pub fn ja(&mut self, target: Label) {
        self.push_jump(op::JMP | op::JA, 0, 0, 0, target);
    }

    /// `return r0`
    pub fn exit(&mut self) {
        self.push(op::JMP | op::EXIT, 0, 0, 0, 0);
    }

    /// Resolves every jump. Only forward jumps are accepted.
    pub fn finish(mut self) -> Result<Vec<Insn>, EmitError> {
        for &(at, l) in &self.fixups {
            let to = self.labels[l.0].ok_or(EmitError::Unbound)?;
            let off = to as i64 - (at as i64 + 1);
            if off < 0 || off > i16::MAX as i64 {
                return Err(EmitError::BadJump { from: at, to });
            }
            self.insns[at].off = off as i16;
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_kernel_struct() {
        let mut e = Emitter::new();
        e.ldx_w(reg::R2, reg::R1, 4);
        e.mov64_imm(reg::R0, -1);
        e.exit();
        let p = e.finish().unwrap();
        assert_eq!(p[0].to_bytes(), [0x61, 0x12, 4, 0, 0, 0, 0, 0]);
        assert_eq!(p[1].to_bytes(), [0xb7, 0x00, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(p[2].to_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn jumps_are_relative_to_the_next_instruction() {
        let mut e = Emitter::new();
        let end = e.label();
        e.jne_imm(reg::R2, 7, end);
        e.mov64_imm(reg::R0, 1);
        e.bind(end);
        e.exit();
        let p = e.finish().unwrap();
        assert_eq!(p[0].off, 1);
        assert_eq!(p[0].imm, 7);
        assert_eq!(p[0].code, 0x55);
    }

    #[test]
    fn backward_and_unbound_jumps_are_refused() {
        let mut e = Emitter::new();
        let top = e.label();
        e.bind(top);
        e.mov64_imm(reg::R0, 0);
        e.ja(top);
        assert_eq!(e.finish(), Err(EmitError::BadJump { from: 1, to: 0 }));

        let mut e = Emitter::new();
        let nowhere = e.label();
        e.ja(nowhere);
        assert_eq!(e.finish(), Err(EmitError::Unbound));
    }
}
