"""Server secrets: what the program can generate it generates; the rest is made once on first boot.

Layout under the parameter prefix (e.g. /commstack/prod/signal):
  bundle/<secrets-bundle key>   SecureString; `program` entries are Pulumi resources (protected),
                                `first_boot`/`external` entries are written by the instance only if absent
  config/<config path>          SecureString; config values the program generates (Pulumi resources, protected)
  public/<name>                 String; UD trust root and zk public params, written on first boot
  generated/<generator>         SecureString; first boot's whole set from one generator (e.g. the UD
                                certificate, its key and trust root), written in one step before any of
                                it is published to bundle/ and public/, so a crash never pairs an old
                                value with a new one
  tls/registration-key          SecureString; private key of the internal TLS certificate (registration gRPC)

pulumi_aws is imported only where an SSM parameter is made: the docker target never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_tls as tls

from components.common import child, generated_bytes_b64, stateful_child
from components.signal.version import ServerVersion

TLS_KEY_PARAMETER = "tls/registration-key"


def bundle_parameter(prefix: str, key: str) -> str:
    return f"{prefix}/bundle/{key}"


def config_parameter(prefix: str, path: str) -> str:
    return f"{prefix}/config/{path}"


def public_path(prefix: str) -> str:
    return f"{prefix}/public"


def public_parameter(prefix: str, name: str) -> str:
    return f"{public_path(prefix)}/{name}"


def generated_set_parameter(prefix: str, generator: str) -> str:
    return f"{prefix}/generated/{generator}"


def first_boot_generators(version: ServerVersion) -> list[str]:
    return sorted({e.generator for e in version.bundle if e.source == "first_boot"}
                  | {spec["generator"] for spec in version.public_values.values()})


def first_boot_parameters(version: ServerVersion, prefix: str) -> list[str]:
    """Every parameter the instance itself writes (and so may create, never overwrite)."""
    written = [bundle_parameter(prefix, e.key) for e in version.bundle if e.source in ("first_boot", "external")]
    return (written + [public_parameter(prefix, name) for name in version.public_values]
            + [generated_set_parameter(prefix, g) for g in first_boot_generators(version)])


def parameter_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:ssm:{region}:{account}:parameter/{name.lstrip('/')}"


@dataclass
class InternalTlsArgs:
    dns_names: Sequence[str]


class InternalTls(pulumi.ComponentResource):
    """A self-signed certificate Signal-Server trusts exactly: registration-service's, and on the
    docker target aws-local's (the AWS hostnames it answers for)."""

    cert_pem: pulumi.Output
    private_key_pem: pulumi.Output  # secret

    def __init__(self, name: str, args: InternalTlsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:signal:InternalTls", name, None, opts)
        key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child(self))
        cert = tls.SelfSignedCert(
            f"{name}-cert", private_key_pem=key.private_key_pem, dns_names=list(args.dns_names),
            subject=tls.SelfSignedCertSubjectArgs(common_name=args.dns_names[0]),
            validity_period_hours=24 * 365 * 5, early_renewal_hours=24 * 30,
            allowed_uses=["digital_signature", "key_encipherment", "server_auth", "cert_signing"],
            is_ca_certificate=True, opts=child(self))
        self.cert_pem = cert.cert_pem
        self.private_key_pem = pulumi.Output.secret(key.private_key_pem_pkcs8)
        self.register_outputs({"cert_pem": self.cert_pem})


@dataclass
class ServerSecretsArgs:
    version: ServerVersion
    tls_key_pem: pulumi.Input[str]
    parameter_prefix: Optional[str] = None  # None: no SSM (docker target keeps values in the Pulumi state only)
    # Operator-given secrets the instance reads too (name under the prefix -> secret), e.g. the Twilio API key secret.
    operator_secrets: Optional[dict[str, pulumi.Input[str]]] = None


class ServerSecrets(pulumi.ComponentResource):
    """Random shared secrets (RandomBytes, base64) and, on AWS, their SSM SecureString parameters."""

    values: dict[str, pulumi.Output]  # bundle key -> secret Output
    config_values: dict[str, pulumi.Output]  # config path -> secret Output (config_patches with `program`)
    parameters: list[pulumi.CustomResource]  # aws.ssm.Parameter

    def __init__(self, name: str, args: ServerSecretsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:signal:ServerSecrets", name, None, opts)
        self.values = {}
        self.config_values = {}
        self.parameters = []
        for entry in args.version.bundle_from("program"):
            slug = entry.key.replace(".", "-").lower()
            # Protected: a new value would log out every client (tokens) or break shared-secret peers.
            self.values[entry.key] = generated_bytes_b64(f"{name}-{slug}", self, length=entry.bytes, protect=True)
        for path, length in args.version.program_config_values.items():
            slug = path.replace(".", "-").lower()
            # Protected: a new generator would no longer recognise the receipts already issued.
            self.config_values[path] = generated_bytes_b64(f"{name}-{slug}", self, length=length, protect=True)
        if args.parameter_prefix:
            import pulumi_aws as aws

            prefix = args.parameter_prefix
            named = {bundle_parameter(prefix, k): v for k, v in self.values.items()}
            named.update({config_parameter(prefix, path): v for path, v in self.config_values.items()})
            named[f"{prefix}/{TLS_KEY_PARAMETER}"] = pulumi.Output.secret(args.tls_key_pem)
            for suffix, value in (args.operator_secrets or {}).items():
                named[f"{prefix}/{suffix}"] = pulumi.Output.secret(value)
            for param_name, value in named.items():
                slug = param_name[len(prefix) + 1:].replace("/", "-").replace(".", "-").lower()
                self.parameters.append(aws.ssm.Parameter(
                    f"{name}-{slug}", name=param_name, type="SecureString", value=value,
                    opts=stateful_child(self, additional_secret_outputs=["value"])))
        self.register_outputs({"parameter_names": [p.name for p in self.parameters]})
