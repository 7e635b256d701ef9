"""`python -m commstack render --stack NAME --out DIR [--set key=value …]`.

Runs the Pulumi program in-process on the offline engine (no CLI, no
credentials) and writes what a deployment would place on its machines:

* every docker.Container `uploads` entry -> DIR/<container>/<path in container>,
  where <container> is the docker container's name (what `docker ps` shows);
* every aws ec2 Instance's user data -> DIR/<instance>/user-data, plus each
  cloud-init `write_files` entry -> DIR/<instance>/<path on the host>;
* DIR/resources.json: every resource with its options and non-secret inputs.

Generated secrets are fresh on every render and are only ever written to
files (mode 0600), never printed.

With `--redact` the render is for review: every generated value comes from a
fixed public seed and every secret is written as the marker
`<secret:RESOURCE.OUTPUT>` (or `<secret:CONFIG-KEY>`; a plain scalar in YAML),
so two renders of the same code are byte-identical and `diff -ru` between two
renders shows only what the code changed (`render-diff` does this for a git
ref). A redacted render cannot be deployed.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional

import yaml

from commstack.devtools import offline

CONTAINER = "docker:index/container:Container"
INSTANCE = "aws:ec2/instance:Instance"
RESOURCES_FILE = "resources.json"
# Public on purpose: a redacted render's stand-in values are not secrets.
REDACT_SEED = "commstack-render-redact"
# Shorter secret values could match ordinary text; generated secrets are far longer.
MIN_REDACTED_LENGTH = 8
# Written first into DIR: keeps the render out of git and marks DIR as a render
# (a later render may replace it; any other non-empty directory is refused).
RENDER_MARKER = ".gitignore"
MARKER_TEXT = (
    "# commstack render: these files hold the freshly generated secrets of one offline render.\n"
    "# Never commit them; render again to review a change.\n"
    "*\n"
)


class RenderError(RuntimeError):
    """A problem the user can fix (the message says how)."""


@dataclass(frozen=True)
class RenderedFile:
    path: Path  # relative to the render directory
    resource: str  # the container's docker name, or the instance's logical name
    secret: bool  # the content came from a secret Output


@dataclass
class RenderResult:
    out: Path
    files: list[RenderedFile]
    resource_count: int
    standins: list[str] = field(default_factory=list)
    evaluation: Optional[offline.Evaluation] = field(default=None, repr=False)

    @property
    def secret_files(self) -> list[RenderedFile]:
        return [f for f in self.files if f.secret]


# -- config -------------------------------------------------------------------------


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """`key=value` pairs; a bare key means `commstack:key`."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RenderError(f"--set {pair!r} is not key=value (e.g. --set registration=token)")
        overrides[key if ":" in key else f"commstack:{key}"] = value
    return overrides


def offline_config(stack: str, config: Optional[dict[str, str]] = None,
                   project_dir: Path = offline.ROOT) -> tuple[dict[str, str], list[str], list[str]]:
    """(config, secret keys, keys given stand-ins) for evaluating `stack` offline.

    Secret-only keys absent from the config (a committed stack file never holds
    them in plaintext) get `offline.OFFLINE_SECRET_STANDINS`, and so does every key the
    stack file holds encrypted.
    """
    from components.settings import CONFIG_KEYS

    encrypted = offline.stack_secure_keys(stack, project_dir)
    config = dict(offline.stack_config(stack, project_dir) if config is None else config)
    # Every secret the stack file holds encrypted gets a stand-in too, so a stack that has
    # had `pulumi config set --secret` run on it (any secret key) still renders.
    wanted = {**{k: f"offline-stand-in-{k.partition(':')[2]}" for k in encrypted}, **offline.OFFLINE_SECRET_STANDINS}
    standins = sorted(k for k in wanted if k not in config)
    config.update({k: wanted[k] for k in standins})
    secret_keys = sorted(k for k, spec in CONFIG_KEYS.items() if spec.secret and k in config)
    return config, secret_keys, standins


def plaintext_secrets(stack: str, config: dict[str, str], project_dir: Path = offline.ROOT) -> set[str]:
    """Secret settings whose value in `config` is the one Pulumi.<stack>.yaml holds in plaintext."""
    from components.settings import CONFIG_KEYS

    try:
        committed = offline.stack_config(stack, project_dir)
    except (FileNotFoundError, ValueError):
        return set()
    return {k for k, v in committed.items() if k in CONFIG_KEYS and CONFIG_KEYS[k].secret and config.get(k) == v}


# -- files from registrations -------------------------------------------------------


def _relative(path: str) -> PurePosixPath:
    relative = PurePosixPath(path.lstrip("/"))
    if not relative.parts or ".." in relative.parts:
        raise RenderError(f"refusing to render the file path {path!r}")
    return relative


