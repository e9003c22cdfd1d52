"""A non-editable install works: prompts/ and studies/ ship inside the wheel and are found from any folder."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_installed_in_a_scratch_venv_finds_studies_and_prompts(tmp_path):
    """Build the wheel, install it (no dependencies: they come from this venv's site-packages through a .pth,
    which does not run this venv's editable finder) into a new venv, and from an empty folder run
    `stepadapt study list`, load the proxy's templates and the shipped base: all read the wheel's copies, not the
    checkout."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, REPO],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    wheel = next(wheels.glob("stepadapt-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel], check=True, timeout=300
    )
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STEPADAPT_HOME")}
    p = subprocess.run(
        [venv / "bin" / "stepadapt", "study", "list", "--json", "--runs-dir", empty / "runs"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert '"name": "table1"' in p.stdout and str(REPO) not in p.stdout, p.stdout
    code = (
        "import core, core.method.proxy as P, core.manager.shipped as S; "
        "t = P.load_templates(P.PROMPTS_DIR); S.load('tiny'); "
        "print(core.__file__); print(P.PROMPTS_DIR); print(sorted(t)); print(S.SHIPPED)"
    )
    p = subprocess.run([py, "-c", code], cwd=empty, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    core_file, prompts, names, bases = p.stdout.splitlines()
    assert core_file.startswith(str(site)) and prompts.startswith(str(site)), p.stdout
    assert "proxy_system" in names and "proxy_round" in names, names
    assert bases.startswith(str(site)), bases  # the shipped base is in the wheel, checked against its sha256


def test_pyproject_lists_every_package():
    """pyproject.toml lists its packages by hand (prompts/ and studies/ are mapped into core): a new package
    folder that is not listed would be missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("core", "stepadapt_cli")
        for p in (REPO / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert listed == folders | {"core.prompts", "core.studies"}, listed ^ (folders | {"core.prompts", "core.studies"})
