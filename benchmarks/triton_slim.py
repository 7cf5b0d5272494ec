"""Triton 3.7.1 for the GPU machine in two transfers instead of five.

fla's gated chunk kernels need Triton >= 3.7.1 for their backward pass on Hopper (../shared/gpu/README.md). Its wheel
is 188 MiB, five device calls at the 64 MiB a call may carry. Most of it is debug information (libtriton.so is 440 MiB
unstripped, 172 MiB stripped) and parts a Hopper run never loads (the Blackwell ptxas, CUPTI's static libraries, an
instrumentation test library). This script packs the same Triton without them, stripped and xz-compressed, in parts
that go with ordinary calls:

    python benchmarks/triton_slim.py pack [--size 38M] # here: .gpu/parts/part0? (../shared/gpu/prepare.sh) ->
                                                     #   .gpu/slim/triton-slim.tar.xz, split into parts of SIZE
                                                     #   (triton-slim-part??) + manifest (sha256 of each); again
                                                     #   with another SIZE: split again (--rebuild: packed anew)
    python benchmarks/triton_slim.py stage N[,M..]   # parts N, M, ... (with the manifest) into .gpu/send/slim/
    python benchmarks/triton_slim.py stage done      # empty .gpu/send/slim/
    python benchmarks/triton_slim.py install         # on the GPU machine (`gpu_run.sh prepare` calls it): keep the
                                                     #   part sent; with all of them, check, unpack, build a wheel
                                                     #   and pip-install it

`pack` checks the original wheel's sha256 (.gpu/parts/sha) first; `install` checks every part against the manifest.
Only what is named in DROP is left out; every kept file is byte-identical to the wheel's except the stripped shared
libraries (`strip --strip-unneeded`: the dynamic symbols Python and the loader use stay).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ROOT / ".gpu" / "parts"
SLIM = ROOT / ".gpu" / "slim"
SEND = ROOT / ".gpu" / "send" / "slim"
KEEP = Path(os.environ.get("TRITON_SLIM_KEEP", "/root/tslim"))
WHEEL_NAME = "triton-3.7.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
DROP = (
    "triton/backends/nvidia/bin/ptxas-blackwell",
    "triton/backends/nvidia/bin/nvdisasm",
    "triton/backends/nvidia/bin/cuobjdump",
    "triton/backends/nvidia/lib/cupti/",
    "triton/instrumentation/libGPUInstrumentationTestLib.so",
)
STRIP = (".so",)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dropped(name: str) -> bool:
    return any(name == d or (d.endswith("/") and name.startswith(d)) for d in DROP)


def pack(size: int, rebuild: bool) -> None:
    archive = SLIM / "triton-slim.tar.xz"
    parts = sorted(PARTS.glob("part0?"))
    if not parts or not (PARTS / "sha").is_file():
        sys.exit(f"pack: no Triton parts in {PARTS} (run ../shared/gpu/prepare.sh first)")
    want = (PARTS / "sha").read_text().split()[0]
    SLIM.mkdir(parents=True, exist_ok=True)
    if rebuild or not archive.is_file():
        build_archive(parts, want, archive)
    else:
        print(f"pack: {archive} exists, split again (--rebuild builds it anew)")
    data = archive.read_bytes()
    for old in SLIM.glob("triton-slim-part??"):
        old.unlink()
    lines = [f"wheel_sha256 {want}", f"archive_sha256 {hashlib.sha256(data).hexdigest()}"]
    for i in range(0, len(data), size):
        part = SLIM / f"triton-slim-part{i // size:02d}"
        part.write_bytes(data[i:i + size])
        lines.append(f"{sha256(part)}  {part.name}")
    (SLIM / "manifest").write_text("\n".join(lines) + "\n")
    print(f"{archive.name}: {len(data) / 2**20:.1f} MiB in {len(lines) - 2} parts of <= {size / 2**20:.0f} MiB")


def build_archive(parts: list[Path], want: str, archive: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(tmp) / WHEEL_NAME
        with wheel.open("wb") as out:
            for p in parts:
                out.write(p.read_bytes())
        if sha256(wheel) != want:
            sys.exit(f"pack: the joined wheel's sha256 is not {want} ({PARTS}/sha)")
        tree = Path(tmp) / "tree"
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if not dropped(m) and not m.endswith("/RECORD")]
            z.extractall(tree, members)
            for info in z.infolist():  # zipfile drops the modes: ptxas and the libraries are executables
                mode = (info.external_attr >> 16) & 0o777
                if info.filename in members and mode and not info.is_dir():
                    (tree / info.filename).chmod(mode)
        for name in members:
            path = tree / name
            if (path.suffix in STRIP or ".so." in path.name) and path.is_file():
                subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)
        tar = Path(tmp) / "triton-slim.tar"
        with tarfile.open(tar, "w") as t:
            for name in sorted(members):
                t.add(tree / name, arcname=name, recursive=False)
        subprocess.run(["xz", "-9e", "-T0", "-f", str(tar)], check=True)
        shutil.move(tar.with_suffix(".tar.xz"), archive)
    print(f"pack: {len(members)} files of the wheel, stripped, in {archive}")


def stage(what: str) -> None:
    shutil.rmtree(SEND, ignore_errors=True)
    if what == "done":
        return
    n = len(list(SLIM.glob("triton-slim-part??")))
    parts = [SLIM / f"triton-slim-part{int(i):02d}" for i in what.split(",")]
    for part in parts:
        if not part.is_file():
            sys.exit(f"stage: no part {int(part.name[-2:])} " + (f"(parts 0..{n - 1})" if n else "(run `pack` first)"))
    SEND.mkdir(parents=True)
    for part in parts:
        shutil.copy(part, SEND)
    shutil.copy(SLIM / "manifest", SEND)
    mib = sum(p.stat().st_size for p in parts) / 2**20
    print(f"staged {', '.join(p.name for p in parts)} of {n} in {SEND} ({mib:.1f} MiB)")


def have_triton() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return tuple(int(x) for x in triton.__version__.split(".")[:3]) >= (3, 7, 1)


def build_wheel(tree: Path, wheel: Path) -> None:
    """A wheel of `tree` with a RECORD that matches its files (pip checks nothing else of it)."""
    files = sorted(p for p in tree.rglob("*") if p.is_file() or p.is_symlink())
    info = next(tree.glob("*.dist-info"))
    record_name = f"{info.name}/RECORD"
    rows = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
        for p in files:
            name = p.relative_to(tree).as_posix()
            data = p.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{name},sha256={digest},{len(data)}")
            zi = zipfile.ZipInfo(name)
            zi.external_attr = (p.stat().st_mode & 0xFFFF) << 16
            z.writestr(zi, data)
        rows.append(f"{record_name},,")
        z.writestr(record_name, "\n".join(rows) + "\n")


def install() -> None:
    if have_triton():
        print("triton >= 3.7.1 already installed")
        return
    KEEP.mkdir(parents=True, exist_ok=True)
    for p in SEND.glob("triton-slim-part??"):
        shutil.copy(p, KEEP)
    if (SEND / "manifest").is_file():
        shutil.copy(SEND / "manifest", KEEP)
    if not (KEEP / "manifest").is_file():
        print("triton slim: no parts sent (stage them with `triton_slim.py stage N`)")
        return
    lines = (KEEP / "manifest").read_text().splitlines()
    want = {name: digest for digest, name in (line.split() for line in lines[2:])}
    have = sorted(p.name for p in KEEP.glob("triton-slim-part??"))
    missing = sorted(set(want) - set(have))
    if missing:
        print(f"triton slim parts on this machine: {len(want) - len(missing)} of {len(want)} "
              f"(missing {', '.join(missing)}; stage the next one and run this again)")
        return
    for name, digest in want.items():
        if sha256(KEEP / name) != digest:
            sys.exit(f"triton slim: {name} does not match the manifest")
    data = b"".join((KEEP / name).read_bytes() for name in sorted(want))
    archive = lines[1].split()[1]
    if hashlib.sha256(data).hexdigest() != archive:
        sys.exit("triton slim: the joined archive does not match the manifest")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data))) as t:
            t.extractall(tree, filter="tar")
        wheel = Path(tmp) / WHEEL_NAME
        build_wheel(tree, wheel)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True)
    shutil.rmtree(KEEP)
    subprocess.run([sys.executable, "-c", "import triton; print('triton slim installed:', triton.__version__)"],
                   check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--size", default="38M", help="part size, e.g. 38M (default)")
    p.add_argument("--rebuild", action="store_true", help="build the archive again from .gpu/parts")
    s = sub.add_parser("stage")
    s.add_argument("what", help="part numbers (0 or 1,2 ...) or 'done'")
    sub.add_parser("install")
    args = ap.parse_args()
    if args.cmd == "pack":
        size = args.size.upper()
        mult = {"K": 2**10, "M": 2**20}.get(size[-1:], 1)
        try:
            n = int(size.rstrip("KM")) * mult
        except ValueError:
            sys.exit(f"--size: '{args.size}' is not a size (allowed: a number of bytes, or with K or M, e.g. 38M)")
        pack(n, args.rebuild)
    elif args.cmd == "stage":
        if args.what != "done" and not all(x.isdigit() for x in args.what.split(",")):
            sys.exit(f"stage: '{args.what}' is not a part number (allowed: 0, 1, ..., a list like 1,2, or 'done')")
        stage(args.what)
    else:
        install()


if __name__ == "__main__":
    main()
