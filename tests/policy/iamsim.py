"""A real AWS IAM policy evaluator for the tests: @cloud-copilot/iam-simulate (npm), which implements AWS's
documented evaluation logic (identity and resource policies, explicit denies, condition operators and global
condition keys such as aws:SourceIp and aws:SecureTransport). moto enforces identity policies by action and
resource but takes unknown conditions as met and skips principals (tests/integration/test_backup.py), so what
only a condition or a bucket policy decides is evaluated here.

Installed with `npm ci` from the committed lock (tests/policy/iamsim/package-lock.json: exact versions and
their registry integrity hashes) into a cache outside the clone, keyed by the lock's hash:

    $COMMSTACK_CACHE (default ~/.cache/commstack)/npm/iam-simulate-<lock hash>/

A test tool only: nothing of it is deployed (it is AGPL-3.0; the program never links it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

TOOL = Path(__file__).resolve().parent / "iamsim"
FILES = ("package.json", "package-lock.json", "simulate.mjs")


class IamSimError(RuntimeError):
    """The evaluator could not be installed or run; the message says why and what to install."""


def install() -> Path:
    """The directory holding simulate.mjs and its node_modules, installed first if missing."""
    for program in ("node", "npm"):
        if shutil.which(program) is None:
            raise IamSimError(f"`{program}` is not on PATH: the IAM policy evaluator runs on Node.js 18+; "
                              "install it with: sudo apt-get install -y nodejs npm")
    digest = hashlib.sha256(b"".join((TOOL / name).read_bytes() for name in FILES)).hexdigest()[:16]
    root = Path(os.environ.get("COMMSTACK_CACHE") or Path.home() / ".cache" / "commstack") / "npm"
    target = root / f"iam-simulate-{digest}"
    if (target / "node_modules" / ".installed").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest workers install it once
        if (target / "node_modules" / ".installed").exists():
            return target
        for name in FILES:
            shutil.copyfile(TOOL / name, target / name)
        # --ignore-scripts: no install script of any package runs; npm ci checks every tarball's integrity hash.
        done = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=target, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise IamSimError(f"npm ci of the IAM policy evaluator failed:\n{done.stderr[-3000:]}")
        (target / "node_modules" / ".installed").write_text("ok\n")
    return target


def simulate(simulations: list[dict]) -> list[dict]:
    """Each simulation (iam-simulate's Simulation: request, identityPolicies, resourcePolicy, ...) -> its result:
    {"result": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | "error", ...}, in order."""
    directory = install()
    done = subprocess.run(["node", "simulate.mjs"], cwd=directory, input=json.dumps(simulations),
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise IamSimError(f"the IAM policy evaluator failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)
