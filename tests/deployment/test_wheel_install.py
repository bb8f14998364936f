"""The distribution as users get it: the sdist and wheel build, pass ``twine check``, carry the
schemas and the mock server, and install under the lock into a fresh virtual environment where
Airflow lists the provider and the mock server starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import selectors
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import airflow_opportunity_provider

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCK = REPO / "requirements-dev.lock"
VERSION = airflow_opportunity_provider.__version__
READY = re.compile(r"mock CRM listening on (http://\S+)")

pytestmark = pytest.mark.slow


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
        f"\n--- stderr\n{result.stderr[-4000:]}"
    )
    return result.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment minus what ties it to the repository (its virtual environment, PYTHONPATH,
    Airflow settings); network settings such as proxies and CA bundles stay.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not name.startswith("AIRFLOW")
    }
    env["PATH"] = os.pathsep.join(
        entry for entry in env.get("PATH", "").split(os.pathsep) if entry and Path(entry) != BIN
    )
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build`` output: the sdist, and the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    args = [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        args.append("--no-isolation")  # the locked build backend, no download
    else:
        args += ["--installer", "uv"]  # an isolated build environment, made fast by uv
    env = _clean_env()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    _run([*args, str(REPO)], cwd=out, env=env)
    return out


def _only(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def test_twine_check_passes(dist: Path) -> None:
    files = sorted(str(path) for path in dist.iterdir())
    assert len(files) == 2, files
    output = _run([str(BIN / "twine"), "check", "--strict", *files], cwd=dist)
    assert output.count("PASSED") == 2, output


def test_the_wheel_carries_the_schemas_the_mock_server_and_the_entry_point(dist: Path) -> None:
    wheel = _only(dist, f"airflow_opportunity_provider-{VERSION}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"airflow_opportunity_provider-{VERSION}.dist-info"
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = archive.read(f"{info}/METADATA").decode()
    package = REPO / "airflow_opportunity_provider"
    schemas = {f"airflow_opportunity_provider/schemas/{p.name}" for p in (package / "schemas").glob("*.json")}
    assert schemas, "the repository has no schema files"
    assert schemas <= names
    mock_modules = {
        f"airflow_opportunity_provider/mock_crm/{p.name}" for p in (package / "mock_crm").glob("*.py")
    }
    assert {"airflow_opportunity_provider/mock_crm/__main__.py"} <= mock_modules <= names
    assert "airflow_opportunity_provider/get_provider_info.py" in names
    assert not [name for name in names if name.startswith(("tests/", "dags/", "deploy/"))]
    assert "[apache_airflow_provider]" in entry_points
    assert "airflow_opportunity_provider.get_provider_info:get_provider_info" in entry_points
    assert f"Version: {VERSION}" in metadata
    assert "Requires-Dist: apache-airflow" in metadata


def test_the_sdist_builds_what_the_wheel_is_built_from(dist: Path) -> None:
    sdist = _only(dist, f"airflow_opportunity_provider-{VERSION}.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "airflow_opportunity_provider/__init__.py"} <= names
    assert any(name.endswith(".schema.json") for name in names)


@pytest.fixture(scope="module")
def fresh_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with only the wheel, installed with the lock as constraints."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    uv = str(BIN / "uv")
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=venv.parent, env=_clean_env())
    wheel = _only(dist, "*.whl")
    _run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--compile-bytecode",
            "--python",
            str(venv / "bin" / "python"),
            "--constraint",
            str(LOCK),
            # The extras the Dockerfile installs, so this resolves what the image build resolves.
            f"{wheel}[postgres,openlineage]",
        ],
        cwd=venv.parent,
        env=_clean_env(),
    )
    return venv


def test_the_installed_package_is_the_wheel_not_the_repository(fresh_venv: Path) -> None:
    location = _run(
        [
            str(fresh_venv / "bin" / "python"),
            "-c",
            "import airflow_opportunity_provider as p; print(p.__file__)",
        ],
        cwd=fresh_venv,
        env=_clean_env(),
    ).strip()
    assert Path(location).is_relative_to(fresh_venv), location
    installed = _run(
        [str(BIN / "uv"), "pip", "freeze", "--python", str(fresh_venv / "bin" / "python")],
        cwd=fresh_venv,
        env=_clean_env(),
    )
    locked = {
        line.split("==")[0].lower(): line.strip() for line in LOCK.read_text().splitlines() if "==" in line
    }
    # Every dependency the wheel pulled in is at its locked version.
    for line in installed.splitlines():
        name = line.split("==")[0].lower()
        if "==" in line and name in locked:
            assert line.strip().lower() == locked[name].lower(), line


def test_airflow_in_the_fresh_environment_lists_the_provider(fresh_venv: Path, tmp_path: Path) -> None:
    output = _run(
        [str(fresh_venv / "bin" / "airflow"), "providers", "list", "-o", "json"],
        cwd=tmp_path,
        env=_clean_env(AIRFLOW_HOME=str(tmp_path), AIRFLOW__LOGGING__LOGGING_LEVEL="ERROR"),
        timeout=180,
    )
    rows = json.loads(output[output.index("[") :])
    versions = {row["package_name"]: row["version"] for row in rows}
    assert versions.get("airflow-opportunity-provider") == VERSION, versions


def _wait_for_line(process: subprocess.Popen[str], pattern: re.Pattern[str], timeout: float) -> str:
    """The first match of ``pattern`` in the process's output, or a failure showing what it printed."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = process.stdout.readline()
            if not line:  # the process exited
                break
            lines.append(line)
            if match := pattern.search(line):
                return match.group(1)
    pytest.fail(f"no line matching {pattern.pattern!r} (exit status {process.poll()}):\n{''.join(lines)}")


@pytest.fixture
def mock_from_wheel(fresh_venv: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [str(fresh_venv / "bin" / "python"), "-m", "airflow_opportunity_provider.mock_crm", "--port", "0"],
        cwd=fresh_venv,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process, _wait_for_line(process, READY, timeout=60)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_mock_server_starts_from_the_wheel(mock_from_wheel: tuple[subprocess.Popen[str], str]) -> None:
    process, base_url = mock_from_wheel
    assert process.poll() is None
    answer = requests.get(base_url + "/_mock/health", timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}
