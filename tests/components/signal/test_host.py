"""The EC2 host: user data within EC2's limit (gzip + base64), certbot that retries, an AMI that
does not replace the server, and the region for every AWS client on the instance."""

import base64
import gzip
import os
import re
import shutil
import json
import subprocess

import pulumi
import pytest
import yaml

from commstack.devtools import offline, render
from components.signal.host import (CERTBOT_RETRY_SECONDS, PATHS, USER_DATA_LIMIT, SignalHost, SignalHostArgs,
                                    encode_user_data, render_nginx_conf)
from components.signal.registration import TwilioVerify, Verification
from components.signal.version import load_version
from tests.conftest import write_self_signed_pair
from tests.components.signal.conftest import jar_build, user_data, user_data_text, written_file

VERSION = load_version("v9.81.0")
TWILIO = Verification(twilio=TwilioVerify("AC" + "1" * 32, "SK" + "2" * 32, "VA" + "3" * 32, "AbCdEfGhIjK"))


def _unit(text: str) -> dict[str, list[str]]:
    """systemd unit lines key=value -> {key: [values]} (keys may repeat)."""
    entries: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            entries.setdefault(key, []).append(value)
    return entries


@pulumi.runtime.test
def test_instance_gets_the_gzipped_cloud_config_within_the_limit(recorded):
    host = SignalHost("h", SignalHostArgs(
        version=VERSION, instance_type="t3.large", server_repo="https://github.com/signalapp/Signal-Server",
        server_ref="v9.81.0", jar_s3_uri="", host="chat.example.org", acme_email="ops@example.org",
        region="eu-central-1", parameter_prefix="/commstack/test/signal", security_group_id="sg-1",
        instance_profile_name="profile", config_yml="logging: {}\n", tls_cert_pem="CERT", redis_in_containers=True,
        verification=TWILIO))

    def check(args):
        cloud_config, encoded, _ = args
        instance, = recorded.of_type("aws:ec2/instance:Instance")
        assert "userData" not in instance.inputs
        assert instance.plain_inputs["userDataBase64"] == encoded
        packed = base64.b64decode(encoded)
        assert packed[:2] == b"\x1f\x8b"  # gzip, which cloud-init unpacks
        assert gzip.decompress(packed).decode() == cloud_config
        assert len(encoded) <= USER_DATA_LIMIT and len(packed) <= USER_DATA_LIMIT
        assert cloud_config.startswith("#cloud-config\n") and yaml.safe_load(cloud_config)["write_files"]
        assert instance.ignore_changes == ["ami"]
        assert instance.plain_inputs["userDataReplaceOnChange"] is True

    return pulumi.Output.all(host.user_data, host.user_data_base64, host.instance.id).apply(check)


def test_whole_program_user_data_fits_and_is_stable(prod_signal):
    encoded = prod_signal.of_type("aws:ec2/instance:Instance")[0].plain_inputs["userDataBase64"]
    text = user_data_text(prod_signal)
    # EC2's limit is on the user data before base64 (host.py USER_DATA_LIMIT), here the gzip stream.
    assert len(base64.b64decode(encoded)) <= USER_DATA_LIMIT
    # The same cloud-config always encodes the same way, so it never replaces the instance by itself.
    assert encode_user_data(text) == encoded


def test_user_data_over_the_limit_fails_before_any_deployment():
    incompressible = os.urandom(USER_DATA_LIMIT).hex()
    with pytest.raises(ValueError, match="EC2 allows 16384"):
        encode_user_data(incompressible)


def test_render_writes_the_decoded_user_data_and_every_file_in_it(prod_signal):
    instance = prod_signal.of_type("aws:ec2/instance:Instance")[0]
    files = {str(path): data for path, data, _, _ in render.instance_files(instance)}
    assert files["user-data"].decode() == user_data_text(prod_signal)
    written = user_data(prod_signal)["write_files"]
    assert {entry["path"].lstrip("/") for entry in written} | {"user-data"} == set(files)
    assert files["etc/signal/config.base.yml"].decode() == written_file(prod_signal, "/etc/signal/config.base.yml")


