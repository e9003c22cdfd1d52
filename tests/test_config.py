"""Config files and -S values are bounded and checked value by value: bad ones get one `error:` line, exit 2,
and leave no run folder behind."""

import pytest

from tests.conftest import assert_clean_error, run_cli

ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    + "model:\n  attention_resolutions: *i\n"
)

FILES = {
    "alias bomb": ("bomb.yaml", ALIAS_BOMB.encode(), "aliases (*name) are not allowed"),
    "nested 3000 deep": ("deep.yaml", ("train: " + "[" * 3000 + "]" * 3000 + "\n").encode(), "nested"),
    "not UTF-8": ("latin.yaml", "train:\n  steps: 3 # caf\xe9\n".encode("latin-1"), "not UTF-8"),
    "YAML syntax": ("syntax.yaml", b"train:\n  steps: [1, 2\nmodel: {\n", "syntax.yaml:3:"),
    "TOML syntax": ("syntax.toml", b"[train]\nsteps = = 3\n", "line 2"),
    "misspelt key": ("typo.yaml", b"train:\n  stepz: 3\n", "did you mean 'train.steps'?"),
}

VALUES = {
    "zero heads": ("model.num_heads=0", "model.num_heads must be >= 1"),
    "null steps": ("train.steps=null", "needs a value"),
    "null k": ("schedule.k=null", "needs a value"),
    "text in an int list": ('model.channel_mult=[1,"2"]', "channel_mult[1]"),
    "float in an int list": ("model.channel_mult=[1.5,2]", "channel_mult[0]"),
    "letters as resolutions": ('model.attention_resolutions=["a"]', "attention_resolutions[0]"),
    "a huge list": ("model.channel_mult=[" + ",".join(["1"] * 1000) + "]", "at most 64"),
}


@pytest.mark.parametrize("case", list(FILES))
def test_a_bad_config_file_gets_one_line_and_no_run_folder(case, runs_dir, tmp_path):
    name, data, expect = FILES[case]
    path = tmp_path / name
    path.write_bytes(data)
    p = run_cli("run", str(path), "--name", "x", "--runs-dir", runs_dir, timeout=60)
    assert_clean_error(p)
    assert expect in p.stderr and p.returncode == 2
    assert not (runs_dir / "x").exists()


@pytest.mark.parametrize("case", list(VALUES))
def test_a_bad_value_gets_one_line_and_no_run_folder(case, runs_dir):
    value, expect = VALUES[case]
    p = run_cli("run", "--preset", "tiny", "-S", value, "--name", "x", "--runs-dir", runs_dir, timeout=60)
    assert_clean_error(p)
    assert expect in p.stderr and p.returncode == 2
    assert not (runs_dir / "x").exists()
