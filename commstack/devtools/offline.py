"""The offline engine: runs the Pulumi program in-process on mocks.

It replaces only the engine boundary (resource monitor and provider
plugins), never the program. Providers whose outputs the program consumes
as data are emulated faithfully, so what comes out is usable:

* `random` resources return fresh random values of the requested shape;
* `tls` resources return real keys and certificates (cryptography);
* lookups (AMI, caller identity, Cloudflare zone) return fixed placeholders;
* every other resource echoes its inputs and adds the ids, names and ARNs
  the cloud would assign.

Like the real engine it honours `additional_secret_outputs`, so a secret
stays secret exactly where it would in a real deployment, and it records
each registration with its options (parent, protect, aliases, …) so tests
and `render` can inspect the whole resource graph.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import random as _random_module
import re
import runpy
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT_ID = "123456789012"
OFFLINE_ZONE_ID = "0123456789abcdef0123456789abcdef"

# Secret-only keys a committed stack file never holds. `render` and `bench`
# fill them with obvious stand-ins when the caller gives none, so a stack
# file can be evaluated without anybody's credentials.
OFFLINE_SECRET_STANDINS = {
    "commstack:cloudflareApiToken": "offline-stand-in-cloudflare-token",
    "commstack:telegramApiHash": "offline-stand-in-telegram-hash",
    "commstack:signalTwilioApiKeySecret": "offline-stand-in-twilio-api-key-secret",
}

# The Parameter Store that getParametersByPath answers from ({name: value}). Empty,
# as before a Signal instance's first boot; a test may fill it to see a later `up`.
SSM_PARAMETERS: dict[str, str] = {}

_SYSRAND = _random_module.SystemRandom()
# With a seed, generated values are fixed per resource and certificates are
# dated at this instant, so two evaluations of the same code are identical.
SEEDED_NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def generator(type_: str, name: str, seed: Optional[str] = None) -> _random_module.Random:
    """System randomness, or with `seed` a generator fixed by (seed, type, name):
    the same resource gets the same values whatever the registration order."""
    return _SYSRAND if seed is None else _random_module.Random(f"{seed}\0{type_}\0{name}")


def _hex(rng: _random_module.Random, nbytes: int) -> str:
    return rng.randbytes(nbytes).hex()


# -- secret markers -----------------------------------------------------------------


def _sig():
    from pulumi.runtime import rpc

    return rpc._special_sig_key, rpc._special_secret_sig


def is_secret(value: Any) -> bool:
    key, sig = _sig()
    return isinstance(value, dict) and value.get(key) == sig


def wrap_secret(value: Any) -> dict:
    key, sig = _sig()
    return {key: sig, "value": value}


def unwrap(value: Any) -> Any:
    """Removes secret markers, recursively."""
    if is_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def secret_paths(value: Any, path: str = "") -> list[str]:
    """Dotted paths of every secret-marked value."""
    if is_secret(value):
        return [path or "."]
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += secret_paths(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += secret_paths(v, f"{path}[{i}]")
    return found


def strip_secrets(value: Any) -> Any:
    """The value with every secret replaced by a marker string."""
    if is_secret(value):
        return "[secret]"
    if isinstance(value, dict):
        return {k: strip_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_secrets(v) for v in value]
    return value


# -- the record of one evaluation ---------------------------------------------------


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    inputs: dict  # secret markers kept
    outputs: dict  # secret markers kept
    protect: Optional[bool]
    retain_on_delete: Optional[bool]
    ignore_changes: list[str]
    replace_on_changes: list[str]
    dependencies: list[str]
    aliases: list[str]
    provider: str
    read: bool = False
    delete_before_replace: Optional[bool] = None
    import_id: str = ""  # the `import_` option: the ID of an existing resource the engine adopts

    @property
    def plain_inputs(self) -> dict:
        return unwrap(self.inputs)

    @property
    def plain_outputs(self) -> dict:
        return unwrap(self.outputs)


@dataclass
class Evaluation:
    stack: str
    registrations: list[Registration] = field(default_factory=list)
    invokes: list[tuple[str, dict]] = field(default_factory=list)
    stack_outputs: dict = field(default_factory=dict)  # secret markers kept

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == type_]

    def named(self, name: str) -> Registration:
        found = [r for r in self.registrations if r.name == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {name!r}")
        return found[0]

    def container(self, name: str) -> Registration:
        """The docker.Container whose docker `name` is `name` (its Pulumi name derives from its component)."""
        found = [r for r in self.of_type("docker:index/container:Container") if unwrap(r.inputs.get("name")) == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} containers named {name!r}")
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.registrations if r.urn == urn)

    def children_of(self, urn: str) -> list[Registration]:
        return [r for r in self.registrations if r.parent == urn]

    def descendants_of(self, urn: str) -> list[Registration]:
        out = []
        for child in self.children_of(urn):
            out.append(child)
            out += self.descendants_of(child.urn)
        return out

    @property
    def plain_stack_outputs(self) -> dict:
        return unwrap(self.stack_outputs)


# -- provider emulation -------------------------------------------------------------


def _random_password(inputs: dict, rng: _random_module.Random = _SYSRAND) -> str:
    length = int(inputs.get("length", 32))
    alphabet = ""
    if inputs.get("upper", True):
        alphabet += string.ascii_uppercase
    if inputs.get("lower", True):
        alphabet += string.ascii_lowercase
    if inputs.get("numeric", True):
        alphabet += string.digits
    if inputs.get("special", True):
        alphabet += inputs.get("overrideSpecial") or "!@#$%&*()-_=+[]{}<>:?"
    return "".join(rng.choice(alphabet) for _ in range(length))


def _openssh_with_check(text: str, check: bytes) -> str:
    """An unencrypted OpenSSH private key with its (otherwise random) check integers set to `check`."""
    lines = text.strip().splitlines()
    blob = bytearray(base64.b64decode("".join(lines[1:-1])))

    def after_string(at: int) -> int:
        return at + 4 + int.from_bytes(blob[at:at + 4], "big")

    offset = len(b"openssh-key-v1\0")
    for _ in range(3):  # cipher name, kdf name, kdf options
        offset = after_string(offset)
    offset = after_string(offset + 4)  # the key count, then the public key
    offset += 4  # the private section's length; the section opens with the two check integers
    blob[offset:offset + 8] = check * 2
    body = base64.b64encode(bytes(blob)).decode()
    width = len(lines[1])
    return "\n".join([lines[0], *(body[i:i + width] for i in range(0, len(body), width)), lines[-1]]) + "\n"


def _private_key(inputs: dict, rng: _random_module.Random = _SYSRAND) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    algorithm = inputs.get("algorithm", "RSA")
    seeded = rng is not _SYSRAND
    if algorithm == "ED25519":
        key = (ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) if seeded
               else ed25519.Ed25519PrivateKey.generate())
    elif algorithm == "ECDSA":
        curve = {"P224": ec.SECP224R1, "P256": ec.SECP256R1, "P384": ec.SECP384R1, "P521": ec.SECP521R1}[
            inputs.get("ecdsaCurve", "P224")
        ]()
        # A scalar one byte shorter than the curve order is always a valid private value.
        key = (ec.derive_private_key(int.from_bytes(rng.randbytes(curve.key_size // 8 - 1), "big") + 1, curve)
               if seeded else ec.generate_private_key(curve))
    else:
        # cryptography cannot derive RSA keys from a seed; the program generates none.
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(inputs.get("rsaBits", 2048)))
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    traditional = pkcs8 if algorithm == "ED25519" else key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key()
    openssh = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    return {
        "privateKeyPem": wrap_secret(traditional.decode()),
        "privateKeyPemPkcs8": wrap_secret(pkcs8.decode()),
        "privateKeyOpenssh": wrap_secret(_openssh_with_check(openssh, rng.randbytes(4)) if seeded else openssh),
        "publicKeyPem": public.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "publicKeyOpenssh": public.public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH).decode() + "\n",
    }


def _self_signed_cert(inputs: dict, rng: _random_module.Random = _SYSRAND) -> dict:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(unwrap(inputs["privateKeyPem"]).encode(), password=None)
    subject_in = (inputs.get("subject") or {})
    common_name = subject_in.get("commonName") or "commstack"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc) if rng is _SYSRAND else SEEDED_NOW
    hours = int(inputs.get("validityPeriodHours", 24))
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(rng.randbytes(19), "big") + 1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=hours))
    )
    dns_names = inputs.get("dnsNames") or []
    ips = inputs.get("ipAddresses") or []
    if dns_names or ips:
        import ipaddress

        sans = [x509.DNSName(d) for d in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=bool(inputs.get("isCaCertificate")), path_length=None),
                                    critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    # Deterministic ECDSA (RFC 6979): the same key and fields give the same certificate.
    cert = builder.sign(key, algorithm, ecdsa_deterministic=True if isinstance(key, ec.EllipticCurvePrivateKey) else None)
    return {
        "certPem": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "validityStartTime": cert.not_valid_before_utc.isoformat(),
        "validityEndTime": cert.not_valid_after_utc.isoformat(),
    }


def _aws_region(inputs: dict) -> str:
    return os.environ.get("COMMSTACK_OFFLINE_AWS_REGION", "eu-central-1")


def emulate_outputs(type_: str, name: str, inputs: dict, seed: Optional[str] = None) -> tuple[str, dict]:
    """What a provider would return for a new resource: (id, state); with `seed`, always the same."""
    rng = generator(type_, name, seed)
    state = dict(inputs)
    rid = f"{name}-id"
    if type_ == "random:index/randomPassword:RandomPassword":
        state["result"] = wrap_secret(_random_password(unwrap(inputs), rng))
    elif type_ == "random:index/randomBytes:RandomBytes":
        raw = rng.randbytes(int(inputs.get("length", 32)))
        state["base64"] = wrap_secret(base64.b64encode(raw).decode())
        state["hex"] = wrap_secret(raw.hex())
    elif type_ == "random:index/randomId:RandomId":
        raw = rng.randbytes(int(inputs.get("byteLength", 8)))
        state.update(hex=raw.hex(), b64Std=base64.b64encode(raw).decode(),
                     b64Url=base64.urlsafe_b64encode(raw).decode().rstrip("="), dec=str(int.from_bytes(raw, "big")))
    elif type_ == "random:index/randomInteger:RandomInteger":
        state["result"] = rng.randint(int(inputs["min"]), int(inputs["max"]))
    elif type_ == "tls:index/privateKey:PrivateKey":
        state.update(_private_key(unwrap(inputs), rng))
    elif type_ == "tls:index/selfSignedCert:SelfSignedCert":
        state.update(_self_signed_cert(inputs, rng))
    elif type_.startswith("docker:"):
        state.setdefault("name", name)
        rid = f"{name}-{_hex(rng, 6)}"
        if type_ == "docker:index/remoteImage:RemoteImage":
            state["imageId"] = f"sha256:{_hex(rng, 32)}"
            state["repoDigest"] = f"{inputs['name'].split(':')[0]}@sha256:{_hex(rng, 32)}"
        elif type_ == "docker:index/image:Image":
            # A local-only build reports its image id as repoDigest (pulumi-docker Image docs).
            state["repoDigest"] = f"sha256:{_hex(rng, 32)}"
    elif type_.startswith("aws:"):
        region = _aws_region(inputs)
        service = type_.split(":")[1].split("/")[0]
        if type_ == "aws:s3/bucketV2:BucketV2" or type_ == "aws:s3/bucket:Bucket":
            bucket = inputs.get("bucket") or f"{inputs.get('bucketPrefix', name)}{_hex(rng, 4)}"
            state.update(bucket=bucket, arn=f"arn:aws:s3:::{bucket}", id=bucket)
            rid = bucket
        elif type_ == "aws:dynamodb/table:Table":
            state["arn"] = f"arn:aws:dynamodb:{region}:{ACCOUNT_ID}:table/{inputs['name']}"
            rid = inputs["name"]
        elif type_ == "aws:iam/role:Role":
            state.setdefault("name", name)
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{state['name']}"
        elif type_ == "aws:iam/user:User":
            state.setdefault("name", name)
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:user{inputs.get('path', '/')}{state['name']}"
            rid = state["name"]
        elif type_ == "aws:iam/accessKey:AccessKey":
            rid = "AKIA" + _hex(rng, 8).upper()
            state["secret"] = wrap_secret(_hex(rng, 20))
        elif type_ == "aws:iam/instanceProfile:InstanceProfile":
            state.setdefault("name", name)
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{state['name']}"
        elif type_ == "aws:ssm/parameter:Parameter":
            param = inputs.get("name", name)
            state["arn"] = f"arn:aws:ssm:{region}:{ACCOUNT_ID}:parameter/{param.lstrip('/')}"
        elif type_ == "aws:ec2/eip:Eip":
            state.update(publicIp="203.0.113.50", allocationId=f"eipalloc-{_hex(rng, 8)}")
        elif type_ == "aws:ec2/instance:Instance":
            rid = f"i-{_hex(rng, 8)}"
            state.update(publicIp="203.0.113.51", privateIp="10.0.0.10")
        elif type_ == "aws:ec2/securityGroup:SecurityGroup":
            rid = f"sg-{_hex(rng, 8)}"
        elif type_ == "aws:kms/key:Key":
            state["arn"] = f"arn:aws:kms:{region}:{ACCOUNT_ID}:key/{_hex(rng, 16)}"
        elif type_.startswith("aws:appconfig/"):
            kind = type_.rsplit(":", 1)[1]
            generated = {"Environment": "environmentId", "ConfigurationProfile": "configurationProfileId",
                         "Application": "id"}.get(kind)
            if generated:
                state.setdefault(generated, _hex(rng, 4))
            if kind == "HostedConfigurationVersion":
                state["versionNumber"] = 1
            state["arn"] = f"arn:aws:appconfig:{region}:{ACCOUNT_ID}:application/{inputs.get('applicationId', rid)}"
        elif type_.startswith("aws:elasticache/"):
            state["configurationEndpointAddress"] = f"{name}.abc123.clustercfg.{region}.cache.amazonaws.com"
            state["arn"] = f"arn:aws:elasticache:{region}:{ACCOUNT_ID}:replicationgroup:{name}"
        state.setdefault("arn", f"arn:aws:{service}:{region}:{ACCOUNT_ID}:{name}")
        state.setdefault("id", rid)
    elif type_.startswith("cloudflare:"):
        rid = _hex(rng, 16)
        if type_ == "cloudflare:index/apiToken:ApiToken":
            state["value"] = wrap_secret(base64.urlsafe_b64encode(rng.randbytes(30)).decode())
    return rid, state


def emulate_invoke(token: str, args: dict) -> dict:
    """Answers data-source lookups with fixed, recognisable placeholders."""
    if token == "aws:ec2/getAmi:getAmi":
        return {"id": "ami-0123456789abcdef0", "architecture": "x86_64", "name": "debian-12-amd64-offline"}
    if token == "aws:index/getCallerIdentity:getCallerIdentity":
        return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/offline", "userId": "OFFLINE"}
    if token == "aws:index/getRegion:getRegion":
        region = os.environ.get("COMMSTACK_OFFLINE_AWS_REGION", "eu-central-1")
        return {"name": region, "region": region, "id": region}
    if token == "aws:index/getPartition:getPartition":
        return {"partition": "aws", "dnsSuffix": "amazonaws.com"}
    if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
        return {"names": ["eu-central-1a", "eu-central-1b"], "zoneIds": ["euc1-az1", "euc1-az2"]}
    if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
        # Every type in both zones, unless a test says otherwise (tests/components/signal/test_host.py).
        wanted = [v for f in args.get("filters") or [] if f.get("name") == "instance-type" for v in f.get("values", [])]
        zones = ["eu-central-1a", "eu-central-1b"]
        return {"id": "offline", "locations": [z for z in zones for _ in wanted], "locationTypes":
                ["availability-zone"] * (len(zones) * len(wanted)),
                "instanceTypes": [t for _ in zones for t in wanted]}
    if token in ("cloudflare:index/getZone:getZone", "cloudflare:index/getZones:getZones"):
        name = (args.get("filter") or {}).get("name") or args.get("name")
        zone = {"id": OFFLINE_ZONE_ID, "zoneId": OFFLINE_ZONE_ID, "name": name, "account": {"id": "offline-account"}}
        return {**zone, "results": [zone]}
    if token == "aws:ssm/getParametersByPath:getParametersByPath":
        path = args["path"].rstrip("/") + "/"
        found = sorted((n, v) for n, v in SSM_PARAMETERS.items() if n.startswith(path)
                       and (args.get("recursive") or "/" not in n[len(path):]))
        return {"id": args["path"], "path": args["path"], "names": [n for n, _ in found],
                # The provider marks `values` sensitive, whatever the parameters' types.
                "values": wrap_secret([v for _, v in found]), "types": ["String"] * len(found),
                "arns": [f"arn:aws:ssm:{_aws_region(args)}:{ACCOUNT_ID}:parameter/{n.lstrip('/')}" for n, _ in found]}
    if token == "cloudflare:index/getApiTokenPermissionGroupsList:getApiTokenPermissionGroupsList":
        return {"results": [{"id": "4755a26eedb94da69e1066d98aa820be", "name": "DNS Write",
                             "scopes": ["com.cloudflare.api.account.zone"]},
                            {"id": "c8fed203ed3043cba015a93ad1616f1f", "name": "Zone Read",
                             "scopes": ["com.cloudflare.api.account.zone"]}]}
    return {}


# -- the monitor --------------------------------------------------------------------


def make_monitor(evaluation: Evaluation, seed: Optional[str] = None):
    """A mock resource monitor that emulates providers and records into `evaluation`
    (with `seed`, generated values are the same in every evaluation)."""
    from pulumi.runtime import mocks, rpc
    from pulumi.runtime.proto import resource_pb2
    from pulumi.runtime.sync_await import _sync_await

    class _Mocks(mocks.Mocks):
        def new_resource(self, args: mocks.MockResourceArgs):
            return emulate_outputs(args.typ, args.name, args.inputs, seed)

        def call(self, args: mocks.MockCallArgs):
            evaluation.invokes.append((args.token, unwrap(args.args)))
            return emulate_invoke(args.token, args.args)

    class RecordingMonitor(mocks.MockMonitor):
        def RegisterResource(self, request):
            urn = self.make_urn(request.parent, request.type, request.name)
            if request.type == "pulumi:pulumi:Stack":
                return resource_pb2.RegisterResourceResponse(urn=urn)
            mocks._ensure_event_loop()
            inputs = rpc.deserialize_properties(request.object)
            rid, state = self.mocks.new_resource(
                mocks.MockResourceArgs(typ=request.type, name=request.name, inputs=inputs,
                                       provider=request.provider, resource_id=request.importId,
                                       custom=request.custom or False)
            )
            # Like the engine: outputs named in additional_secret_outputs become secret.
            for key in request.additionalSecretOutputs:
                if key in state and not is_secret(state[key]):
                    state[key] = wrap_secret(state[key])
            evaluation.registrations.append(
                Registration(
                    type=request.type, name=request.name, urn=urn, parent=request.parent,
                    custom=bool(request.custom), inputs=inputs, outputs=state,
                    protect=request.protect if request.HasField("protect") else None,
                    retain_on_delete=request.retainOnDelete if request.HasField("retainOnDelete") else None,
                    ignore_changes=list(request.ignoreChanges), replace_on_changes=list(request.replaceOnChanges),
                    dependencies=list(request.dependencies),
                    aliases=[a.urn or a.spec.name or a.spec.type for a in request.aliases] + list(request.aliasURNs),
                    provider=request.provider,
                    delete_before_replace=(request.deleteBeforeReplace
                                           if request.deleteBeforeReplaceDefined else None),
                    import_id=request.importId,
                )
            )
            obj = _sync_await(rpc.serialize_properties(state, {}))
            self.resources[urn] = mocks.MockMonitor.ResourceRegistration(urn, rid, state)
            return resource_pb2.RegisterResourceResponse(urn=urn, id=rid, object=obj)

        def RegisterResourceOutputs(self, request):
            if request.urn.endswith(f"pulumi:pulumi:Stack::commstack-{evaluation.stack}"):
                evaluation.stack_outputs.update(rpc.deserialize_properties(request.outputs))
            return super().RegisterResourceOutputs(request)

    return RecordingMonitor(_Mocks())


def _ensure_event_loop() -> None:
    """set_mocks and `@pulumi.runtime.test` use the main thread's current loop. An earlier
    `asyncio.run()` in the same process (a test worker runs many files) leaves none set, and
    `get_event_loop()` then raises instead of making one."""
    import asyncio

    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def install_component_mocks(stack: str = "test") -> Evaluation:
    """Installs the offline engine for `@pulumi.runtime.test` tests of single components."""
    import pulumi
    from pulumi.runtime import settings as runtime_settings

    evaluation = Evaluation(stack=stack)
    monitor = make_monitor(evaluation)
    runtime_settings.ROOT.set(None)
    _ensure_event_loop()
    pulumi.runtime.set_mocks(monitor.mocks, project="commstack", stack=stack, preview=False, monitor=monitor)
    return evaluation


# -- stack files --------------------------------------------------------------------


# What `pulumi stack init` accepts as a stack's own name (and so in Pulumi.<stack>.yaml).
_STACK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}", re.ASCII)


def check_stack_name(stack: str) -> None:
    """Raises ValueError unless `stack` is a plain stack name (no path, no org/project prefix)."""
    if not _STACK_NAME_RE.fullmatch(stack or "") or stack in (".", ".."):
        raise ValueError(f"{stack!r} is not a stack name (letters, digits, '-', '_' and '.'); "
                         f"committed stacks: {', '.join(committed_stacks())}")


def stack_config(stack: str, project_dir: Path = ROOT) -> dict[str, str]:
    """The config of Pulumi.<stack>.yaml as the CLI hands it to the program."""
    check_stack_name(stack)
    path = project_dir / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no stack file {path.name}; committed stacks: {', '.join(committed_stacks(project_dir))}")
    raw = _stack_file_config(path)
    config = {}
    for key, value in raw.items():
        if isinstance(value, dict) and "secure" in value:
            continue  # ciphertext needs the stack's passphrase; tests and render supply their own
        if isinstance(value, (dict, list)):
            # As the CLI hands structured config to a program: JSON text.
            try:
                config[str(key)] = json.dumps(value, separators=(",", ":"), default=str)
            except (RecursionError, ValueError):
                raise ValueError(f"{path.name}: the value of {key} is nested too deeply") from None
        else:
            config[str(key)] = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return config


def _stack_file_config(path: Path) -> dict:
    """The `config:` mapping of a stack file; ValueError for a file that is not one (bad or runaway YAML)."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path.name} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path.name} is nested too deeply to be a stack file") from None
    raw = (document.get("config") if isinstance(document, dict) else None) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: `config:` must be a mapping of keys to values")
    return raw