def _decode_write_file(entry: dict) -> bytes:
    """A cloud-init write_files entry's content (cloudinit/config/cc_write_files.py encodings)."""
    content = entry.get("content") or ""
    encoding = str(entry.get("encoding") or "text").lower()
    data = content.encode() if isinstance(content, str) else bytes(content)
    if encoding in ("b64", "base64", "gz+b64", "gz+base64", "gzip+b64", "gzip+base64"):
        data = base64.b64decode(data)
    if encoding.startswith(("gz", "gzip")):
        data = gzip.decompress(data)
    return data


def container_files(reg: offline.Registration) -> list[tuple[PurePosixPath, bytes, bool, bool]]:
    """(path, content, secret, executable) for each upload of a docker.Container."""
    files = []
    uploads = reg.inputs.get("uploads") or []
    # One secret Output among the uploads makes the engine mark the whole list secret.
    all_secret = offline.is_secret(uploads)
    for upload in offline.unwrap(uploads) if all_secret else uploads:
        secret = all_secret or bool(offline.secret_paths(upload))
        plain = offline.unwrap(upload)
        if plain.get("contentBase64") is not None:
            data = base64.b64decode(plain["contentBase64"])
        elif plain.get("content") is not None:
            data = plain["content"].encode()
        elif plain.get("source"):
            data = Path(plain["source"]).read_bytes()
        else:
            raise RenderError(f"{reg.name}: upload {plain.get('file')!r} has no content")
        files.append((_relative(plain["file"]), data, secret, bool(plain.get("executable"))))
    return files


def instance_files(reg: offline.Registration) -> list[tuple[PurePosixPath, bytes, bool, bool]]:
    """The instance's user data (decoded from userDataBase64, gunzipped as cloud-init does),
    and each cloud-init write_files entry in it."""
    if reg.inputs.get("userDataBase64") is not None:
        raw = reg.inputs["userDataBase64"]
        data = base64.b64decode(offline.unwrap(raw))
        user_data = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode()
    elif reg.inputs.get("userData") is not None:
        raw = reg.inputs["userData"]
        user_data = offline.unwrap(raw)
    else:
        return []
    secret = offline.is_secret(raw)
    files = [(PurePosixPath("user-data"), user_data.encode(), secret, False)]
    if user_data.startswith("#cloud-config"):
        document = yaml.safe_load(user_data) or {}
        for entry in document.get("write_files") or []:
            mode = int(str(entry.get("permissions") or "0644"), 8)
            files.append((_relative(entry["path"]), _decode_write_file(entry), secret, bool(mode & 0o111)))
    return files


