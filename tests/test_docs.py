"""The documentation: the generated parts (README's commands table, docs/commands.md, docs/store.md) match
the code, and README.md stays a short user README that links to the detailed documents."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIX = "the generated docs are stale; run `python docs/generate.py` and commit the result"


def test_readme_commands_block_and_generated_docs_match_the_cli_and_store():
    env = dict(os.environ, COLUMNS="100")
    p = subprocess.run(
        [sys.executable, "docs/generate.py", "--check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, f"{FIX}\n{p.stdout}{p.stderr}"


def test_check_mode_names_the_stale_file_and_the_fix_in_one_line(tmp_path):
    """On a copy of the repository whose README commands table lost its last row, --check exits 1 with one
    line that names README.md (and no other file) and the command that fixes it."""
    for name in ("core", "stepadapt_cli"):
        (tmp_path / name).symlink_to(REPO / name)
    for name in ("README.md", "docs/commands.md", "docs/store.md", "docs/config.md", "docs/generate.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((REPO / name).read_text())
    readme = (REPO / "README.md").read_text()
    stale = re.sub(r"\n[^\n]*\n(<!-- commands:end -->)", r"\n\1", readme, count=1)
    assert stale != readme
    (tmp_path / "README.md").write_text(stale)
    p = subprocess.run(
        [sys.executable, "docs/generate.py", "--check"],
        cwd=tmp_path,
        env=dict(os.environ, COLUMNS="100"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and "README.md" in lines[0] and "python docs/generate.py" in lines[0], p.stdout
    assert "docs/commands.md" not in lines[0] and "docs/store.md" not in lines[0], p.stdout


def test_readme_is_a_short_user_readme_linking_the_detailed_docs():
    text = (REPO / "README.md").read_text()
    n = len(text.splitlines())
    assert 150 <= n <= 300, f"README.md has {n} lines; keep it a user README (150-300 lines), details go to docs/"
    for target in ("docs/method.md", "docs/store.md", "docs/architecture.md", "bench/README.md"):
        assert f"]({target})" in text, f"README.md does not link to {target}"
        assert (REPO / target).exists(), f"README.md links to {target}, which does not exist"


def test_every_module_is_in_the_architecture_doc():
    """docs/architecture.md names every module of core/ and stepadapt_cli/ (a table row per module), so a new
    module cannot land without saying what it holds."""
    doc = (REPO / "docs/architecture.md").read_text()
    named = set(re.findall(r"`([\w/]+\.py)`", doc))
    missing = []
    for top in ("core", "stepadapt_cli"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO / top)
            if path.name == "__init__.py" and path.stat().st_size < 300:
                continue  # a package marker (a docstring at most)
            full = f"{top}/{rel}"
            if not (path.name in named or any("/" in n and full.endswith(n) for n in named)):
                missing.append(f"{top}/{rel}")
    assert not missing, f"modules missing from docs/architecture.md: {', '.join(missing)}"


def test_run_file_names_are_spelled_only_in_core_runs():
    """A run's config and meta file names are spelled once, in core/runs.py (docs/architecture.md says so).
    core/model/ is exempt: it reads other tools' model folders (diffusers' config.json is theirs)."""
    offenders = []
    for top in ("core", "stepadapt_cli"):
        for path in (REPO / top).rglob("*.py"):
            if path == REPO / "core/runs.py" or path.parent == REPO / "core/model":
                continue  # core/model/ reads other tools' model folders, with config files of their own
            text = path.read_text()
            for name in ('"config.json"', '"meta.json"'):
                if name in text:
                    offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert not offenders, offenders


def test_every_config_key_has_a_one_line_meaning():
    """KEY_DOCS beside _BASE names every key of the config, and nothing else; each meaning is one line."""
    sys.path.insert(0, str(REPO))
    from core.config import _BASE, KEY_DOCS

    def keys(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from keys(v, prefix + k + ".")
            else:
                yield prefix + k

    have = set(keys(_BASE))
    assert have - set(KEY_DOCS) == set(), f"config keys without a line in core.config.KEY_DOCS: {have - set(KEY_DOCS)}"
    assert set(KEY_DOCS) - have == set(), f"KEY_DOCS names keys the config lacks: {set(KEY_DOCS) - have}"
    assert all(m.strip() and "\n" not in m for m in KEY_DOCS.values())
