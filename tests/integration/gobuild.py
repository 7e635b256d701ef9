"""Builds the Go programs the loopback harness boots, from the Go module proxy, at pinned versions.

configs/go-programs.yaml names each program: its module and main package, the image in
configs/images.yaml whose tag is its version (so bumping the image bumps what CI builds and
boots), or a `version` of its own for tools that are not images, and its build tags.

Binaries are cached outside the clone, keyed by name, version and tags:

    $COMMSTACK_CACHE (default ~/.cache/commstack)/go/<name>/<version>[+tags]/<binary>

so a second run does not rebuild, and a fresh machine builds them by itself. The Go module and
build caches (GOMODCACHE, GOCACHE) are Go's own, also outside the clone.

    python -m tests.integration.gobuild            # build (or find) every program, print paths
    python -m tests.integration.gobuild NAME ...   # only these

It builds two programs at a time (programs of one module one after the other), each with -trimpath and
without symbols (BUILD_FLAGS).

`go install module@version` refuses modules whose go.mod has replace directives, and fails when the
proxy does not serve the module's version list; then the build runs in a throwaway wrapper module
that requires the exact version and carries the program's replaces.

Two more shapes, declared per program in configs/go-programs.yaml:
- `module_version:` maps the image tag to the module version when they differ (Prometheus 3.16.0 is
  the module github.com/prometheus/prometheus v0.316.0): a format with {major}, {minor} and {patch}.
- `tag_suffix:` an image variant's suffix the module version does not carry (`-alpine`).
- `placeholders:` files a module's zip lacks but its code embeds (Alertmanager's built web UI,
  `ui/app/dist`): the build copies the module, writes each listed file with a one-line placeholder,
  and builds in a wrapper module whose `replace` points at that copy. The program then serves a
  placeholder page instead of the UI; its API is untouched.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS_FILE = ROOT / "configs" / "go-programs.yaml"
IMAGES_FILE = ROOT / "configs" / "images.yaml"


class GoBuildError(RuntimeError):
    """A pinned Go program could not be built; the message says which and why."""


@dataclass(frozen=True)
class GoProgram:
    name: str
    module: str  # the module path its go.mod declares at the pinned version
    package: str  # import path of the main package
    version: str  # module version, e.g. v0.2608.0
    tags: tuple[str, ...] = ()
    cgo: bool = False
    binary: str = ""  # the built file's name; default: the package's last element, as `go build` names it
    # Files (relative to the module root) the module zip lacks but the code embeds: written as placeholders
    # in a copy of the module that the build uses through a `replace`.
    placeholders: tuple[str, ...] = ()

    @property
    def binary_name(self) -> str:
        return self.binary or self.package.rstrip("/").rsplit("/", 1)[-1]

    @property
    def cache_key(self) -> str:
        return self.version + (("+" + ",".join(self.tags)) if self.tags else "")


def cache_root() -> Path:
    return Path(os.environ.get("COMMSTACK_CACHE") or Path.home() / ".cache" / "commstack") / "go"


def _module_version(tag: str) -> str:
    """An image tag as a Go module version: `0.18.1` and `v0.18.1` both mean v0.18.1."""
    return tag if tag.startswith("v") else "v" + tag


def _mapped_version(tag_version: str, scheme: str) -> str:
    """An image tag's version through a program's `module_version` format (v3.16.0 -> v0.316.0)."""
    parts = tag_version.lstrip("v").split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise GoBuildError(f"module_version {scheme!r} needs a MAJOR.MINOR.PATCH image tag, not {tag_version!r}")
    major, minor, patch = (int(part) for part in parts)
    return scheme.format(major=major, minor=minor, patch=patch)


def programs(programs_file: Path = PROGRAMS_FILE, images_file: Path = IMAGES_FILE) -> dict[str, GoProgram]:
    entries = yaml.safe_load(programs_file.read_text()) or {}
    images = yaml.safe_load(images_file.read_text()) or {}
    out: dict[str, GoProgram] = {}
    for name, entry in entries.items():
        if "image" in entry:
            ref = images[entry["image"]]
            tag = ref.rpartition(":")[2]
            # An image variant's suffix (`v1.97.0-alpine`) is no part of the module's version.
            tag = tag.removesuffix(str(entry.get("tag_suffix", "")))
            version = _module_version(tag)
            if "module_version" in entry:
                version = _mapped_version(version, str(entry["module_version"]))
        else:
            version = _module_version(str(entry["version"]))
        out[name] = GoProgram(
            name=name,
            module=entry["module"],
            package=entry.get("package", entry["module"]),
            version=version,
            tags=tuple(entry.get("tags", ())),
            cgo=bool(entry.get("cgo", False)),
            binary=str(entry.get("binary", "")),
            placeholders=tuple(entry.get("placeholders", ())),
        )
    return out


def cached_path(program: GoProgram) -> Path:
    return cache_root() / program.name / program.cache_key / program.binary_name


# No file paths, symbol table or DWARF in the binaries: the tests never debug them, and the linker
# skips writing what would be thrown away (the link is a serial step of every build).
BUILD_FLAGS = ["-trimpath", "-ldflags=-s -w"]
# Programs built at once by `main`: each `go build` already runs a compile per core, but module
# downloads, cgo and the final link are serial, so a second build fills those gaps.
PARALLEL_BUILDS = 2
# Build tags that link a system library: the header cgo needs, and the Debian package that ships it.
TAG_HEADERS = {"libsqlite3": ("/usr/include/sqlite3.h", "libsqlite3-dev")}


def _go_env(gobin: Path | None = None, cgo: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["CGO_ENABLED"] = "1" if cgo else "0"
    env["GOTOOLCHAIN"] = env.get("GOTOOLCHAIN") or "local"
    if gobin is not None:
        env["GOBIN"] = str(gobin)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def _replaces(program: GoProgram, work: Path, env: dict[str, str]) -> list[str]:
    """The replace directives of the program's own go.mod at the pinned version."""
    done = _run(["go", "mod", "download", "-json", f"{program.module}@{program.version}"], work, env)
    if done.returncode != 0:
        raise GoBuildError(f"{program.name}: go mod download {program.module}@{program.version} failed:\n{done.stdout}{done.stderr}")
    gomod = Path(json.loads(done.stdout)["GoMod"]).read_text()
    lines, in_block = [], False
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if in_block:
            if line == ")":
                in_block = False
            elif line:
                lines.append(line)
        elif line.startswith("replace ("):
            in_block = True
        elif line.startswith("replace "):
            lines.append(line[len("replace "):])
    return lines


