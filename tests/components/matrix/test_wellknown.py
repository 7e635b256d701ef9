"""nginx for delegation: the well-known documents, the rendered server block, the component."""

import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pulumi
import pytest

from components.matrix.wellknown import (CONF_PATH, PRIVATE_PROXY_RANGES, WellKnown, WellKnownArgs, render_nginx_conf,
                                         well_known_client, well_known_server)

CONTAINER_TYPE = "docker:index/container:Container"


def tokenize(text: str):
    tokens, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif c in "{};":
            tokens.append(c)
            i += 1
        elif c in "'\"":
            j, buf = i + 1, []
            while text[j] != c:
                if text[j] == "\\":
                    j += 1
                buf.append(text[j])
                j += 1
            tokens.append("".join(buf))
            i = j + 1
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in "{};":
                j += 1
            tokens.append(text[i:j])
            i = j
    return tokens


def parse_nginx(text: str) -> list:
    """nginx config as nested [name, args, children-or-None] lists."""
    tokens = tokenize(text)
    pos = 0

    def block():
        nonlocal pos
        items = []
        while pos < len(tokens) and tokens[pos] != "}":
            words = []
            while tokens[pos] not in ("{", ";"):
                words.append(tokens[pos])
                pos += 1
            if tokens[pos] == ";":
                pos += 1
                items.append([words[0], words[1:], None])
            else:
                pos += 1
                children = block()
                assert tokens[pos] == "}"
                pos += 1
                items.append([words[0], words[1:], children])
        return items

    tree = block()
    assert pos == len(tokens), "unbalanced braces"
    return tree


def find(items, name, args=None):
    return [i for i in items if i[0] == name and (args is None or i[1] == args)]


def directives(items):
    return {name: args for name, args, children in items if children is None}


def rendered(**overrides):
    kwargs = dict(server_name="example.org", matrix_host="matrix.example.org",
                  server_json=well_known_server("matrix.example.org", 443),
                  client_json=well_known_client("https://matrix.example.org/"),
                  synapse_upstream="http://synapse:8008")
    return render_nginx_conf(**{**kwargs, **overrides})


def test_documents_follow_the_spec():
    assert well_known_server("matrix.example.org", 8448) == {"m.server": "matrix.example.org:8448"}
    assert well_known_client("https://matrix.example.org/") == {
        "m.homeserver": {"base_url": "https://matrix.example.org/"}}


def test_server_block_serves_both_documents_as_json_with_cors():
    tree = parse_nginx(rendered())
    server, = find(tree, "server")
    body = server[2]
    top = directives(body)
    assert top["listen"] == ["80", "default_server"]
    assert top["server_name"] == ["example.org", "matrix.example.org"]
    wellknown, = find(body, "location", ["/.well-known/matrix/"])
    headers = {args[0]: args[1:] for name, args, _ in wellknown[2] if name == "add_header"}
    assert headers["Access-Control-Allow-Origin"] == ["*", "always"]
    assert "OPTIONS" in headers["Access-Control-Allow-Methods"][0]
    assert directives(wellknown[2])["default_type"] == ["application/json"]
    served = {}
    for path in ("server", "client"):
        location, = find(wellknown[2], "location", ["=", f"/.well-known/matrix/{path}"])
        options, = find(location[2], "if", ["($request_method", "=", "OPTIONS)"])
        assert directives(options[2])["return"] == ["204"]
        status, body_text = directives(location[2])["return"]
        assert status == "200"
        served[path] = json.loads(body_text)
    assert served == {"server": {"m.server": "matrix.example.org:443"},
                      "client": {"m.homeserver": {"base_url": "https://matrix.example.org/"}}}


