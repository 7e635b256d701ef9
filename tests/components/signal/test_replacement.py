"""The Signal instance is replaceable by a plain `pulumi up`: a change that replaces it (new user data:
another Signal-Server source, acmeEmail) deletes the old instance before the new one exists, the data
volume stays (protected, same inputs) and is detached only after the old instance stopped, and
everything that must survive (Redis data, certificates) lives on that volume, not the root disk."""

from components.signal.host import DATA, DATA_DEVICE, PATHS
from tests.components.signal.conftest import user_data
from tests.conftest import evaluate

INSTANCE = "aws:ec2/instance:Instance"
ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
VOLUME = "aws:ebs/volume:Volume"


def _plan(ev) -> dict:
    return {t: ev.of_type(t)[0] for t in (INSTANCE, ATTACHMENT, VOLUME)}


def test_a_replacing_change_deletes_the_old_instance_first_and_keeps_the_volume():
    before = evaluate("prod", backupTarget="local")
    after = evaluate("prod", backupTarget="local", signalServerRepo="https://github.com/jtof-dev/Signal-Server",
                     acmeEmail="ops@example.org")
    old, new = _plan(before), _plan(after)
    # The user data changed and replaces the instance on change: this `up` is a replacement.
    assert old[INSTANCE].plain_inputs["userDataBase64"] != new[INSTANCE].plain_inputs["userDataBase64"]
    assert new[INSTANCE].plain_inputs["userDataReplaceOnChange"] is True
    for plan in (old, new):
        assert plan[INSTANCE].delete_before_replace is True
        assert plan[ATTACHMENT].delete_before_replace is True
        assert plan[ATTACHMENT].plain_inputs["stopInstanceBeforeDetaching"] is True
        assert plan[ATTACHMENT].plain_inputs["deviceName"] == DATA_DEVICE
        assert plan[VOLUME].protect is True and plan[VOLUME].retain_on_delete is True
        assert plan[VOLUME].delete_before_replace is not True
    # The volume's inputs do not change, so it is neither replaced nor updated.
    assert old[VOLUME].plain_inputs == new[VOLUME].plain_inputs


def test_redis_data_and_certificates_live_on_the_data_volume():
    ev = evaluate("prod", backupTarget="local")
    cloud = user_data(ev)
    commands = [c if isinstance(c, str) else " ".join(c) for c in cloud["runcmd"]]
    text = "\n".join(commands)
    # The volume is mounted before anything writes to it, and /etc/letsencrypt is a link onto it.
    mount = next(i for i, c in enumerate(commands) if "mount-data.sh" in c)
    certbot = next(i for i, c in enumerate(commands) if "/etc/letsencrypt" in c)
    redis = next(i for i, c in enumerate(commands) if "signal-redis.service" in c)
    assert mount < certbot and mount < redis
    assert f"ln -s {DATA}/letsencrypt /etc/letsencrypt" in text
    compose = next(f for f in cloud["write_files"] if f["path"] == PATHS["compose"])
    import yaml

    services = yaml.safe_load(compose["content"])["services"]
    redis_volumes = [v for name, s in services.items() if name.startswith("redis") for v in s.get("volumes", [])]
    assert len(redis_volumes) == 6 and all(v.startswith(f"{DATA}/redis/") for v in redis_volumes)
