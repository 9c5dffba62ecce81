#!/usr/bin/env python3
"""Zeroes the GPU code for every architecture but one in a shared library's
CUDA fat binary (the `.nv_fatbin` section), keeping every header as it was.

ONNX Runtime's CUDA provider (284 MB) carries machine code for seven GPU
generations; the GPU test bundle (scripts/gpu-bundle.sh --sm N) keeps only
the one its target GPU loads, so the bundle compresses to a size a GPU
machine without network access can be sent. The driver picks the entry
whose architecture matches the device; the zeroed ones are never read.

usage: prune_fatbin.py IN OUT SM      (SM: e.g. 90 for H100/H200)
"""
import struct
import sys

FATBIN_MAGIC = 0xBA55ED50


def section(data, name):
    """(offset, size) of a section of a 64-bit little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit LE ELF"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def header(i):
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
    strtab_off = header(shstrndx)[4]
    for i in range(shnum):
        sh_name, _, _, _, off, size = header(i)
        end = data.index(b"\0", strtab_off + sh_name)
        if data[strtab_off + sh_name:end].decode() == name:
            return off, size
    raise SystemExit(f"no {name} section")


def main():
    src, dst, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = bytearray(open(src, "rb").read())
    off, size = section(data, ".nv_fatbin")
    pos, end_sec = off, off + size
    kept = zeroed = 0
    while pos + 16 <= end_sec:
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # containers are 8-byte aligned
            continue
        start, end = pos + hsize, pos + hsize + fsize
        entries = []
        e = start
        while e < end:
            _kind, _v, ehsize, psize = struct.unpack_from("<HHIQ", data, e)
            arch, = struct.unpack_from("<I", data, e + 28)
            entries.append((e + ehsize, psize, arch))
            e += ehsize + psize
        # A container with no code for this GPU is left whole (its PTX, if
        # any, is what the driver would compile for it).
        if any(arch == keep for _, _, arch in entries):
            for body, psize, arch in entries:
                if arch == keep:
                    kept += psize
                else:
                    data[body:body + psize] = bytes(psize)
                    zeroed += psize
        pos = end
    if kept == 0:
        raise SystemExit(f"no sm_{keep} code in {src}: refusing to write a library with none")
    open(dst, "wb").write(data)
    print(f"{src}: kept {kept >> 20} MiB for sm_{keep}, zeroed {zeroed >> 20} MiB")


if __name__ == "__main__":
    main()
