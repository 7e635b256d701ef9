"""`python -m commstack render-diff --base REF [--stack NAME …]`: what a change does to the deployed files.

Renders each stack redacted (`render --redact`) from the tree of REF and from
the working tree, each by its own code in its own process, and prints the
unified diff to stdout, and a one-line summary ("no differences", or how many
files differ) to stderr. REF's tree comes from `git archive`, which leaves the
repository, its index and its worktrees untouched. Exit 0 whether or not the
renders differ, 2 when one cannot be made or a --stack exists on neither side.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from commstack.devtools import offline
from commstack.devtools.render import RenderError


def _git(repo: Path, *args: str) -> bytes:
    run = subprocess.run(["git", "-C", str(repo), *args], capture_output=True)
    if run.returncode != 0:
        raise RenderError(f"git {' '.join(args)}: {run.stderr.decode(errors='replace').strip()}")
    return run.stdout


def _render(tree: Path, stack: str, out: Path, label: str) -> None:
    if not (tree / f"Pulumi.{stack}.yaml").exists():
        out.mkdir(parents=True)  # a stack this side does not have: the diff shows all of it added or removed
        return
    run = subprocess.run([sys.executable, "-m", "commstack", "render", "--stack", stack, "--out", str(out), "--redact"],
                         cwd=tree, capture_output=True, text=True)
    if run.returncode != 0:
        # render prints no secret; its last line says what went wrong (e.g. a REF older than --redact).
        last = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise RenderError(f"the redacted render of {stack!r} at {label} failed: {last}")


def render_diff(base: str, stacks: Optional[Sequence[str]] = None, repo: Path = offline.ROOT) -> str:
    """The unified diff between the redacted renders of `stacks` at git ref `base` and in `repo`'s working tree."""
    repo = Path(repo)
    with tempfile.TemporaryDirectory(prefix="commstack-render-diff-") as tmp:
        work = Path(tmp)
        base_tree = work / "tree"
        base_tree.mkdir()
        with tarfile.open(fileobj=io.BytesIO(_git(repo, "archive", "--format=tar", base))) as archive:
            archive.extractall(base_tree, filter="data")
        for stack in stacks or []:
            offline.check_stack_name(stack)
            if not (repo / f"Pulumi.{stack}.yaml").exists() and not (base_tree / f"Pulumi.{stack}.yaml").exists():
                known = sorted(set(offline.committed_stacks(repo)) | set(offline.committed_stacks(base_tree)))
                raise RenderError(f"no stack {stack!r}: neither {base} nor the working tree has Pulumi.{stack}.yaml; "
                                  f"stacks: {', '.join(known)}")
        for stack in stacks or offline.committed_stacks(repo):
            _render(base_tree, stack, work / "base" / stack, base)
            _render(repo, stack, work / "head" / stack, "the working tree")
        diff = subprocess.run(["git", "diff", "--no-index", "--no-color", "--", "base", "head"],
                              cwd=work, capture_output=True, text=True)
        if diff.returncode > 1:
            raise RenderError(f"git diff --no-index: {diff.stderr.strip()}")
        return diff.stdout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="git ref to compare with (e.g. origin/main)")
    parser.add_argument("--stack", action="append", default=[], metavar="NAME",
                        help="stack to render (repeatable; default: every committed stack)")


def main(args: argparse.Namespace) -> int:
    try:
        diff = render_diff(args.base, args.stack)
    except (RenderError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(diff)
    stacks = ", ".join(args.stack or offline.committed_stacks())
    # On stderr, so that stdout stays exactly the diff (the pull-request workflow posts it).
    if diff:
        files = sum(line.startswith("diff --git") for line in diff.splitlines())
        print(f"{files} rendered file(s) differ between {args.base} and the working tree ({stacks})", file=sys.stderr)
    else:
        print(f"no differences: the redacted renders of {stacks} at {args.base} and in the working tree are identical",
              file=sys.stderr)
    return 0
