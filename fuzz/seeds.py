#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (small, hand-made
inputs that reach each harness's interesting paths; the fuzzer finds the
rest). The harnesses' input formats are in src/fuzzing/. Re-run after
changing a harness's format: python3 fuzz/seeds.py"""
import json, os, struct, shutil

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


shutil.rmtree(root, ignore_errors=True)

# spec_config: config.json texts.
minimal = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
           "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}}}
put("spec_config", "minimal.json", json.dumps(minimal))
vm = dict(minimal, annotations={"run.amphi.isolation": "vm"})
put("spec_config", "vm.json", json.dumps(vm))
full = dict(minimal)
full["process"] = {"terminal": False, "cwd": "/", "args": ["sh", "-c", "true"], "env": ["PATH=/bin"],
                   "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
                   "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
                   "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}], "noNewPrivileges": True}
full["hostname"] = "fuzz"
full["mounts"] = [{"destination": "/proc", "type": "proc", "source": "proc"},
                  {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=65536k"]}]
full["linux"] = {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "user"}],
                 "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                 "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                 "resources": {"memory": {"limit": 104857600}, "cpu": {"shares": 512}, "pids": {"limit": 64},
                               "devices": [{"allow": False, "access": "rwm"}]},
                 "sysctl": {"net.ipv4.ip_forward": "1"}, "maskedPaths": ["/proc/kcore"],
                 "readonlyPaths": ["/proc/sys"], "seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                 "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"}]}}
put("spec_config", "full.json", json.dumps(full))
# The VM isolation's annotations and the resources its size comes from.
vmfull = dict(full, annotations={"run.amphi.isolation": "vm", "run.amphi.vm.memory": "256",
                                 "run.amphi.vm.cpus": "1", "run.amphi.vm.boot_timeout": "30"})
vmfull["linux"] = dict(full["linux"], resources={"memory": {"limit": 268435456},
                                                 "cpu": {"quota": 150000, "period": 100000, "cpus": "0-3,6"}})
vmfull["mounts"] = full["mounts"] + [{"destination": "/data", "type": "bind", "source": "/tmp",
                                      "options": ["rbind", "ro"]}]
put("spec_config", "vm-full.json", json.dumps(vmfull))


# agent_frames: mode, chunk-size count, chunk sizes, then the stream.
def frame(obj):
    p = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return b"am\x01\x00" + struct.pack(">I", len(p)) + p


hs = {"id": 1, "method": "handshake", "params": {"protocol": {"major": 1, "minor": 0}, "host_version": "0.1.0"}}
reqs = frame(hs) + frame({"id": 2, "method": "health"}) + frame(
    {"id": 3, "method": "shutdown", "params": {"action": "power_off"}}) + frame(b"{not json") + frame(
    {"id": 4, "method": "frobnicate"})
put("agent_frames", "guest-requests", bytes([0, 3, 0, 7, 200]) + reqs)
health = {"id": 1, "result": {"method": "health", "uptime_ms": 812, "mem_total_kib": 236000,
                              "mem_available_kib": 210000, "zombies_reaped": 0, "online_cpus": 1}}
err = {"id": 2, "error": {"code": "handshake_required", "message": "send a handshake request first"}}
put("agent_frames", "host-replies", bytes([1, 0]) + frame(health) + frame(err))
put("agent_frames", "payload", bytes([2, 0]) + json.dumps(hs).encode())

# vsock_device: ops (see src/fuzzing/vsock.rs). Host CONNECT 1024, guest RX
# buffers, settle (REQUEST out), guest RESPONSE, host data, settle, guest RW,
# guest REQUEST to port 52, reset.
def tx(src, dst, op, flags=0, data=b"", quirk=0):
    ports_src = [1024, 40000, 40001, 40002, 52, 7]
    ports_dst = [52, 1 << 30, (1 << 30) + 1, 1024, 9, 0]
    return bytes([0, ports_src.index(src), ports_dst.index(dst), op, flags, 2, 0]) + struct.pack(
        "<H", len(data)) + bytes([quirk]) + data


prog = bytes([4, 0, 0])  # host: CONNECT 1024
prog += bytes([2, 3, 0, 0, 1, 2])  # four RX buffers of assorted shapes
prog += bytes([6])  # settle: the REQUEST goes to the guest
prog += tx(1024, 1 << 30, 2)  # RESPONSE
prog += bytes([4, 1, 4, 0x41, 0, 0])  # host writes 1 KiB
prog += bytes([2, 3, 0, 0, 0, 0, 6])
prog += tx(1024, 1 << 30, 5, data=b"hello host")
prog += tx(40000, 52, 1)  # guest connects to port 52
prog += bytes([5, 4])  # host accepts
prog += tx(40000, 52, 5, data=b"to the listener")
prog += tx(1024, 1 << 30, 4, flags=3)  # SHUTDOWN
prog += bytes([6, 7, 6])
put("vsock_device", "session", prog)
put("vsock_device", "rst-flood", b"".join(tx(7, 9, 5, data=b"x") for _ in range(40)) + bytes([6]))
put("vsock_device", "zero-len-rx", bytes([4, 0, 0]) + bytes([2, 7, 2, 2, 3, 3, 2, 2, 2, 6]))


# virtio_fs: first byte (not 0 mod 8: INIT first), then requests:
# opcode, node sel, body len (u16), body, name?, len?, uid sel, queue, shape, reply len (u16).
def req(op, node, body=b"", name=None, shape=0, reply=512, extra=b""):
    out = bytes([op, node]) + struct.pack("<H", len(body)) + body
    if name is not None:
        out += bytes([0, name])
    else:
        out += bytes([1])
    return out + bytes([1, 0, 1, shape]) + struct.pack("<H", reply) + extra


HELLO, SUB, NEW = 0, 1, 2
fs = bytes([1])
fs += req(1, 1, b"", HELLO)  # LOOKUP hello.txt
fs += req(3, 2, b"\0" * 16)  # GETATTR
fs += req(14, 2, struct.pack("<II", 0, 0))  # OPEN
fs += req(15, 2, struct.pack("<QQIIQII", 0, 0, 4096, 0, 0, 0, 0), reply=4200)  # READ
fs += req(35, 1, struct.pack("<IIII", 0o102, 0o100644, 0o22, 0), NEW)  # CREATE new
fs += req(16, 3, struct.pack("<QQIIQII", 0, 0, 5, 0, 0, 0, 0) + b"hello", shape=2,
          extra=struct.pack("<H", 20))  # WRITE, split
fs += req(27, 1, struct.pack("<II", 0, 0))  # OPENDIR
fs += req(28, 1, struct.pack("<QQIIQII", 0, 0, 4096, 0, 0, 0, 0), reply=4200)  # READDIR
fs += req(22, 2, struct.pack("<II", 64, 0), 0, reply=256)  # GETXATTR
fs += req(9, 1, struct.pack("<II", 0o755, 0o22), SUB)  # MKDIR sub (exists)
fs += req(2, 2, struct.pack("<Q", 1))  # FORGET
put("virtio_fs", "session", fs)
put("virtio_fs", "shapes", bytes([1]) + b"".join(req(3, 1, b"\0" * 16, shape=s) for s in range(8)))
put("virtio_fs", "ioctl", bytes([1]) + req(39, 1, struct.pack("<QIIQII", 0, 0, 0, 0, 1 << 26, 0), shape=3,
                                           extra=bytes([7, 0])))


# modinfo: minimal ELF64 files with a .modinfo section (as the unit tests build them).
def module(modinfo):
    shstr = b"\0.modinfo\0.shstrtab\0"
    info = modinfo.replace(";", "\0").encode()
    elf = bytearray(64)
    elf[:4] = b"\x7fELF"
    elf[4], elf[5] = 2, 1
    info_off = len(elf)
    elf += info
    str_off = len(elf)
    elf += shstr
    while len(elf) % 8:
        elf.append(0)
    shoff = len(elf)

    def sh(name, off, size):
        h = bytearray(64)
        h[0:4] = struct.pack("<I", name)
        h[0x18:0x20] = struct.pack("<Q", off)
        h[0x20:0x28] = struct.pack("<Q", size)
        return h

    for h in (sh(0, 0, 0), sh(1, info_off, len(info)), sh(10, str_off, len(shstr))):
        elf += h
    elf[0x28:0x30] = struct.pack("<Q", shoff)
    elf[0x3a:0x3c] = struct.pack("<H", 64)
    elf[0x3c:0x3e] = struct.pack("<H", 3)
    elf[0x3e:0x40] = struct.pack("<H", 2)
    return bytes(elf)


put("modinfo", "vsock.ko", module("license=GPL;depends=vsock,vmw_vsock_virtio_transport_common;name=x"))
put("modinfo", "nodeps.ko", module("license=GPL;depends=;name=virtio"))

# cpio: entries (kind, name length-1, name, perm u16, then data or rdev).
put("cpio", "initramfs", bytes([0, 2]) + b"dev" + b"\xed\x01" + bytes([2, 10]) + b"dev/console" + b"\x80\x01" +
    struct.pack("<II", 5, 1) + bytes([1, 3]) + b"init" + b"\xed\x01" + struct.pack("<H", 7) + b"\x7fELF123")
