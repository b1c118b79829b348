"""The command-line tools as users run them: console scripts (``blip3o-*``) and ``python tools/<name>.py``,
one exit-status scheme (0 ok, 1 failures, 2 usage/config, 130 interrupted without a traceback), and no
``sys.path`` edits anywhere in the repository.

Subprocesses inherit the environment: CI installs the checkout (``pip install -e .``); a worktree that is
not the installed copy runs the tests with ``PYTHONPATH=$PWD``.
"""
from __future__ import annotations

import configparser
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from blip3o_storage.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, interruptible

REPO = Path(__file__).resolve().parents[1]
while not (REPO / "setup.cfg").is_file() and REPO.parent != REPO:  # tests/ or tests/<kind>/
    REPO = REPO.parent

#: console script -> module under blip3o_storage/cli (and tools/<module>.py)
SCRIPTS = {
    "blip3o-upload": "upload",
    "blip3o-upload-shards": "upload_shards",
    "blip3o-extract": "extract",
    "blip3o-make-data-json": "make_data_json",
    "blip3o-demo": "demo",
    "blip3o-make-demo-data": "make_demo_data",
    "blip3o-doctor": "doctor",
}
#: what `pip install` needs of the checkout (a copy, so the build writes nothing into it)
PACKAGE_FILES = ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "blip3o_petrel.pth",
                 "blip3o_petrel_hook.py", "blip3o_storage")


def test_exit_statuses_are_one_scheme() -> None:
    assert (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)


def test_interruptible_turns_ctrl_c_into_130(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise KeyboardInterrupt

    assert interruptible(body, "stopped here") == EXIT_INTERRUPTED
    assert capsys.readouterr().out == "stopped here\n"
    assert interruptible(lambda: EXIT_FAILED) == EXIT_FAILED


def test_setup_cfg_declares_every_console_script() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    declared = {name.strip(): target.strip() for name, _, target in (line.partition("=") for line in lines)}
    assert declared == {name: f"blip3o_storage.cli.{module}:main" for name, module in SCRIPTS.items()}


@pytest.mark.parametrize("module", sorted(SCRIPTS.values()))
def test_tool_file_answers_help(module: str) -> None:
    """``python tools/<name>.py --help``: exit 0, the usage and the exit statuses."""
    proc = subprocess.run([sys.executable, f"tools/{module}.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:") and "Exit status" in proc.stdout, proc.stdout
    wrapper = (REPO / "tools" / f"{module}.py").read_text()
    assert f"from blip3o_storage.cli.{module} import main" in wrapper


@pytest.mark.slow
def test_console_scripts_are_installed_and_answer_help(tmp_path: Path) -> None:
    """``pip install`` puts every ``blip3o-*`` script on the path; each answers ``--help`` with exit 0."""
    src, site = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    for name in PACKAGE_FILES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = dict(os.environ, PYTHONPATH=str(site))  # the installed copy only, not the checkout
    for script, module in SCRIPTS.items():
        exe = site / "bin" / script
        assert exe.is_file(), sorted(p.name for p in (site / "bin").iterdir())
        proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, env=env,
                              cwd=tmp_path)
        assert proc.returncode == 0, (script, proc.stderr)
        assert proc.stdout.startswith("usage:") and "Exit status" in proc.stdout, (script, proc.stdout)
        where = subprocess.run([sys.executable, "-c", f"import blip3o_storage.cli.{module} as m; print(m.__file__)"],
                               capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr


def test_no_sys_path_edits_anywhere() -> None:
    """Tools, benchmarks, tests and the package import the installed package; none edits ``sys.path``."""
    edit = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)\b|\[[^\]]*\]\s*=|\+?=)")
    offenders = []
    for folder in ("blip3o_storage", "tools", "benchmarks", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if edit.search(line) and "edit = re.compile" not in line:
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- Ctrl-C -------------------------------------------------------------------------------------------------
def _shards(src: Path, count: int, files: int, size: int) -> None:
    src.mkdir()
    payload = os.urandom(size)
    for n in range(count):
        with tarfile.open(src / f"shard_{n:03d}.tar", "w") as tf:
            for i in range(files):
                for name, data in ((f"k{i}.jpg", payload), (f"k{i}.txt", b"a caption\n")):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(data), 1_700_000_000
                    tf.addfile(info, io.BytesIO(data))


def _extract(src: Path, dest: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "tools/extract.py", "--src", str(src), "--dest", str(dest),
                             "--workers", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.parametrize("to", ["group", "parent"])
def test_extract_interrupted_exits_130_without_traceback(tmp_path: Path, to: str) -> None:
    """SIGINT mid-run -- to the process group as Ctrl-C in a terminal sends it, or to the tool alone --
    stops tools/extract.py with exit 130 and one line, no traceback from it or its workers, no temp dir
    left behind; re-running extracts the rest."""
    src, dest, count = tmp_path / "tars", tmp_path / "raw", 60
    _shards(src, count, files=24, size=96 * 1024)
    proc = _extract(src, dest)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the first shard done: the run is under way
        seen.append(line)
        if re.search(r"shard shard_\d+: \d+ files", line):
            break
    else:
        pytest.fail("extract finished without extracting a shard:\n" + "".join(seen))
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, out, err[-4000:])
    assert "Traceback" not in err and "Traceback" not in out, err[-4000:]
    assert "interrupted" in out, out
    assert time.monotonic() - start < 60
    done = [p for p in dest.iterdir() if not p.name.startswith(".")]
    assert 1 <= len(done) < count, "the interrupt must land mid-run"
    assert [p.name for p in dest.iterdir() if p.name.startswith(".tmp-")] == []

    again = _extract(src, dest)
    out, err = again.communicate(timeout=300)
    assert again.returncode == EXIT_OK, err[-4000:]
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == [
        f"shard_{n:03d}" for n in range(count)]
