"""The README's `pip install .` must install every module, subpackages too: the wheel
once shipped `api` without `api.cli`, and `raftbroker up` died on import."""
import glob
import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = ("jetstream", "storage", "cluster", "api", "chaos")


def test_the_wheel_holds_every_module_and_the_console_script(tmp_path):
    # Built from a copy without build/ and *.egg-info: a stale build/lib would fill the gaps.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "data", "__pycache__",
                                                             ".hypothesis", ".pytest_cache", "report"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = glob.glob(str(tmp_path / "raftbroker-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {os.path.relpath(p, REPO) for root in ROOTS
              for p in glob.glob(os.path.join(REPO, root, "**", "*.py"), recursive=True)}
    assert "api/cli/__init__.py" in wanted and wanted - names == set()
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "raftbroker = api.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
