"""Every TRITON* function declared in src/triton/ffi.rs is exported by the pip server's libtritonserver, and
the built backend exports exactly the TRITONBACKEND_* entry points and needs no libtritonserver."""

import re
import subprocess
from pathlib import Path

import pytriton
from conftest import ROOT


def exported(lib):
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def server_lib():
    libs = sorted((Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs").glob("libtritonserver*.so*"))
    assert libs, "libtritonserver not found in the nvidia-pytriton wheel"
    return libs[0]


def test_every_declared_symbol_is_exported_by_the_server():
    declared = set(re.findall(r"pub fn (TRITON\w+)\(", (ROOT / "src/triton/ffi.rs").read_text()))
    assert len(declared) > 40
    missing = declared - exported(server_lib())
    assert not missing, f"declared in ffi.rs but not exported by {server_lib().name}: {sorted(missing)}"


def test_backend_exports_and_links():
    lib = ROOT / "target/release/libtriton_llama.so"
    ours = {s for s in exported(lib) if s.startswith("TRITON")}
    assert ours == {
        "TRITONBACKEND_Initialize",
        "TRITONBACKEND_ModelInitialize",
        "TRITONBACKEND_ModelFinalize",
        "TRITONBACKEND_ModelInstanceInitialize",
        "TRITONBACKEND_ModelInstanceFinalize",
        "TRITONBACKEND_ModelInstanceExecute",
    }
    needed = subprocess.run(["readelf", "-d", str(lib)], check=True, capture_output=True, text=True).stdout
    assert "tritonserver" not in needed