def test_without_federation_no_delegation_is_advertised(dev_evaluation):
    wellknown, = find(find(parse_nginx(rendered(server_json=None)), "server")[0][2], "location", ["/.well-known/matrix/"])
    location, = find(wellknown[2], "location", ["=", "/.well-known/matrix/server"])
    assert directives(location[2])["return"] == ["404"]
    # The program: commstack:federation false (whatever federationPort says) renders that 404.
    from tests.conftest import evaluate

    def server_return(evaluation):
        conf = evaluation.container("wellknown").plain_inputs["uploads"][0]["content"]
        tree = find(find(parse_nginx(conf), "server")[0][2], "location", ["/.well-known/matrix/"])[0][2]
        return directives(find(tree, "location", ["=", "/.well-known/matrix/server"])[0][2])["return"]

    assert server_return(evaluate("dev", federation="false", federationPort="8448")) == ["404"]
    assert server_return(dev_evaluation)[0] == "200"


def test_client_and_federation_api_are_proxied_with_forwarded_headers():
    body = find(parse_nginx(rendered(max_body_size="100M")), "server")[0][2]
    api, = find(body, "location", ["~", "^(/_matrix|/_synapse/client)"])
    settings = api[2]
    assert directives(settings)["set"] == ["$synapse_upstream", "http://synapse:8008"]
    assert directives(settings)["proxy_pass"] == ["$synapse_upstream"]
    headers = {args[0]: args[1] for name, args, _ in settings if name == "proxy_set_header"}
    # One address: the client nginx's realip module found (Synapse believes the leftmost).
    assert headers["X-Forwarded-For"] == "$remote_addr"
    assert headers["X-Forwarded-Proto"] == "$matrix_forwarded_proto"
    assert headers["Host"] == "$host"
    assert directives(settings)["client_max_body_size"] == ["100M"]
    # Admin API and everything else stays closed.
    fallback, = find(body, "location", ["/"])
    assert directives(fallback[2])["return"] == ["404"]


def test_only_traefiks_network_and_given_proxies_are_believed():
    body = find(parse_nginx(rendered(trusted_proxies=[*PRIVATE_PROXY_RANGES, "173.245.48.0/20"])), "server")[0][2]
    assert [args for name, args, _ in body if name == "set_real_ip_from"] == [
        ["10.0.0.0/8"], ["172.16.0.0/12"], ["192.168.0.0/16"], ["173.245.48.0/20"]]
    assert directives(body)["real_ip_header"] == ["X-Forwarded-For"]
    assert directives(body)["real_ip_recursive"] == ["on"]
    default_body = find(parse_nginx(rendered()), "server")[0][2]
    assert [args[0] for name, args, _ in default_body if name == "set_real_ip_from"] == list(PRIVATE_PROXY_RANGES)


