"""Synapse's log filter (configs/synapse/commstack_log_redaction.py), loaded as Synapse's own logging
setup loads it, on a real Synapse request log line."""

import importlib.util
import io
import logging
import logging.config

import pytest

from components.matrix.synapse import LOG_REDACTION_MODULE, LOG_REDACTION_SOURCE, render_log_config


@pytest.fixture
def module(monkeypatch):
    spec = importlib.util.spec_from_file_location(LOG_REDACTION_MODULE, LOG_REDACTION_SOURCE)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    monkeypatch.setitem(__import__("sys").modules, LOG_REDACTION_MODULE, loaded)
    return loaded


def test_every_query_value_is_redacted_and_the_rest_kept(module):
    line = ('127.0.0.1 - 8008 - {None} Processed request: 0.002sec/0.000sec 200 "GET '
            '/_matrix/client/v1/register/m.login.registration_token/validity?token=Reg1stration HTTP/1.1" '
            '"Element/1.11" [0 dbevts] /sso/redirect?redirectUrl=https://e/?loginToken=abc&x=1')
    redacted = module.redact(line)
    assert "Reg1stration" not in redacted and "abc" not in redacted
    assert "validity?token=<redacted> HTTP/1.1" in redacted
    assert "redirectUrl=<redacted>&x=<redacted>" in redacted
    assert module.redact("GET /_matrix/client/versions HTTP/1.1") == "GET /_matrix/client/versions HTTP/1.1"


def test_credentials_in_a_logged_auth_dict_are_redacted(module):
    """Synapse (v1.163.2, synapse/handlers/auth.py) logs the completed user-interactive auth stages."""
    line = ("Auth completed with creds: {'m.login.registration_token': '3bX9ME4cNc4dWnyQ', 'm.login.dummy': True, "
            "'threepid_creds': {'sid': 'abc', 'client_secret': \"s3cr3t\"}, 'password': 'hunter2'}. "
            "Client dict has keys: ['username']")
    redacted = module.redact(line)
    assert not [s for s in ("3bX9ME4cNc4dWnyQ", "abc", "s3cr3t", "hunter2") if s in redacted], redacted
    assert "'m.login.registration_token': '<redacted>'" in redacted and "'m.login.dummy': True" in redacted
    assert "Client dict has keys: ['username']" in redacted


def test_synapse_s_log_config_runs_every_line_through_the_filter(module):
    config = render_log_config()
    stream = io.StringIO()
    config["handlers"]["console"]["stream"] = stream
    config["formatters"]["precise"]["format"] = "%(name)s %(message)s"  # Synapse adds `request` itself
    logging.config.dictConfig(config)
    try:
        logger = logging.getLogger("synapse.access.http.8008")
        logger.info('%s "%s %s %s"', "127.0.0.1", "GET", "/_matrix/x?token=SECRETVALUE&since=s1", "HTTP/1.1")
        try:
            raise ValueError("/_matrix/y?access_token=OTHERSECRET")
        except ValueError:
            logger.exception("failed")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    output = stream.getvalue()
    assert "SECRETVALUE" not in output and "OTHERSECRET" not in output
    assert '"GET /_matrix/x?token=<redacted>&since=<redacted> HTTP/1.1"' in output
    assert "ValueError: /_matrix/y?access_token=<redacted>" in output
