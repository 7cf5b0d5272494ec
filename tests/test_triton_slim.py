"""benchmarks/triton_slim.py on a small stand-in wheel: pack (sha check, dropped files, modes kept), stage, and the
install the GPU machine runs (parts collected over calls, checked, a wheel pip accepts), without a GPU or Triton."""

import hashlib
import random
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import load_script

FILES = {
    "triton/__init__.py": (b"__version__ = '3.7.1'\n", 0o644),
    "triton/backends/nvidia/bin/ptxas": (b"#!/bin/sh\n" + random.Random(0).randbytes(20000), 0o755),
    "triton/backends/nvidia/bin/ptxas-blackwell": (b"dropped", 0o755),
    "triton/backends/nvidia/lib/cupti/libcupti.a": (b"dropped", 0o644),
    "triton/language/core.py": (b"x = 1\n" * 2000, 0o644),
    "triton-3.7.1.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: triton\nVersion: 3.7.1\n", 0o644),
    "triton-3.7.1.dist-info/WHEEL": (b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\n"
                                     b"Tag: cp312-cp312-manylinux_2_28_x86_64\n", 0o644),
    "triton-3.7.1.dist-info/RECORD": (b"", 0o644),
}


@pytest.fixture
def slim(tmp_path, monkeypatch):
    ts = load_script("benchmarks/triton_slim.py")
    for name, sub in (("PARTS", "parts"), ("SLIM", "slim"), ("SEND", "send/slim"), ("KEEP", "keep")):
        monkeypatch.setattr(ts, name, tmp_path / sub)
    wheel = tmp_path / ts.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as z:
        for name, (data, mode) in FILES.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            z.writestr(info, data)
    data = wheel.read_bytes()
    (tmp_path / "parts").mkdir()
    for i in range(0, len(data), 4096):
        (tmp_path / "parts" / f"part0{i // 4096}").write_bytes(data[i:i + 4096])
    (tmp_path / "parts" / "sha").write_text(hashlib.sha256(data).hexdigest() + "\n")
    return ts


def test_pack_stage_install(slim, tmp_path, monkeypatch, capsys):
    slim.pack(3000, rebuild=False)
    parts = sorted(p.name for p in (tmp_path / "slim").glob("triton-slim-part??"))
    assert len(parts) >= 2, parts
    target = tmp_path / "site"
    run = subprocess.run

    def pip_into_target(cmd, check=True, **kw):  # the machine's pip install, into a folder for a CPython 3.12 wheel
        if cmd[1:4] == ["-m", "pip", "install"]:
            cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--no-index", "--target", str(target),
                   "--python-version", "3.12", "--only-binary=:all:", cmd[-1]]
        elif cmd[1] == "-c":  # the version print imports the installed Triton, which this machine does not have
            return None
        return run(cmd, check=check, **kw)

    monkeypatch.setattr(slim.subprocess, "run", pip_into_target)
    monkeypatch.setattr(slim, "have_triton", lambda: False)
    # the first call brings part 0 only: kept, nothing installed
    slim.stage("0")
    slim.install()
    assert "1 of" in capsys.readouterr().out and not target.exists()
    # the next call brings the rest
    slim.stage(",".join(str(i) for i in range(1, len(parts))))
    slim.install()
    for name, (data, mode) in FILES.items():
        path = target / name
        if "dropped" in data.decode(errors="ignore") or name.endswith("RECORD"):
            assert not path.exists() or name.endswith("RECORD"), name
            continue
        assert path.read_bytes() == data, name
        assert path.stat().st_mode & 0o777 == mode, (name, oct(path.stat().st_mode))
    assert not (tmp_path / "keep").exists()


def test_refusals(slim, tmp_path, capsys):
    (tmp_path / "parts" / "sha").write_text("0" * 64 + "\n")
    with pytest.raises(SystemExit, match="sha256 is not"):
        slim.pack(3000, rebuild=True)
    assert not list((tmp_path / "slim").glob("triton-slim-part??"))
    with pytest.raises(SystemExit, match="no part 7"):
        slim.stage("7")


def test_corrupt_part_is_refused(slim, tmp_path, monkeypatch):
    slim.pack(3000, rebuild=False)
    monkeypatch.setattr(slim, "have_triton", lambda: False)
    slim.stage(",".join(p.name[-2:].lstrip("0") or "0" for p in sorted((tmp_path / "slim").glob("triton-slim-part??"))))
    sent = sorted((tmp_path / "send" / "slim").glob("triton-slim-part??"))[0]
    sent.write_bytes(b"x" + sent.read_bytes()[1:])
    with pytest.raises(SystemExit, match="does not match the manifest"):
        slim.install()