def stack_secure_keys(stack: str, project_dir: Path = ROOT) -> list[str]:
    """Keys the stack file holds as ciphertext (`pulumi config set --secret`), which offline
    evaluation cannot decrypt and so skips."""
    path = project_dir / f"Pulumi.{stack}.yaml"
    raw = _stack_file_config(path) if path.exists() else {}
    return sorted(k for k, v in raw.items() if isinstance(v, dict) and "secure" in v)


def committed_stacks(project_dir: Path = ROOT) -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml"))


def evaluate(
    stack: str,
    config: Optional[dict[str, str]] = None,
    secret_keys: Optional[list[str]] = None,
    program: Optional[Path] = None,
    preview: bool = False,
    record: Optional[Evaluation] = None,
    seed: Optional[str] = None,
) -> Evaluation:
    """Runs the program once on the offline engine and returns what it registered.

    `config` is the full config map (keys like `commstack:domain`); omit it to
    use the committed stack file. Exceptions raised by the program propagate;
    pass `record` to keep what was registered before one, and `seed` to make
    every generated value (secrets, keys, ids) the same in each evaluation.
    """
    import pulumi
    from pulumi.runtime import mocks, settings as runtime_settings
    from pulumi.runtime.stack import run_in_stack
    from pulumi.runtime.sync_await import _sync_await

    if config is None:
        config = stack_config(stack)
    evaluation = record if record is not None else Evaluation(stack=stack)
    monitor = make_monitor(evaluation, seed)
    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_all_config(dict(config), list(secret_keys or []))
    runtime_settings.configure(
        mocks.MockSettings(
            monitor=monitor,
            monitor_features=set(monitor.GetDeploymentInfo(None).supportedFeatures),
            engine=mocks.MockEngine(logging.getLogger("commstack.devtools.offline")),
            project="commstack",
            stack=stack,
            dry_run=preview,
            organization="organization",
            callbacks=None,
        )
    )
    program = program or ROOT / "__main__.py"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    def run_program():
        runpy.run_path(str(program), run_name="__main__")

    _sync_await(run_in_stack(run_program))
    return evaluation


def secret_flag(output) -> "Any":
    """An Output of whether `output` is marked secret (for `@pulumi.runtime.test` checks)."""
    import asyncio

    import pulumi

    return pulumi.Output.from_input(asyncio.ensure_future(pulumi.Output.from_input(output).is_secret()))


def expect_secret(output, secret: bool = True):
    """An Output that fails a `@pulumi.runtime.test` unless `output`'s secrecy is `secret`."""

    def check(flag: bool) -> None:
        assert flag is secret, f"expected {'a secret' if secret else 'a plain'} output"

    return secret_flag(output).apply(check)
