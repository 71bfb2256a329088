#!/usr/bin/env python3
"""Shared-library closure of ELF files, resolved inside extracted Debian packages.

The host may have neither readelf nor the guest's libraries installed, so this reads
DT_NEEDED and PT_INTERP itself and looks sonames up in a pool of package trees
(one directory per package, as `dpkg -x` left it).

    elfdeps.py POOL WANT...

WANT is a path inside some package tree (`usr/sbin/conntrack`), a path on the host
(`/abs/path`, checked against the pool but not copied), or `soname:NAME`. A path that no
tree has is looked up under usr/ too (`bin/ip` is `usr/bin/ip` in a merged-/usr release
such as trixie; the guest then has the bin -> usr/bin links), as are symlink targets and
the dynamic loader.

Prints, one per line:
    copy PKG PATH          a file or symlink of package PKG the guest needs at PATH
    missing SONAME PKG     PKG (or `-` for a host file) needs SONAME, found in no tree
    missing SONAME(VER) -  a host file needs symbol version VER (GLIBC_2.34, say) that the
                           guest's SONAME does not define: built against a newer release
"""
import os
import struct
import sys

LIB_DIRS = (
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "lib",
    "usr/lib",
)
PT_INTERP = 3
SHT_DYNAMIC = 6
SHT_GNU_VERDEF = 0x6FFFFFFD
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NEEDED = 1


def elf_deps(path):
    """(interpreter or None, [NEEDED sonames]) of an ELF64 little-endian file, or None
    when the file is not one (scripts, data)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    interp = None
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == PT_INTERP:
            interp = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    needed = []
    for sh in sections:
        if sh[1] != SHT_DYNAMIC:
            continue
        strtab_off = sections[sh[6]][4]
        off, end = sh[4], sh[4] + sh[5]
        while off + 16 <= end:
            tag, val = struct.unpack_from("<qQ", data, off)
            off += 16
            if tag == 0:
                break
            if tag == DT_NEEDED:
                s = strtab_off + val
                needed.append(data[s : data.index(b"\0", s)].decode())
    return interp, needed


def _sections(data):
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    return [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]


def _cstr(data, off):
    return data[off : data.index(b"\0", off)].decode()


def _version_entries(path, sh_type, fmt):
    """(data, strtab, offset, fields) of every entry of the version section `sh_type`
    (.gnu.version_r or .gnu.version_d): a chain of records `fmt`, each ending in its
    offset to the next."""
    with open(path, "rb") as f:
        data = f.read()
    sections = _sections(data)
    for sh in sections:
        if sh[1] != sh_type:
            continue
        strtab = sections[sh[6]][4]
        off = sh[4]
        while True:
            fields = struct.unpack_from(fmt, data, off)
            yield data, strtab, off, fields
            if not fields[-1]:
                break
            off += fields[-1]


def version_needs(path):
    """{soname: {version names}} from .gnu.version_r (what a dynamic binary requires)."""
    needs = {}
    for data, strtab, off, (_, cnt, file_, aux, _) in _version_entries(
        path, SHT_GNU_VERNEED, "<HHIII"
    ):
        names = needs.setdefault(_cstr(data, strtab + file_), set())
        a = off + aux
        for _ in range(cnt):
            _, _, _, name, anext = struct.unpack_from("<IHHII", data, a)
            names.add(_cstr(data, strtab + name))
            a += anext
    return needs


def version_defs(path):
    """The version names a shared library defines (.gnu.version_d)."""
    defs = set()
    for data, strtab, off, (_, _, _, cnt, _, aux, _) in _version_entries(
        path, SHT_GNU_VERDEF, "<HHHHIII"
    ):
        if cnt:
            defs.add(_cstr(data, strtab + struct.unpack_from("<I", data, off + aux)[0]))
    return defs


class Pool:
    def __init__(self, root):
        self.root = root
        self.pkgs = sorted(os.listdir(root))

    def find_exact(self, rel):
        """The package whose tree has `rel` (file or symlink), or None."""
        for pkg in self.pkgs:
            if os.path.lexists(os.path.join(self.root, pkg, rel)):
                return pkg
        return None

    def find(self, rel):
        """(package, path) of `rel`, or of usr/`rel` when no tree has `rel` (merged /usr);
        (None, rel) when neither is there."""
        pkg = self.find_exact(rel)
        if pkg or rel.startswith("usr/"):
            return pkg, rel
        pkg = self.find_exact("usr/" + rel)
        return (pkg, "usr/" + rel) if pkg else (None, rel)

    def find_soname(self, soname):
        for d in LIB_DIRS:
            rel = f"{d}/{soname}"
            pkg = self.find_exact(rel)
            if pkg:
                return pkg, rel
        return None, None


def main():
    pool = Pool(sys.argv[1])
    copies = {}  # rel -> pkg
    missing = set()
    todo = []

    def add(pkg, rel):
        """Record `rel` and, through symlinks, what it points to; queue the real file."""
        for _ in range(40):
            if rel in copies:
                return
            copies[rel] = pkg
            full = os.path.join(pool.root, pkg, rel)
            if not os.path.islink(full):
                todo.append((pkg, rel))
                return
            target = os.readlink(full)
            if target.startswith("/"):
                rel = os.path.normpath(target.lstrip("/"))
            else:
                rel = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            found, frel = pool.find(rel)
            if found:
                pkg, rel = found, frel
        sys.exit(f"symlink loop at {rel}")

    for want in sys.argv[2:]:
        if want.startswith("soname:"):
            pkg, rel = pool.find_soname(want[len("soname:") :])
            if pkg:
                add(pkg, rel)
            else:
                missing.add((want[len("soname:") :], "-"))
        elif want.startswith("/"):
            todo.append(("-", want))
        else:
            pkg, rel = pool.find(want)
            if not pkg:
                sys.exit(f"{want}: in no package of {pool.root}")
            add(pkg, rel)

    while todo:
        pkg, rel = todo.pop()
        path = rel if pkg == "-" else os.path.join(pool.root, pkg, rel)
        deps = elf_deps(path)
        if deps is None:
            continue
        interp, needed = deps
        if interp:
            ipkg, irel = pool.find(interp.lstrip("/"))
            if ipkg:
                add(ipkg, irel)
            else:
                missing.add((os.path.basename(interp), pkg))
        # A host binary built against a newer glibc finds libc.so.6 in the guest and still
        # fails to start there; say so here.
        vneeds = version_needs(path) if pkg == "-" and needed else {}
        for soname in needed:
            npkg, nrel = pool.find_soname(soname)
            if npkg:
                add(npkg, nrel)
                if vneeds.get(soname):
                    lib = os.path.realpath(os.path.join(pool.root, npkg, nrel))
                    for v in sorted(vneeds[soname] - version_defs(lib)):
                        missing.add((f"{soname}({v})", pkg))
            else:
                missing.add((soname, pkg))

    for rel, pkg in sorted(copies.items()):
        print(f"copy {pkg} {rel}")
    for soname, pkg in sorted(missing):
        print(f"missing {soname} {pkg}")


if __name__ == "__main__":
    main()