def secret_markers(evaluation: offline.Evaluation, secret_config: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Each generated secret value (a secret provider output that is not an echoed input) and
    each secret config value -> its stable marker; JSON-escaped forms too, for values inside JSON."""
    def leaves(value, path):
        if isinstance(value, dict):
            return [leaf for k, v in sorted(value.items()) for leaf in leaves(v, f"{path}.{k}")]
        if isinstance(value, list):
            return [leaf for i, v in enumerate(value) for leaf in leaves(v, f"{path}[{i}]")]
        return [(value, path)] if isinstance(value, str) and len(value) >= MIN_REDACTED_LENGTH else []

    markers: dict[str, str] = {}
    for key, value in sorted((secret_config or {}).items()):
        for text, _ in leaves(value, key):
            markers.setdefault(text, f"<secret:{key}>")
    for reg in sorted(evaluation.registrations, key=lambda r: r.urn):
        for key, value in sorted(reg.outputs.items()):
            if key not in reg.inputs and offline.is_secret(value):
                for text, path in leaves(offline.unwrap(value), f"{reg.name}.{key}"):
                    markers.setdefault(text, f"<secret:{path}>")
    for text, marker in list(markers.items()):
        markers.setdefault(json.dumps(text)[1:-1], marker)
    return markers


def redact(data: bytes, markers: dict[str, str]) -> bytes:
    """`data` with every marked value replaced, longest first (a value may contain a shorter one)."""
    for text in sorted(markers, key=len, reverse=True):
        data = data.replace(text.encode(), markers[text].encode())
    return data


def _write(path: Path, data: bytes, secret: bool, executable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = (0o700 if executable else 0o600) if secret else (0o755 if executable else 0o644)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # regardless of the umask


def resources_document(evaluation: offline.Evaluation) -> dict:
    """Every registration with its options and inputs; secrets become "[secret]"."""
    return {
        "stack": evaluation.stack,
        "resources": [
            {
                "type": reg.type,
                "name": reg.name,
                "urn": reg.urn,
                "parent": reg.parent,
                "custom": reg.custom,
                "dependencies": sorted(reg.dependencies),
                "protect": bool(reg.protect),
                "retainOnDelete": bool(reg.retain_on_delete),
                "inputs": offline.strip_secrets(reg.inputs),
            }
            for reg in sorted(evaluation.registrations, key=lambda r: r.urn)
        ],
        "stackOutputs": offline.strip_secrets(evaluation.stack_outputs),
    }


def _prepare(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RenderError(f"--out {out} is a file; give a directory (new or empty, or an earlier render)")
    if out.exists() and any(out.iterdir()):
        marker = out / RENDER_MARKER
        if not (marker.is_file() and marker.read_text() == MARKER_TEXT):
            raise RenderError(f"{out} is not empty and is not an earlier render; give an empty or new directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out, 0o700)
    (out / RENDER_MARKER).write_text(MARKER_TEXT)


def write_render(evaluation: offline.Evaluation, out: Path,
                 markers: Optional[dict[str, str]] = None) -> RenderResult:
    """Writes the files and resources.json of a finished evaluation into `out`;
    with `markers` (see `secret_markers`), secret values are written as their markers."""
    out = Path(out)
    _prepare(out)
    rendered: list[RenderedFile] = []
    for reg in evaluation.registrations:
        if reg.type == CONTAINER:
            files = container_files(reg)
            # The stable container name, not the Pulumi resource name (which derives from its component).
            owner = reg.plain_inputs.get("name") or reg.name
        elif reg.type == INSTANCE:
            files = instance_files(reg)
            owner = reg.name
        else:
            continue
        for relative, data, secret, executable in files:
            path = Path(owner, *relative.parts)
            if (out / path).exists():
                raise RenderError(f"{owner} places {relative} twice")
            _write(out / path, redact(data, markers) if markers else data, secret, executable)
            rendered.append(RenderedFile(path, owner, secret))
    document = (json.dumps(resources_document(evaluation), indent=2, sort_keys=True) + "\n").encode()
    (out / RESOURCES_FILE).write_bytes(redact(document, markers) if markers else document)
    return RenderResult(out=out, files=sorted(rendered, key=lambda f: f.path), resource_count=len(evaluation.registrations), evaluation=evaluation)


def render_stack(stack: str, out: Path, config: Optional[dict[str, str]] = None,
                 redacted: bool = False) -> RenderResult:
    """Evaluates `stack` offline (its committed file, or the full `config` map) and writes the render;
    `redacted` makes it reproducible and secret-free (see the module docstring)."""
    config, secret_keys, standins = offline_config(stack, config)
    # A secret the stack file holds in plaintext reaches the program unmarked, as from the engine, so
    # the program warns about it (it is still redacted below).
    plaintext = plaintext_secrets(stack, config)
    evaluation = offline.evaluate(stack, config=config, secret_keys=[k for k in secret_keys if k not in plaintext],
                                  seed=REDACT_SEED if redacted else None)
    markers = None
    if redacted:
        # The checkout's absolute path (e.g. in image build contexts) differs between checkouts.
        markers = {**secret_markers(evaluation, {k: config[k] for k in secret_keys}), str(offline.ROOT): "<project>"}
    result = write_render(evaluation, Path(out), markers)
    result.standins = standins
    return result


# -- CLI ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", required=True, help="stack name (Pulumi.<stack>.yaml)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (it will hold secrets)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (bare keys mean commstack:KEY); repeatable")
    parser.add_argument("--redact", action="store_true",
                        help="for review: fixed stand-in values and <secret:…> markers, so two renders of the "
                             "same code are identical (such a render cannot be deployed)")


def main(args: argparse.Namespace) -> int:
    from components.settings import SettingsError

    try:
        offline.check_stack_name(args.stack)
        config = offline.stack_config(args.stack)
        config.update(parse_overrides(args.set))
        result = render_stack(args.stack, args.out, config, redacted=args.redact)
    except (RenderError, SettingsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the output directory: permissions, a full disk, a path through a file
        print(f"error: cannot write the render into {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if result.standins:
        # Key names only, never values.
        print(f"note: secret-only keys not in Pulumi.{args.stack}.yaml got offline stand-ins: "
              f"{', '.join(result.standins)}", file=sys.stderr)
    containers = {f.resource for f in result.files}
    print(f"rendered stack {args.stack!r} into {result.out}: {len(result.files)} files for "
          f"{len(containers)} containers/instances ({len(result.secret_files)} hold secrets, mode 0600), "
          f"{result.resource_count} resources in {RESOURCES_FILE}")
    if args.redact:
        print(f"note: {result.out} is redacted: secrets are <secret:…> markers; it is for review, not deployment")
    else:
        print(f"note: {result.out} holds this render's generated secrets; do not commit it")
    return 0
