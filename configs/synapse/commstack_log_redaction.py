"""A logging filter for Synapse: no query-string value and no credential reaches its log.

Synapse logs each request's URI (the "Processed request" line and its warnings) with only
`access_token` and `client_secret` redacted (synapse/http/__init__.py redact_uri, v1.163.2), so
registration tokens (`?token=`), SSO login tokens (`?loginToken=`) and anything a client puts in
a query would sit in `docker logs synapse`. components/matrix/synapse.py uploads this module,
puts its directory on PYTHONPATH and attaches the filter to the console handler. Standard
library only: it runs inside the Synapse image.
"""

import logging
import re

# A query parameter's value inside a logged URI: after `?` or `&`, up to the next `&`, space, quote or `>`.
QUERY_VALUE = re.compile(r"([?&][^=\s&?\"'<>]+=)[^&\s\"'<>]+")
# A quoted value under a secret-looking key in a logged dict. Synapse logs a registration's user-
# interactive auth as "Auth completed with creds: {'m.login.registration_token': '…'}" (INFO,
# synapse/handlers/auth.py): the token, a password or a client_secret would sit there in plaintext.
SECRET_ENTRY = re.compile(r"""((['"])[^'"]*(?:token|secret|password|response|sid)[^'"]*\2\s*:\s*)(['"])[^'"]*\3""",
                          re.IGNORECASE)
REDACTED = "<redacted>"


def redact(text: str) -> str:
    text = QUERY_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    return SECRET_ENTRY.sub(lambda m: f"{m.group(1)}{m.group(3)}{REDACTED}{m.group(3)}", text)


class RedactQueryStrings(logging.Filter):
    """Rewrites each record's message (and its exception text) with every query value redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: the handler reports it as it would anyway
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