def test_certbot_retries_until_it_has_a_certificate_then_starts_nginx(prod_signal):
    unit = _unit(written_file(prod_signal, "/etc/systemd/system/signal-certbot.service"))
    assert unit["Type"] == ["oneshot"] and unit["Restart"] == ["on-failure"]
    assert unit["RestartSec"] == [str(CERTBOT_RETRY_SECONDS)] and unit["StartLimitIntervalSec"] == ["0"]
    start = unit["ExecStart"][0]
    assert start.startswith('/bin/sh -c "test -f /etc/letsencrypt/live/chat.example.org/fullchain.pem || certbot')
    assert "certonly --standalone --non-interactive --agree-tos" in start and "-d chat.example.org" in start
    assert unit["ExecStartPost"] == ["/bin/systemctl restart nginx"]
    # Five failed validations an hour per hostname is Let's Encrypt's limit.
    assert 3600 // CERTBOT_RETRY_SECONDS < 5
    runcmd = user_data(prod_signal)["runcmd"]
    assert "systemctl enable --now --no-block signal-certbot.service" in runcmd
    assert not [c for c in runcmd if "certbot certonly" in str(c)]


def test_every_unit_that_talks_to_aws_is_given_the_region(prod_signal):
    for path in ("/etc/systemd/system/signal-server.service", "/etc/systemd/system/signal-redis.service"):
        unit = _unit(written_file(prod_signal, path))
        assert unit["Environment"] == ['"AWS_DEFAULT_REGION=eu-central-1"'], path
        assert any("signal_secrets.py" in command for command in unit["ExecStartPre"]), path


