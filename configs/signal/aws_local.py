"""The AWS endpoints Signal-Server v9.81.0 calls, served on the docker target's private network.

Stdlib only; run by a pinned python image (components/signal/local.py). Why this exists:
v9.81.0 builds its AWS clients with no endpoint override and an instance-profile/web-identity
credential chain (WhisperServerService.java l.244-251, util/DynamoDbFromConfig.java,
storage/DynamicConfigurationManager.java), and its SDKs (Java v2 2.19.8, v1 1.12.376) predate
the AWS_ENDPOINT_URL_* variables (Java v2 reads them from 2.28.1, v1 never). Both SDKs do honour
AWS_EC2_METADATA_SERVICE_ENDPOINT and the JVM trust store, so:

- plain HTTP: an instance-metadata service (IMDSv2 token, then the role's credentials);
- HTTPS, on the AWS hostnames the container's network aliases resolve here, with a certificate
  the server's JVM trusts: DynamoDB JSON requests are passed to DynamoDB Local unchanged, and
  AppConfigData's StartConfigurationSession/GetLatestConfiguration serve the dynamic config.

The credentials are fixed stand-ins: nothing behind this service checks a signature.
"""

from __future__ import annotations

import argparse
import datetime
import json
import secrets
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOKEN_TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "x-aws-ec2-metadata-token"
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
DYNAMODB_TARGET_PREFIX = "DynamoDB_20120810."
STAND_IN_CREDENTIALS = {"AccessKeyId": "ASIALOCALSTUB0000000", "SecretAccessKey": "local-stand-in-checked-by-nobody",
                        "Token": "local-stand-in"}
POLL_INTERVAL_SECONDS = "60"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the SDKs keep connections alive; every reply carries Content-Length
    options: argparse.Namespace

    def _reply(self, status: int, body: bytes = b"", content_type: str = "application/json",
               headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._reply(status, json.dumps({"Message": message}).encode(), headers={"x-amzn-ErrorType": kind})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature fixed by http.server
        # Only method, path and status: headers carry the (stand-in) signatures.
        print(f"{self.address_string()} {format % args}", flush=True)


class MetadataHandler(_Handler):
    """IMDSv2 as the SDKs' InstanceProfileCredentialsProvider walk it."""

    tokens: set[str]

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token":
            return self._reply(404, b"", "text/plain")
        if not self.headers.get(TOKEN_TTL_HEADER, "").isdigit():
            return self._reply(400, b"", "text/plain")  # as EC2 does without a TTL
        token = secrets.token_urlsafe(32)
        self.tokens.add(token)
        self._reply(200, token.encode(), "text/plain", {TOKEN_TTL_HEADER: self.headers[TOKEN_TTL_HEADER]})

    def do_GET(self) -> None:
        token = self.headers.get(TOKEN_HEADER)
        if token is not None and token not in self.tokens:
            return self._reply(401, b"", "text/plain")
        role = self.options.role
        if self.path == CREDENTIALS_PATH:
            return self._reply(200, role.encode(), "text/plain")
        if self.path == CREDENTIALS_PATH + role:
            now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
            document = {"Code": "Success", "Type": "AWS-HMAC", "LastUpdated": now.isoformat().replace("+00:00", "Z"),
                        "Expiration": (now + datetime.timedelta(hours=6)).isoformat().replace("+00:00", "Z"),
                        **STAND_IN_CREDENTIALS}
            return self._reply(200, json.dumps(document).encode())
        self._reply(404, b"", "text/plain")


class ServiceHandler(_Handler):
    """DynamoDB (proxied to DynamoDB Local) and AppConfigData, by request shape, not hostname."""

    def do_POST(self) -> None:
        body = self._body()
        if self.headers.get("X-Amz-Target", "").startswith(DYNAMODB_TARGET_PREFIX):
            return self._proxy_dynamodb(body)
        if self.path == "/configurationsessions":
            return self._start_session(body)
        self._error(404, "UnknownOperationException", f"not served locally: POST {self.path}")

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/configuration":
            token = urllib.parse.parse_qs(url.query).get("configuration_token", [""])[0]
            return self._latest_configuration(token)
        self._error(404, "UnknownOperationException", f"not served locally: GET {url.path}")

    def _proxy_dynamodb(self, body: bytes) -> None:
        # Forwarded byte for byte: the SDK checks the response's x-amz-crc32 against the body.
        keep = ("Content-Type", "X-Amz-Target", "Authorization", "X-Amz-Date", "X-Amz-Security-Token")
        request = urllib.request.Request(self.options.dynamodb + "/", data=body, method="POST",
                                         headers={h: self.headers[h] for h in keep if h in self.headers})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, headers, payload = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:  # DynamoDB's own 4xx/5xx, passed through
            status, headers, payload = error.code, error.headers, error.read()
        passed = {h: headers[h] for h in ("x-amz-crc32", "x-amzn-RequestId") if headers.get(h)}
        self._reply(status, payload, headers.get("Content-Type", "application/x-amz-json-1.0"), passed)

    def _start_session(self, body: bytes) -> None:
        request = json.loads(body or b"{}")
        wanted = (self.options.application, self.options.environment, self.options.profile)
        asked = (request.get("ApplicationIdentifier"), request.get("EnvironmentIdentifier"),
                 request.get("ConfigurationProfileIdentifier"))
        if asked != wanted:
            return self._error(404, "ResourceNotFoundException", f"no configuration {'/'.join(map(str, asked))}")
        self._reply(201, json.dumps({"InitialConfigurationToken": "initial-" + secrets.token_urlsafe(16)}).encode())

    def _latest_configuration(self, token: str) -> None:
        if not token.startswith(("initial-", "next-")):
            return self._error(400, "BadRequestException", "invalid configuration token")
        # Like AppConfig: the document on the session's first poll, empty while it is unchanged.
        content = Path(self.options.document).read_bytes() if token.startswith("initial-") else b""
        self._reply(200, content, "application/x-yaml", {
            "Next-Poll-Configuration-Token": "next-" + secrets.token_urlsafe(16),
            "Next-Poll-Interval-In-Seconds": POLL_INTERVAL_SECONDS})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--metadata-port", type=int, default=80)
    parser.add_argument("--https-port", type=int, default=443)
    parser.add_argument("--cert", required=True, help="PEM certificate for the AWS hostnames")
    parser.add_argument("--key", required=True, help="PEM private key of --cert")
    parser.add_argument("--role", required=True, help="instance role name the metadata service reports")
    parser.add_argument("--dynamodb", required=True, help="DynamoDB Local base URL, e.g. http://dynamodb:8000")
    parser.add_argument("--application", required=True)
    parser.add_argument("--environment", required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--document", required=True, help="the dynamic configuration (YAML) AppConfig serves")
    return parser.parse_args(argv)


def serve(options: argparse.Namespace) -> list[ThreadingHTTPServer]:
    """Starts both listeners in daemon threads and returns them (tests stop them with shutdown())."""
    metadata_handler = type("Metadata", (MetadataHandler,), {"options": options, "tokens": set()})
    service_handler = type("Service", (ServiceHandler,), {"options": options})
    metadata = ThreadingHTTPServer((options.bind, options.metadata_port), metadata_handler)
    services = ThreadingHTTPServer((options.bind, options.https_port), service_handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(options.cert, options.key)
    services.socket = context.wrap_socket(services.socket, server_side=True)
    for server in (metadata, services):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return [metadata, services]


if __name__ == "__main__":
    servers = serve(parse_args())
    print(f"aws-local: metadata on :{servers[0].server_port}, services on :{servers[1].server_port}", flush=True)
    threading.Event().wait()
