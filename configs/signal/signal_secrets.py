#!/usr/bin/env python3
"""Signal-Server secrets on the instance: `first-boot` creates what is missing, `assemble` writes files.

first-boot: for every secrets-bundle entry and public value the manifest lists that the store
  does not hold yet, generate it (server jar, openssl) and store it WITHOUT overwriting, so the
  first instance creates them and every later boot or replacement reuses them.
assemble:   writes the secrets bundle (0600), the internal TLS key (0600), config.yml
  (the base file plus the values listed under config_patches) and, when the manifest lists them,
  registration-service's secrets file (0600, owned by that service's unprivileged user).
Stores: `ssm` (Parameter Store in the manifest's region, instance role credentials) or
`dir:<path>` (docker target volume).
Never prints a secret value.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


# Where config_patches sources live in the store: {public: name} -> public/name, and so on.
PATCH_SOURCES = {"public": "public", "secret": "bundle", "program": "config"}


class SsmStore:
    def __init__(self, prefix, region):
        import boto3

        self.prefix = prefix
        # Explicit: nothing on the instance configures a default region for boto3.
        self.ssm = boto3.client("ssm", region_name=region)

    def get(self, name):
        try:
            return self.ssm.get_parameter(Name=f"{self.prefix}/{name}", WithDecryption=True)["Parameter"]["Value"]
        except self.ssm.exceptions.ParameterNotFound:
            return None

    def put_if_absent(self, name, value, secret):
        try:
            self.ssm.put_parameter(Name=f"{self.prefix}/{name}", Value=value, Overwrite=False,
                                   Type="SecureString" if secret else "String")
        except self.ssm.exceptions.ParameterAlreadyExists:
            pass  # another boot won the race; its value stands


class DirStore:
    """Files under a directory, plus the program's generated values (read-only JSON)."""

    def __init__(self, root, program_values):
        self.root = Path(root)
        self.program = json.loads(Path(program_values).read_text()) if program_values else {}

    def get(self, name):
        if name in self.program:
            return self.program[name]
        path = self.root / name
        return path.read_text() if path.exists() else None

    def put_if_absent(self, name, value, secret):
        """Atomic, never overwriting: link a complete temporary file."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(value)
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)


def _run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _fields(text):
    """'Public key : X' lines -> {'Public key': 'X'}"""
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def _java(manifest, *args):
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as empty_bundle:
        empty_bundle.write("{}\n")
        empty_bundle.flush()
        return _run(["java", f"-Dsecrets.bundle.filename={empty_bundle.name}", *args])


def generate(manifest, generator):
    """-> ({bundle key: value}, {public name: value}) for one generator."""
    jar = manifest["jar"]
    if generator == "zkparams":
        out = _fields(_java(manifest, "-jar", jar, "zkparams"))
        return {"zkConfig.serverSecret": out["Private"]}, {"zkServerPublic": out["Public"]}
    if generator == "generic-zkparams":
        out = _fields(_java(manifest, "-cp", jar, manifest["generic_zk_source"]))
        return {"genericZkConfig.serverSecret": out["Private"]}, {"genericZkServerPublic": out["Public"]}
    if generator == "ud-certificate":
        ca = _fields(_java(manifest, "-jar", jar, "certificate", "--ca"))
        cert = _fields(_java(manifest, "-jar", jar, "certificate", "--key", ca["Private key"],
                             "--id", str(manifest["ud_key_id"])))
        # The CA private key is not kept: the server certificate does not expire, and a new CA
        # would change the trust root every client build embeds.
        return ({"unidentifiedDelivery.certificate": cert["Certificate"],
                 "unidentifiedDelivery.privateKey": cert["Private key"]}, {"udTrustRoot": ca["Public key"]})
    if generator == "rsa-pem":
        return {"gcpAttachments.rsaSigningKey": _run(["openssl", "genpkey", "-algorithm", "RSA",
                                                       "-pkeyopt", "rsa_keygen_bits:2048"])}, {}
    if generator == "ec-pem":
        return {"apn.signingKey": _run(["openssl", "genpkey", "-algorithm", "EC",
                                        "-pkeyopt", "ec_paramgen_curve:P-256"])}, {}
    if generator == "gcp-service-account":
        # A well-formed stand-in so the FCM client starts; push stays off until the operator
        # replaces it with a real Firebase service account.
        key = _run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        return {"fcm.credentials": json.dumps({
            "type": "service_account", "project_id": "unset", "private_key_id": "unset", "private_key": key,
            "client_email": "unset@unset.iam.gserviceaccount.com", "client_id": "0",
            "token_uri": "https://oauth2.googleapis.com/token"})}, {}
    raise SystemExit(f"unknown generator {generator}")


def first_boot(manifest, store):
    # Per generator: store its whole set in one step, then publish from it (no mismatched pairs).
    bundle, names = manifest["bundle"], {}
    for key, spec in bundle.items():
        if spec["source"] == "first_boot":
            names.setdefault(spec["generator"], []).append(f"bundle/{key}")
    for name, generator in manifest["public"].items():
        names.setdefault(generator, []).append(f"public/{name}")
    for generator, wanted in sorted(names.items()):
        stored = store.get(f"generated/{generator}")
        if stored is None:
            have = [store.get(n) is not None for n in wanted]
            if all(have):
                continue
            if any(have):
                raise SystemExit(f"first-boot: {generator} is only partly in the store; delete its parameters "
                                 f"({', '.join(wanted)}) to regenerate")
            secrets, public = generate(manifest, generator)
            store.put_if_absent(f"generated/{generator}", json.dumps({"bundle": secrets, "public": public}), True)
            stored = store.get(f"generated/{generator}")  # a racing boot's set wins
            print(f"first-boot: generated {generator}")
        values = json.loads(stored)
        for kind in ("bundle", "public"):
            for key, value in values[kind].items():
                store.put_if_absent(f"{kind}/{key}", value, secret=kind == "bundle")
    for key, spec in bundle.items():
        if spec["source"] == "external" and store.get(f"bundle/{key}") is None:
            store.put_if_absent(f"bundle/{key}", spec["standin"], secret=True)


def _write_private(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _set(config, dotted, value):
    *parents, last = dotted.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = value


def assemble(manifest, store):
    out = manifest["outputs"]
    bundle = {}
    for key, spec in manifest["bundle"].items():
        value = store.get(f"bundle/{key}")
        if value is None:
            raise SystemExit(f"missing secret {key}; run first-boot")
        bundle[key] = [value] if spec.get("list") else value
    _write_private(out["bundle"], yaml.safe_dump(bundle, default_flow_style=False, width=100000))
    _write_private(out["tls_key"], store.get(manifest["tls_key"]) or "")
    config = yaml.safe_load(Path(out["config_in"]).read_text())
    for path, source in manifest["config_patches"].items():
        (kind, name), = source.items()
        # A program value is stored under its config path; the others under the name they give.
        stored = f"{PATCH_SOURCES[kind]}/{path if kind == 'program' else name}"
        value = store.get(stored)
        if value is None:
            raise SystemExit(f"missing {stored} for {path}; run first-boot (or `pulumi up` for program values)")
        _set(config, path, value)
    _write_private(out["config_out"], yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=100000))
    server_user = manifest.get("server_user")
    if server_user:
        # The two files the server reads, and no others: the TLS key stays root's (nginx), the registration
        # secrets their container user's.
        import pwd

        entry = pwd.getpwnam(server_user)
        for path in (out["bundle"], out["config_out"]):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    registration = manifest.get("registration_secrets")
    if registration:
        secrets = {}
        for dotted, stored in registration["values"].items():
            value = store.get(stored)
            if value is None:
                raise SystemExit(f"missing {stored} for registration-service's {dotted}; run `pulumi up`")
            _set(secrets, dotted, value)
        _write_private(registration["path"], yaml.safe_dump(secrets, default_flow_style=False, width=100000))
        # Read by the registration-service container's unprivileged user, and no one else.
        os.chown(registration["path"], registration["owner"], registration["owner"])
    print("assemble: wrote bundle, tls key and config" + (" and registration-service secrets" if registration else ""))


def main(argv):
    command, manifest_path = argv[1], argv[2]
    manifest = json.loads(Path(manifest_path).read_text())
    where = manifest["store"]
    if where == "ssm":
        store = SsmStore(manifest["prefix"], manifest["region"])
    else:
        store = DirStore(where.split(":", 1)[1], manifest.get("program_values"))
    {"first-boot": first_boot, "assemble": assemble}[command](manifest, store)


if __name__ == "__main__":
    main(sys.argv)
