"""Bad stack files fail in one line naming the file (issue 26, items 9 and 11): a YAML alias bomb,
a value of megabytes, bytes that are not UTF-8, a stack file the edit cannot replace; and an
analysis window too short to hold two scrapes is refused with the fix, or gets a scrape interval
that fits it when none was written."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from qinfra.core.errors import SpecError
from qinfra.core.spec import load_stack, parse_config
from qinfra.deploy.stackfile import update_stack_file
from qinfra.deploy.targets.prometheus_process import config_text

ROOT = Path(__file__).resolve().parents[1]


def _cli(stacks: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The real `qinfra` console entry point in a fresh process, on the stacks copy, running
    this checkout's package (not whichever one the environment installed)."""
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "QINFRA_STACKS_DIR": str(stacks), "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "qinfra.cli.main", *args], capture_output=True,
                          env=env, cwd=stacks.parent, timeout=120, check=False)


def _in_config(path: Path, line: str, before: str = "") -> None:
    """Add `line` as the first key under the stack file's `config:` (and `before` above all)."""
    head, sep, rest = path.read_text().partition("\nconfig:\n")
    assert sep, path
    path.write_text(f"{before}{head}{sep}  {line}\n{rest}")


def _refused(done: subprocess.CompletedProcess[bytes], *words: str, lines: int = 1) -> str:
    """The `Error: ...` a refused command printed: `lines` short lines, nothing else."""
    err = done.stderr.decode()
    assert done.returncode == 2, (done.returncode, err[:2000])
    assert len(done.stderr) < 2000, f"{len(done.stderr):,} bytes on stderr: {err[:500]}..."
    assert err.count("\n") == lines and err.startswith("Error: "), err
    for word in words:
        assert word in err, err
    return err


def _alias_bomb(levels: int, width: int) -> str:
    """YAML anchors, each a list of `width` aliases of the one before: width**levels strings."""
    lines = ["bomb:", f"  - &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_without_expanding_it(stacks: Path) -> None:
    path = stacks / "Pulumi.local.yaml"
    shipped = path.read_text()
    # 7 x 7: 823,543 strings once expanded (the 7 MB error), under an unknown key
    _in_config(path, "qinfra:tags: *l6", before=_alias_bomb(7, 7))
    with pytest.raises(SpecError, match=r"YAML aliases expand too far") as caught:
        load_stack("local", stacks)
    assert len(str(caught.value)) < 400 and str(path) in str(caught.value)
    _refused(_cli(stacks, "plan", "--stack", "local"), str(path), "YAML aliases expand too far",
             "To fix:")
    # 9 x 9 is 387 million strings: refused as fast, since the count stops at its bar
    path.write_text(shipped)
    _in_config(path, "qinfra:tags: *l8", before=_alias_bomb(9, 9))
    started = time.monotonic()
    with pytest.raises(SpecError, match=r"YAML aliases expand too far"):
        load_stack("local", stacks)
    assert time.monotonic() - started < 10


def test_aliases_that_stay_small_still_load(stacks: Path) -> None:
    path = stacks / "Pulumi.local.yaml"
    _in_config(path, "aws:tags: {salt: *s, again: *s}", before="salts: [&s qinfra-local]\n")
    assert load_stack("local", stacks).provider_config["aws:tags"] == {
        "salt": "qinfra-local", "again": "qinfra-local"}


def test_a_huge_value_is_echoed_cut_short(stacks: Path) -> None:
    path = stacks / "Pulumi.local.yaml"
    huge = "x" * 1_000_000
    path.write_text(path.read_text().replace("    port: 8080", f"    port: {huge}"))
    _refused(_cli(stacks, "plan", "--stack", "local"), str(path),
             "qinfra:serving.port: got 'xxx", lines=2)


def test_a_stack_file_that_is_not_utf8_names_the_byte_and_the_file(stacks: Path) -> None:
    path = stacks / "Pulumi.local.yaml"
    text = path.read_bytes()
    at = text.index(b"The embedded default")
    path.write_bytes(text[:at] + b"\xff\xfe" + text[at:])  # Latin-1 / UTF-16 debris in a comment
    line = text.count(b"\n", 0, at) + 1
    why = f"stack file {path} is not UTF-8 text (byte 0xff at offset {at}, line {line})"
    with pytest.raises(SpecError, match="To fix: save it as UTF-8") as caught:
        load_stack("local", stacks)
    assert str(caught.value).startswith(why), caught.value
    _refused(_cli(stacks, "plan", "--stack", "local"), why)
    with pytest.raises(SpecError, match="is not UTF-8 text"):  # the edit reads it the same way
        update_stack_file(path, {"qinfra:rollout.quantized_percent": 0})
    assert path.read_bytes()[at:at + 2] == b"\xff\xfe"


def test_a_stack_file_nested_too_deep_is_refused(stacks: Path) -> None:
    path = stacks / "Pulumi.local.yaml"
    _in_config(path, "qinfra:tags: " + "[" * 100_000)
    _refused(_cli(stacks, "plan", "--stack", "local"), str(path), "nests too deep")


@contextlib.contextmanager
def _unwritable(path: Path) -> Iterator[str]:
    """Make `path` impossible to replace for real: as root (which chmod does not stop) the file
    is made immutable (chattr +i, as an operator locks a file); otherwise its folder is made
    read-only. Yields how, and undoes it whatever happens."""
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None:
            pytest.fail("chattr (e2fsprogs) is missing: it makes the stack file immutable as root",
                        pytrace=False)
        done = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"chattr +i {path} failed ({done.stderr.strip()}): the test needs a "
                        "filesystem with immutable files (ext4, xfs, btrfs)", pytrace=False)
        try:
            yield "immutable"
        finally:
            subprocess.run([chattr, "-i", str(path)], check=True)
    else:
        mode = path.parent.stat().st_mode
        path.parent.chmod(0o555)
        try:
            yield "read-only folder"
        finally:
            path.parent.chmod(mode)