@pytest.mark.parametrize("bad", [
    dict(synapse_upstream="http://synapse:8008/"),  # a path would make nginx rewrite URIs
    dict(synapse_upstream="synapse:8008"),
    dict(max_body_size="50 MB"),
    dict(trusted_proxies=["traefik"]),
    dict(trusted_proxies=[]),
    dict(client_json={"m.homeserver": {"base_url": "https://$host/"}}),
])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError):
        rendered(**bad)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_real_nginx_accepts_the_conf(tmp_path: Path):
    (tmp_path / "matrix.conf").write_text(rendered(listen="127.0.0.1:18081"))
    temp = " ".join(f"{k}_temp_path {tmp_path / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\nerror_log stderr;\nevents {{}}\n"
        f"http {{ access_log off; {temp} include {tmp_path / 'matrix.conf'}; }}\n")
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_real_nginx_hands_synapse_the_client_address_not_a_spoofed_one(tmp_path: Path):
    class Echo(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # answers with the X-Forwarded-For Synapse would see
            body = (self.headers.get("X-Forwarded-For") or "").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    upstream = http.server.HTTPServer(("127.0.0.1", free_port()), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    # 127.0.0.1 plays Traefik (a trusted hop); 173.245.48.0/20 is a Cloudflare range.
    conf = rendered(listen=f"127.0.0.1:{port}", synapse_upstream=f"http://127.0.0.1:{upstream.server_port}",
                    trusted_proxies=["127.0.0.1/32", "173.245.48.0/20"])
    (tmp_path / "matrix.conf").write_text(conf.replace("resolver 127.0.0.11 valid=30s ipv6=off;", ""))
    temp = " ".join(f"{k}_temp_path {tmp_path / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path / 'nginx.pid'};\nerror_log stderr;\nevents {{}}\n"
        f"http {{ access_log off; {temp} include {tmp_path / 'matrix.conf'}; }}\n")
    nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
                             stderr=subprocess.PIPE)
    try:
        def seen(forwarded_for: str) -> str:
            url = f"http://127.0.0.1:{port}/_matrix/client/versions"
            for _ in range(50):
                try:
                    request = urllib.request.Request(url, headers={"X-Forwarded-For": forwarded_for})
                    return urllib.request.urlopen(request, timeout=2).read().decode()
                except (ConnectionError, urllib.error.URLError):
                    time.sleep(0.1)
            raise AssertionError(nginx.stderr.read().decode() if nginx.poll() is not None else "nginx did not answer")

        # The client put 6.6.6.6 first; Cloudflare appended the real client, Traefik appended Cloudflare.
        assert seen("6.6.6.6, 198.51.100.23, 173.245.48.5") == "198.51.100.23"
        assert seen("198.51.100.23") == "198.51.100.23"
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        upstream.shutdown()


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_real_nginx_logs_no_query_string_or_token(tmp_path: Path):
    """What every call join sends (lk-jwt-service's OpenID check), an access token in the query and a
    registration token check, through the real nginx: its access log names each path and status, and
    neither log holds a token, not even the error entry of an upstream that is down."""
    port, closed = free_port(), free_port()
    conf = rendered(listen=f"127.0.0.1:{port}", synapse_upstream=f"http://127.0.0.1:{closed}",
                    trusted_proxies=["127.0.0.1/32"])
    (tmp_path / "matrix.conf").write_text(conf.replace("resolver 127.0.0.11 valid=30s ipv6=off;", ""))
    temp = " ".join(f"{k}_temp_path {tmp_path / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path / 'nginx.pid'};\nerror_log stderr info;\nevents {{}}\n"
        f"http {{ {temp} include {tmp_path / 'matrix.conf'}; }}\n")
    tokens = [f"secret{n}{os.urandom(8).hex()}" for n in range(3)]
    paths = [f"/_matrix/federation/v1/openid/userinfo?access_token={tokens[0]}",
             f"/_matrix/client/v3/sync?since=s1&access_token={tokens[1]}",
             f"/_matrix/client/v1/register/m.login.registration_token/validity?token={tokens[2]}"]
    with open(tmp_path / "out.log", "wb") as out, open(tmp_path / "err.log", "wb") as err:
        nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
                                 stdout=out, stderr=err)
    try:
        statuses = []
        for path in paths:
            for _ in range(50):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2)
                except urllib.error.HTTPError as error:  # Synapse is down: 502 from nginx
                    statuses.append(error.code)
                    break
                except (ConnectionError, urllib.error.URLError):
                    time.sleep(0.1)
        assert statuses == [502, 502, 502]
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
    logs = (tmp_path / "out.log").read_text() + (tmp_path / "err.log").read_text()
    assert "GET /_matrix/federation/v1/openid/userinfo HTTP/1.1\" 502" in logs, logs
    assert "/_matrix/client/v1/register/m.login.registration_token/validity HTTP/1.1\" 502" in logs
    assert not [token for token in tokens if token in logs], logs


@pulumi.runtime.test
def test_component_uploads_the_conf_to_conf_d(recorded):
    wellknown = WellKnown("wellknown", WellKnownArgs(
        network="matrix-net", server_name="example.org", matrix_host="matrix.example.org",
        public_baseurl="https://matrix.example.org/", federation_port=443))

    def check(_):
        container, = recorded.of_type(CONTAINER_TYPE)
        inputs = container.plain_inputs
        assert inputs["name"] == "wellknown"
        assert inputs["networksAdvanced"][0]["aliases"] == ["wellknown"]
        assert inputs.get("ports", []) == []  # reached only through the proxy
        upload, = inputs["uploads"]
        assert upload["file"] == CONF_PATH
        assert upload["content"] == rendered()
        assert inputs["healthcheck"]["tests"][0] == "CMD"

    return pulumi.Output.from_input(wellknown.container.id).apply(check)