def test_user_data_holds_no_secret(prod_signal):
    instance = prod_signal.of_type("aws:ec2/instance:Instance")[0]
    assert offline.secret_paths(instance.inputs) == []
    text = user_data_text(prod_signal)
    generated = [r.plain_outputs["base64"] for r in prod_signal.of_type("random:index/randomBytes:RandomBytes")]
    generated += [r.plain_outputs["privateKeyPemPkcs8"] for r in prod_signal.of_type("tls:index/privateKey:PrivateKey")]
    assert generated and not [value for value in generated if value in text]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_rendered_config(tmp_path):
    write_self_signed_pair(tmp_path)
    conf = render_nginx_conf("chat.example.org", 8080, 50051, 442)
    for placed, local in ((PATHS["tls_cert"], "cert.pem"), (PATHS["tls_key"], "key.pem"),
                          ("/etc/letsencrypt/live/chat.example.org/fullchain.pem", "cert.pem"),
                          ("/etc/letsencrypt/live/chat.example.org/privkey.pem", "key.pem")):
        assert placed in conf
        conf = conf.replace(placed, str(tmp_path / local))
    (tmp_path / "signal.conf").write_text(conf)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    include {tmp_path}/signal.conf;\n}}\n")
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def cloud_init_schema(path) -> subprocess.CompletedProcess:
    binary = shutil.which("cloud-init")
    assert binary, "cloud-init is missing: apt-get install --no-install-recommends cloud-init (scripts/test does)"
    return subprocess.run([binary, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("jar", ["", "s3://builds/TextSecureServer-9.81.0.jar"], ids=["build", "prebuilt-jar"])
def test_cloud_init_accepts_the_rendered_user_data(tmp_path, jar):
    """Debian's cloud-init validates the exact cloud-config the instance boots with (after gunzip)."""
    from tests.conftest import evaluate

    evaluation = evaluate("prod", signalJarS3Uri=jar) if jar else evaluate("prod")
    path = tmp_path / "user-data"
    path.write_text(user_data_text(evaluation))
    checked = cloud_init_schema(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Valid cloud-config" in checked.stdout


def test_cloud_init_schema_check_rejects_a_broken_config(tmp_path, prod_signal):
    """The same check fails on a cloud-config a real instance would reject, so the test above can fail."""
    document = user_data(prod_signal)
    document["write_files"][0]["permissions"] = 420  # must be an octal string such as '0644'
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\n" + yaml.safe_dump(document))
    checked = cloud_init_schema(path)
    assert checked.returncode != 0
    assert "permissions" in checked.stdout + checked.stderr


# What `systemd-analyze verify` says only because this machine is not the instance.
NOT_THIS_MACHINE = ("is not executable", "not found", "Failed to create")


def systemd_verify(unit_dir) -> list[str]:
    binary = shutil.which("systemd-analyze")
    assert binary, "systemd-analyze is missing: apt-get install systemd"
    units = sorted(str(p) for p in unit_dir.glob("*.service"))
    done = subprocess.run([binary, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines()
            if line.strip() and not any(marker in line for marker in NOT_THIS_MACHINE)]


def write_units(prod_signal, directory, edit=lambda text: text):
    directory.mkdir()
    for entry in user_data(prod_signal)["write_files"]:
        if entry["path"].startswith("/etc/systemd/system/") and entry["path"].endswith(".service"):
            (directory / entry["path"].rsplit("/", 1)[1]).write_text(edit(entry["content"]))
    return directory


def test_systemd_accepts_every_rendered_unit(prod_signal, tmp_path):
    units = write_units(prod_signal, tmp_path / "units")
    assert {p.name for p in units.glob("*.service")} >= {"signal-server.service", "signal-certbot.service"}
    assert systemd_verify(units) == []


def test_systemd_check_reports_a_broken_unit(prod_signal, tmp_path):
    units = write_units(prod_signal, tmp_path / "units", edit=lambda text: text.replace("Restart=", "Restartt=", 1))
    complaints = systemd_verify(units)
    assert any("Unknown key" in line and "Restartt" in line for line in complaints), complaints


def test_compose_unit_retries_when_its_boot_steps_fail(prod_signal):
    # ExecStartPre reads SSM at boot; a transient failure must not leave Redis and registration-service down.
    unit = written_file(prod_signal, "/etc/systemd/system/signal-redis.service")
    sections: dict[str, dict[str, list[str]]] = {}
    for line in unit.splitlines():
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
        elif "=" in line:
            key, value = line.split("=", 1)
            section.setdefault(key, []).append(value)
    service = sections["Service"]
    assert service["Type"] == ["oneshot"] and service["Restart"] == ["on-failure"] and service["RestartSec"] == ["30"]
    assert any("first-boot" in step for step in service["ExecStartPre"])


# -- pinned deploy-time code, and no route to the instance role's credentials ----------------------------------


def _git(cwd, *args) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": "/dev/null"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("tag_on", ["pinned", "later"])
def test_the_server_checkout_fails_unless_the_tag_names_the_pinned_commit(tmp_path, tag_on):
    from components.signal.host import server_checkout_command

    upstream = tmp_path / "upstream"
    upstream.mkdir()
    _git(upstream, "init", "-q")
    (upstream / "f").write_text("1")
    _git(upstream, "add", "f")
    _git(upstream, "commit", "-qm", "pinned")
    pinned = _git(upstream, "rev-parse", "HEAD")
    (upstream / "f").write_text("2")
    _git(upstream, "commit", "-qam", "moved")
    # An annotated tag, like upstream's, on the pinned commit or on a later one (a moved tag).
    _git(upstream, "tag", "-a", "-m", "release", "v9.81.0", pinned if tag_on == "pinned" else "HEAD")
    version = type(VERSION)("v9.81.0", {**VERSION.raw, "commit": pinned})
    command = server_checkout_command(version, str(upstream), "v9.81.0", str(tmp_path / "src"))
    run = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                         env={**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null"})
    assert (run.returncode == 0) == (tag_on == "pinned"), run.stderr
    if tag_on == "pinned":
        assert _git(tmp_path / "src", "rev-parse", "HEAD") == pinned


def test_cloud_init_checks_the_server_commit_and_builds_with_strict_checksums(prod_signal):
    from components.signal.host import BUILD_HOME, BUILD_USER, PATHS

    line, fetch = jar_build(prod_signal)
    assert f"git checkout --detach {VERSION['commit']}" in fetch
    assert "rev-parse --verify 'v9.81.0^{commit}'" in fetch
    assert VERSION["build"] in fetch and VERSION["build"].startswith("mvn -C ") and "mvnw" not in fetch
    # The pinned Maven, checked against its SHA-512 before it runs, never the source's own unverified wrapper.
    maven = VERSION["maven"]
    assert fetch.index(maven["sha512"]) < fetch.index("sha512sum -c") < fetch.index(VERSION["build"])
    assert maven["url"].endswith(f"apache-maven-{maven['version']}-bin.tar.gz")
    # Built as the unprivileged build user in its own home; root only installs the finished jar.
    assert line.startswith(f"install -d -o {BUILD_USER} -g {BUILD_USER} -m 0750 {BUILD_HOME} && "
                           f"runuser -u {BUILD_USER} -- env HOME={BUILD_HOME} sh -c ")
    assert line.endswith(f"install -m 0644 -o root -g root {BUILD_HOME}/src/{VERSION['jar']} {PATHS['jar']}")
    users = {u["name"]: u for u in user_data(prod_signal)["users"] if isinstance(u, dict)}
    assert users[BUILD_USER]["shell"] == "/usr/sbin/nologin" and users[BUILD_USER]["system"] is True


@pytest.mark.parametrize("archive_matches", [True, False])
def test_the_maven_download_is_refused_unless_its_sha512_matches(tmp_path, archive_matches):
    import hashlib
    import io
    import tarfile

    from components.signal.host import verified_maven_steps

    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as tar:
        data = b"#!/bin/sh\necho maven\n"
        info = tarfile.TarInfo("apache-maven-9.9.9/bin/mvn")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    served = tmp_path / "served.tar.gz"
    served.write_bytes(tarball.getvalue() if archive_matches else tarball.getvalue() + b"tampered")
    # `curl` here hands out the served file, as Maven Central would.
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "curl").write_text(f"#!/bin/sh\nwhile [ \"$1\" != -o ]; do shift; done\ncp {served} \"$2\"\n")
    (stub / "curl").chmod(0o755)
    version = type(VERSION)("v9.81.0", {**VERSION.raw, "maven": {
        "version": "9.9.9", "url": "https://repo.maven.apache.org/apache-maven-9.9.9-bin.tar.gz",
        "sha512": hashlib.sha512(tarball.getvalue()).hexdigest()}})
    done = subprocess.run(["sh", "-c", verified_maven_steps(version, str(tmp_path / "maven"))], capture_output=True,
                          text=True, env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"})
    assert (done.returncode == 0) is archive_matches, done.stderr
    assert (tmp_path / "maven" / "bin" / "mvn").exists() is archive_matches


def test_the_docker_target_checks_the_server_commit_too(dev_evaluation):
    from components.settings import CONFIGS_DIR

    build = dev_evaluation.named("signal-local-server-image").plain_inputs["build"]
    assert build["args"]["COMMIT"] == VERSION["commit"] and build["args"]["REF"] == "v9.81.0"
    dockerfile = (CONFIGS_DIR.parent / build["dockerfile"]).read_text()
    assert 'git checkout --detach "${COMMIT}"' in dockerfile
    assert 'test "$(git rev-parse --verify "${REF}^{commit}")" = "${COMMIT}"' in dockerfile


def test_no_container_can_reach_the_instance_metadata_service(prod_signal):
    from components.signal.host import IMDS_FIREWALL, OPT
    from components.signal.registration import RUN_UID

    instance, = prod_signal.of_type("aws:ec2/instance:Instance")
    metadata = instance.plain_inputs["metadataOptions"]
    assert metadata["httpTokens"] == "required" and metadata["httpPutResponseHopLimit"] == 1
    compose = yaml.safe_load(written_file(prod_signal, f"{OPT}/compose.yml"))["services"]["registration-service"]
    assert "network_mode" not in compose  # compose's own bridge network, never the host's
    assert all(port.startswith("127.0.0.1:") for port in compose["ports"])
    assert compose["user"] == f"{RUN_UID}:{RUN_UID}" and compose["read_only"] is True
    assert compose["cap_drop"] == ["ALL"] and compose["security_opt"] == ["no-new-privileges:true"]
    unit = _unit(written_file(prod_signal, "/etc/systemd/system/signal-redis.service"))
    assert f"/bin/sh -c '{IMDS_FIREWALL}'" in unit["ExecStartPre"]
    assert "iptables -I DOCKER-USER -d 169.254.169.254/32 -j REJECT" in IMDS_FIREWALL


def _patch_target(tmp_path, text: str):
    target = tmp_path / "service/src/main/java/org/whispersystems/textsecuregcm/registration/RegistrationServiceClient.java"
    target.parent.mkdir(parents=True)
    target.write_text(text)
    return target


CALL = ".withCallCredentials(IdentityTokenCallCredentials.fromCredentialConfig(credentialConfigJson, identityTokenAudience))"


@pytest.mark.parametrize("source,applies", [
    (f"stub = newStub(channel)\n    {CALL};\n", True),
    # Upstream moved the call or changed it: the build stops instead of shipping a client that asks Google.
    ("stub = newStub(channel)\n    .withCallCredentials(IdentityTokenCallCredentials.fromConfig(json));\n", False),
    ("stub = newStub(channel)\n    .withCallCredentials(\n        IdentityTokenCallCredentials.fromCredentialConfig("
     "credentialConfigJson, identityTokenAudience));\n", False),
])
def test_the_build_patch_removes_the_identity_token_call_or_fails(tmp_path, source, applies):
    target = _patch_target(tmp_path, source)
    run = subprocess.run(["sh", "-c", VERSION["build_patch"]], cwd=tmp_path, capture_output=True, text=True)
    assert (run.returncode == 0) == applies, run.stderr
    if applies:
        assert "withCallCredentials" not in target.read_text() and "stub = newStub(channel)" in target.read_text()


def test_every_server_build_applies_the_patch_first(prod_signal, dev_evaluation):
    from components.signal.host import server_build_steps

    steps = server_build_steps(VERSION)
    assert steps.index(VERSION["build_patch"]) < steps.index(VERSION["build"])
    _, fetch = jar_build(prod_signal)
    assert server_build_steps(VERSION, "/var/lib/signal-build/maven") in fetch
    assert dev_evaluation.named("signal-local-server-image").plain_inputs["build"]["args"]["BUILD"] == steps


def test_the_build_names_its_jar_as_the_data_file_expects_even_from_the_patched_tree():
    # jgitver (Signal-Server's .mvn/extensions.xml, useDirty) names a build of a modified tree <tag>-dirty, and
    # the patched tree is modified: the version is given, so service/target/<jar> exists.
    forced = re.search(r"-Djgitver\.use-version=(\S+)", VERSION["build"])
    assert forced and VERSION["jar"] == f"service/target/TextSecureServer-{forced.group(1)}.jar"
    assert forced.group(1) == VERSION.ref.lstrip("v")


# -- what the instance's units and containers may do ------------------------------------------------------------


def test_signal_server_listens_on_loopback_only_on_the_instance(prod_signal):
    from components.signal.host import PATHS

    config = yaml.safe_load(written_file(prod_signal, PATHS["config_in"]))
    # Without the block Dropwizard listens on every interface, the admin port's tasks included.
    assert config["server"] == {
        "applicationConnectors": [{"type": "http", "bindHost": "127.0.0.1", "port": 8080}],
        "adminConnectors": [{"type": "http", "bindHost": "127.0.0.1", "port": 8081}]}
    nginx = written_file(prod_signal, "/etc/nginx/sites-available/signal.conf")
    assert "proxy_pass http://127.0.0.1:8080;" in nginx and "8081" not in nginx


def test_on_docker_the_admin_port_is_the_containers_own(dev_evaluation):
    server = next(c for c in dev_evaluation.of_type("docker:index/container:Container")
                  if c.plain_inputs["name"].endswith("-server") and "signal" in c.plain_inputs["name"])
    uploads = {u["file"]: u["content"] for u in server.plain_inputs["uploads"]}
    config = yaml.safe_load(uploads["/etc/signal/config.base.yml"])
    # The proxy reaches the application port over its network (nothing is published); the admin port answers the
    # container's own health check only.
    assert config["server"]["applicationConnectors"] == [{"type": "http", "bindHost": "0.0.0.0", "port": 8080}]
    assert config["server"]["adminConnectors"] == [{"type": "http", "bindHost": "127.0.0.1", "port": 8081}]
    assert "127.0.0.1:8081/healthcheck" in " ".join(server.plain_inputs["healthcheck"]["tests"])
    assert not server.plain_inputs.get("ports")


def test_registration_services_grpc_port_answers_nginx_only(prod_signal):
    from components.signal.host import GRPC_FIREWALL_CHAIN, NGINX_USER, grpc_firewall

    port = VERSION.registration_service["port"]
    unit = _unit(written_file(prod_signal, "/etc/systemd/system/signal-redis.service"))
    assert f"/bin/sh -c '{grpc_firewall(port)}'" in unit["ExecStartPre"]
    rules = grpc_firewall(port)
    assert f"-A {GRPC_FIREWALL_CHAIN} -m owner --uid-owner {NGINX_USER} -j RETURN" in rules
    assert f"-A {GRPC_FIREWALL_CHAIN} -j REJECT" in rules
    assert f"iptables -I OUTPUT -p tcp --dport {port} -j {GRPC_FIREWALL_CHAIN}" in rules
    assert subprocess.run(["bash", "-n", "-c", rules]).returncode == 0
    # nginx's TLS front is what Signal-Server's registrationService points at.
    nginx = written_file(prod_signal, "/etc/nginx/sites-available/signal.conf")
    assert f"grpc_pass grpc://127.0.0.1:{port};" in nginx


def test_state_on_the_data_volume_waits_for_its_mount(prod_signal):
    from components.signal.host import DATA

    for unit_name in ("signal-redis.service", "signal-certbot.service"):
        unit = _unit(written_file(prod_signal, f"/etc/systemd/system/{unit_name}"))
        assert unit["RequiresMountsFor"] == [DATA], unit_name


def test_the_server_unit_changes_no_owner_and_is_sandboxed(prod_signal):
    from components.signal.host import PATHS, SERVER_USER

    unit = _unit(written_file(prod_signal, "/etc/systemd/system/signal-server.service"))
    assert not any("chown" in step for step in unit["ExecStartPre"])
    assert json.loads(written_file(prod_signal, PATHS["manifest"]))["server_user"] == SERVER_USER
    assert unit["User"] == [SERVER_USER] and unit["CapabilityBoundingSet"] == [""]
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictSUIDSGID", "LockPersonality"):
        assert unit[key] == ["true"], key
    assert unit["ProtectSystem"] == ["strict"]


def test_the_instances_redis_runs_unprivileged_on_its_own_data(prod_signal):
    from components.signal.host import OPT, REDIS_UID, redis_data_dirs_command

    services = yaml.safe_load(written_file(prod_signal, f"{OPT}/compose.yml"))["services"]
    redis = {name: s for name, s in services.items() if name.startswith("redis")}
    assert len(redis) == 7
    for name, service in redis.items():
        assert service["user"] == f"{REDIS_UID}:{REDIS_UID}" and service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"] and service["security_opt"] == ["no-new-privileges:true"], name
        assert service["mem_limit"] and service["network_mode"] == "host", name
    unit = _unit(written_file(prod_signal, "/etc/systemd/system/signal-redis.service"))
    assert f"/bin/sh -c '{redis_data_dirs_command()}'" in unit["ExecStartPre"]


def test_the_zone_is_one_where_the_instance_type_is_offered(monkeypatch):
    from components.signal.host import offered_zone

    assert offered_zone("t3.large", ["eu-central-1a", "eu-central-1b"], ["eu-central-1b"]) == "eu-central-1b"
    assert offered_zone("t3.large", ["eu-central-1a", "eu-central-1b"], ["eu-central-1a", "eu-central-1b"]) == \
        "eu-central-1a"
    with pytest.raises(ValueError, match="commstack:signalInstanceType"):
        offered_zone("x9.huge", ["eu-central-1a"], ["eu-central-1c"])

    # The whole program: a type offered only in the second zone puts the volume there, and the instance with it.
    original = offline.emulate_invoke

    def only_in_b(token, args):
        found = original(token, args)
        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            return {**found, "locations": ["eu-central-1b"]}
        return found

    monkeypatch.setattr(offline, "emulate_invoke", only_in_b)
    from tests.conftest import evaluate

    evaluation = evaluate("prod")
    volume = evaluation.named("signal-host-data")
    assert volume.plain_inputs["availabilityZone"] == "eu-central-1b"
    # An existing volume keeps its zone whatever is chosen later; the instance follows the volume.
    assert "availabilityZone" in volume.ignore_changes
    instance, = evaluation.of_type("aws:ec2/instance:Instance")
    assert instance.plain_inputs["availabilityZone"] == volume.plain_outputs["availabilityZone"] == "eu-central-1b"
