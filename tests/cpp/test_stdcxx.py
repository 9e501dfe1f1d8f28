"""libstdc++ as the shared library in everything carseg builds for Python to load.

Found on the second GPU run (H200 image, torch 2.11): carseg's bindings and AOTInductor's
wrapper.so, both compiled there, carried their own static copy of libstdc++ and crashed at their
first use of a locale once loaded beside torch (which brings the shared libstdc++).
cmake/CarsegSharedStdcxx.cmake names the shared library on the link line wherever the compiler
would link the static one. These tests hold the built module to that, and the CMake module to
what it does under -static-libstdc++, with the crash it prevents shown beside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# std::ostream::_M_insert<long>: in libstdc++.so, and in any object with a static copy of it.
OSTREAM_INSERT_LONG = "_ZNSo9_M_insertIlEERSoT_"


def _needed_and_defined(lib: Path) -> tuple[list[str], str]:
    dyn = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True)
    needed = [ln.split("[", 1)[1].rstrip("]") for ln in dyn.stdout.splitlines() if "(NEEDED)" in ln]
    syms = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                          text=True, check=True)
    return needed, syms.stdout


needs_binutils = pytest.mark.skipif(not (shutil.which("readelf") and shutil.which("nm")),
                                    reason="needs binutils (readelf, nm)")


@needs_binutils
def test_the_bindings_link_the_shared_libstdcxx() -> None:
    try:
        from carseg import _native
    except ImportError as e:
        pytest.skip(f"carseg._native is not built ({e})")
    needed, defined = _needed_and_defined(Path(_native.__file__))
    assert any(n.startswith("libstdc++.so") for n in needed), needed
    assert OSTREAM_INSERT_LONG not in defined


_SOURCE = """
#include <regex>
#include <sstream>
extern "C" int carseg_probe() {
  std::ostringstream s;
  s << 12345L << ' ' << 2.5;
  return std::regex_match("cuda:0", std::regex("cuda(:[0-9]+)?")) ? int(s.str().size()) : -1;
}
"""

_CMAKE = """
cmake_minimum_required(VERSION 3.20)
project(probe CXX)
list(APPEND CMAKE_MODULE_PATH "{cmake_dir}")
include(CarsegSharedStdcxx)
add_library(probe SHARED probe.cpp)
add_library(probe_static_copy SHARED probe.cpp)
target_link_libraries(probe PRIVATE ${{CARSEG_SHARED_STDCXX}})
"""


def _load_beside_torch(lib: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        import ctypes, torch
        print(ctypes.CDLL({str(lib)!r}).carseg_probe())
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


@needs_binutils
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("how", ["flags", "wrapper"])
def test_cmake_module_links_the_shared_libstdcxx_under_static_flags(tmp_path: Path,
                                                                   how: str) -> None:
    """Under -static-libstdc++ (in CMake's flags, or added unseen by a compiler wrapper) the
    module's library needs libstdc++.so and works beside torch; the same library without the
    module has the static copy and crashes there."""
    cmake = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")
    if cmake is None:
        pytest.skip("needs cmake")
    (tmp_path / "probe.cpp").write_text(_SOURCE)
    (tmp_path / "CMakeLists.txt").write_text(_CMAKE.format(cmake_dir=ROOT / "cmake"))
    if how == "flags":
        args = ["-DCMAKE_CXX_COMPILER=g++", "-DCMAKE_SHARED_LINKER_FLAGS=-static-libstdc++"]
    else:
        wrapper = tmp_path / "gxx"
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("g++")} "$@" -static-libstdc++\n')
        wrapper.chmod(0o755)
        args = [f"-DCMAKE_CXX_COMPILER={wrapper}"]
    conf = subprocess.run([cmake, "-S", str(tmp_path), "-B", str(tmp_path / "b"),
                           "-DCMAKE_BUILD_TYPE=Release", *args], capture_output=True, text=True)
    assert conf.returncode == 0, conf.stdout + conf.stderr
    if how == "flags":
        assert "the link flags ask for -static-libstdc++; linking the shared" in conf.stdout
    build = subprocess.run([cmake, "--build", str(tmp_path / "b")], capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stdout + build.stderr

    fixed, copy = tmp_path / "b" / "libprobe.so", tmp_path / "b" / "libprobe_static_copy.so"
    needed, defined = _needed_and_defined(fixed)
    assert any(n.startswith("libstdc++.so") for n in needed), needed
    assert OSTREAM_INSERT_LONG not in defined
    ok = _load_beside_torch(fixed)
    assert ok.returncode == 0 and ok.stdout.strip() == "9", ok.stderr

    needed, defined = _needed_and_defined(copy)
    assert not any(n.startswith("libstdc++.so") for n in needed)
    assert OSTREAM_INSERT_LONG in defined
    crash = _load_beside_torch(copy)
    assert crash.returncode != 0, crash.stdout  # what the GPU image's builds did