def _module_copy_with_placeholders(program: GoProgram, work: Path, env: dict[str, str]) -> Path:
    """A writable copy of the module at the pinned version with each of `placeholders` written."""
    done = _run(["go", "mod", "download", "-json", f"{program.module}@{program.version}"], work, env)
    if done.returncode != 0:
        raise GoBuildError(f"{program.name}: go mod download {program.module}@{program.version} failed:\n{done.stdout}{done.stderr}")
    copy = work / "module"
    shutil.copytree(json.loads(done.stdout)["Dir"], copy)
    for directory in [copy, *copy.rglob("*")]:
        if directory.is_dir():
            directory.chmod(0o755)  # the module cache is read-only
    for relative in program.placeholders:
        target = copy / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"<!-- placeholder: {relative} is not in the {program.module} module zip -->\n")
    return copy


def _build_in_wrapper(program: GoProgram, work: Path, out_dir: Path, env: dict[str, str]) -> None:
    replaces = _replaces(program, work, env)
    if program.placeholders:
        replaces.append(f"{program.module} => {_module_copy_with_placeholders(program, work, env)}")
    wrapper = work / "wrapper"
    wrapper.mkdir()
    gomod = [f"module commstack.invalid/gobuild/{program.name}", "", "go 1.22", "",
             f"require {program.module} {program.version}", ""]
    gomod += [f"replace {line}" for line in replaces]
    (wrapper / "go.mod").write_text("\n".join(gomod) + "\n")
    (wrapper / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{program.package}"\n')
    tags = ["-tags", ",".join(program.tags)] if program.tags else []
    for cmd in (["go", "mod", "tidy", "-e"], ["go", "build", *BUILD_FLAGS, *tags, "-o", str(out_dir / program.binary_name), program.package]):
        done = _run(cmd, wrapper, env)
        if done.returncode != 0:
            raise GoBuildError(f"{program.name}: `{' '.join(cmd)}` in a wrapper module failed:\n{done.stderr[-4000:]}")


def build(program: GoProgram, *, log=sys.stderr) -> Path:
    """The cached binary of the program at its pinned version, built first if missing."""
    target = cached_path(program)
    if target.exists():
        return target
    if shutil.which("go") is None:
        raise GoBuildError(f"{program.name}: the Go toolchain (`go`) is not on PATH; install Go 1.22+ to build {program.package}@{program.version}")
    for tag in program.tags:
        header, package = TAG_HEADERS.get(tag, (None, None))
        if header and not os.path.exists(header):
            raise GoBuildError(f"{program.name}: the `{tag}` build tag links a system library whose header {header} "
                               f"is missing; install it with: sudo apt-get install -y {package}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel test run builds it once
        if target.exists():
            return target
        started = time.monotonic()
        print(f"gobuild: building {program.package}@{program.version} (tags: {','.join(program.tags) or 'none'}) ...", file=log, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"gobuild-{program.name}-") as tmp:
            work, out_dir = Path(tmp), Path(tmp) / "bin"
            out_dir.mkdir()
            env = _go_env(out_dir, program.cgo)
            tags = ["-tags", ",".join(program.tags)] if program.tags else []
            if program.placeholders:  # go install would fail on the missing files: straight to the wrapper
                done = subprocess.CompletedProcess([], 1, "", "the module zip lacks embedded files\n")
            else:
                done = _run(["go", "install", *BUILD_FLAGS, *tags, f"{program.package}@{program.version}"], work, env)
            if done.returncode != 0:
                # go install refuses modules with replace directives, and looks up the module's
                # version list (for deprecations), which the proxy may not serve; a wrapper
                # module that requires the exact version needs neither.
                print(f"gobuild: go install refused ({done.stderr.strip().splitlines()[-1][:200]}); building in a wrapper module", file=log, flush=True)
                try:
                    _build_in_wrapper(program, work, out_dir, env)
                except GoBuildError as err:
                    raise GoBuildError(f"{err}\n(go install first said:\n{done.stderr[-2000:]})") from None
            built = out_dir / program.binary_name
            installed = out_dir / program.package.rstrip("/").rsplit("/", 1)[-1]
            if not built.exists() and installed.exists():
                installed.rename(built)  # go install names it after the package
            if not built.exists():
                raise GoBuildError(f"{program.name}: the build produced no {program.binary_name}")
            partial = target.with_name(target.name + ".partial")
            shutil.move(str(built), partial)
            os.replace(partial, target)  # atomic: a half-written binary is never cached
        print(f"gobuild: {program.name} {program.version} built in {time.monotonic() - started:.0f}s -> {target}", file=log, flush=True)
    return target


def binary(name: str) -> Path:
    """Path to the named program's binary, building it if the cache lacks it."""
    return build(programs()[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="programs of configs/go-programs.yaml (default: all)")
    args = parser.parse_args(argv)
    known = programs()
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown program(s) {', '.join(unknown)}; known: {', '.join(known)}")
    names = args.names or list(known)
    # Programs of one module (prometheus and promtool) are built one after the other, so the second
    # finds the first's packages in GOCACHE instead of compiling them again beside it.
    by_module: dict[str, list[str]] = {}
    for name in names:
        by_module.setdefault(known[name].module, []).append(name)

    def build_group(group: list[str]) -> dict[str, object]:
        results: dict[str, object] = {}
        for name in group:
            try:
                results[name] = build(known[name])
            except GoBuildError as err:
                results[name] = err
        return results

    with ThreadPoolExecutor(max_workers=PARALLEL_BUILDS) as pool:
        futures = [pool.submit(build_group, group) for group in by_module.values()]
    results = {name: result for future in futures for name, result in future.result().items()}
    failed = False
    for name in names:
        if isinstance(results[name], GoBuildError):
            print(f"error: {results[name]}", file=sys.stderr)
            failed = True
        else:
            print(f"{name}\t{results[name]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