def test_an_edit_of_a_stack_file_it_cannot_replace_fails_in_one_line(stacks: Path) -> None:
    path = stacks / "Pulumi.local.yaml"
    before = path.read_bytes()
    with _unwritable(path) as how:
        with pytest.raises(SpecError) as caught:
            update_stack_file(path, {"qinfra:rollout.quantized_percent": 0,
                                     "qinfra:rollout.stage": "baseline_only"})
        message = str(caught.value)
        assert "\n" not in message, message
        assert message.startswith(f"cannot write stack file {path}: "), (how, message)
        assert "it is unchanged. To fix: make it and its folder writable" in message, message
        assert path.read_bytes() == before
    assert [p.name for p in stacks.iterdir() if p.name.startswith(".")] == []  # no temp left


def _analysis(**analysis: Any) -> dict[str, Any]:
    config = YAML(typ="safe").load((ROOT / "stacks" / "Pulumi.local.yaml").read_text())["config"]
    return {**config, "qinfra:analysis": analysis}


def test_a_window_that_cannot_hold_two_scrapes_is_refused_with_the_fix() -> None:
    with pytest.raises(SpecError) as caught:
        parse_config(_analysis(interval_s=5, scrape_interval_s=5), "local")
    (line,) = [x.strip() for x in str(caught.value).splitlines()[1:]]
    assert line.startswith("qinfra:analysis.interval_s: got 5.0; allowed: at least 2 x "
                           "qinfra:analysis.scrape_interval_s (5) = 10: Prometheus' increase() "
                           "needs two scrapes inside a window"), line
    assert ("To fix: set interval_s to 10 or more, or scrape_interval_s to 2.5 or less (or remove "
            "scrape_interval_s: it then follows the window)") in line, line
    # the edge: exactly two scrape intervals hold two samples whatever their phase
    spec = parse_config(_analysis(interval_s=10, scrape_interval_s=5), "local")
    assert spec.analysis is not None and spec.analysis.scrape_interval_s == 5


@pytest.mark.parametrize(("window", "scrape"), [(5, 5 / 3), (1, 0.5), (15, 5.0), (60, 5.0)])
def test_an_unset_scrape_interval_follows_a_short_window(window: float, scrape: float) -> None:
    spec = parse_config(_analysis(interval_s=window), "local")
    assert spec.analysis is not None
    assert spec.analysis.scrape_interval_s == pytest.approx(scrape)
    assert spec.analysis.interval_s >= 2 * spec.analysis.scrape_interval_s
    # the local target's Prometheus scrapes at that interval
    assert f"scrape_interval: {round(scrape * 1000)}ms" in config_text(spec)


def test_the_default_analysis_is_unchanged() -> None:
    spec = parse_config(_analysis(), "local")
    assert spec.analysis is not None
    assert (spec.analysis.interval_s, spec.analysis.scrape_interval_s) == (60, 5)
