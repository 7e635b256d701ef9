"""Outgoing e-mail for real: Synapse's rendered `email` section (commstack:smtp*) sends a password reset
to the harness's SMTP server (aiosmtpd on loopback); the reset is asked for, and its link followed,
through the public chain (Traefik -> nginx -> Synapse); the new password then logs in and the old one
does not."""

from __future__ import annotations

import re
import secrets
import time
from urllib.parse import parse_qs, urlsplit

import requests

from commstack.operations.admin import register_user
from tests.integration.harness import wait_until

PUBLIC = "https://matrix.commstack.localhost"


def _login(session: requests.Session, user_id: str, password: str) -> requests.Response:
    return session.post(f"{PUBLIC}/_matrix/client/v3/login", timeout=10, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}, "password": password})


def test_a_password_reset_mail_arrives_and_its_link_sets_the_new_password(harness):
    secret = harness.rendered.yaml("synapse", "/data/homeserver.yaml")["registration_shared_secret"]
    admin_password = secrets.token_urlsafe(18)
    admin_id = register_user(harness.synapse_url, secret, f"mailadmin-{secrets.token_hex(3)}", admin_password, admin=True)
    old_password = secrets.token_urlsafe(18)
    user_id = register_user(harness.synapse_url, secret, f"forgetful-{secrets.token_hex(3)}", old_password, admin=False)
    address = f"forgetful-{secrets.token_hex(3)}@example.org"
    # The admin API (never public) gives the user an e-mail address, as an admin would.
    admin_token = requests.post(f"{harness.synapse_url}/_matrix/client/v3/login", timeout=10, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": admin_id},
        "password": admin_password}).json()["access_token"]
    bound = requests.put(f"{harness.synapse_url}/_synapse/admin/v2/users/{user_id}", timeout=10,
                         headers={"Authorization": f"Bearer {admin_token}"},
                         json={"threepids": [{"medium": "email", "address": address}]})
    assert bound.status_code == 200, bound.text

    public = harness.public()
    client_secret = secrets.token_hex(16)
    asked = public.post(f"{PUBLIC}/_matrix/client/v3/account/password/email/requestToken", timeout=10,
                        json={"client_secret": client_secret, "email": address, "send_attempt": 1})
    assert asked.status_code == 200, asked.text
    sid = asked.json()["sid"]

    wait_until("the password-reset e-mail", lambda: bool(harness.smtp.to(address)), timeout=30)
    (message,) = harness.smtp.to(address)
    assert message["From"].addresses[0].addr_spec == "matrix@commstack.localhost"
    text = message.get_body(preferencelist=("plain",)).get_content()
    link = re.search(r"https://\S+/_synapse/client/password_reset/email/submit_token\?\S+", text).group(0)
    assert link.startswith(f"{PUBLIC}/_synapse/client/password_reset/email/submit_token?")
    query = parse_qs(urlsplit(link).query)
    assert query["sid"] == [sid] and query["client_secret"] == [client_secret]

    # The link: a confirmation page, then its form posts back to the same URL.
    page = public.get(link, timeout=10)
    assert page.status_code == 200 and "<form" in page.text, page.text[:500]
    confirmed = public.post(link, timeout=10)
    assert confirmed.status_code == 200, confirmed.text[:500]

    new_password = secrets.token_urlsafe(18)
    changed = public.post(f"{PUBLIC}/_matrix/client/v3/account/password", timeout=10, json={
        "new_password": new_password, "logout_devices": True,
        "auth": {"type": "m.login.email.identity", "threepid_creds": {"sid": sid, "client_secret": client_secret}}})
    assert changed.status_code == 200, changed.text
    assert _login(public, user_id, new_password).status_code == 200
    assert _login(public, user_id, old_password).status_code == 403


def test_alerts_arrive_by_email_too(harness):
    """Alertmanager's second channel: the notifications the room gets also reach commstack:alertEmails.
    BackupStatusMissing fires at boot in the harness (no backup job runs there), so a message is due."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not harness.smtp.to("ops@commstack.localhost"):
        time.sleep(0.5)
    messages = harness.smtp.to("ops@commstack.localhost")
    assert messages, "no alert e-mail reached ops@commstack.localhost"
    assert any("[FIRING" in (m["Subject"] or "") for m in messages), [m["Subject"] for m in messages]
    assert messages[0]["From"].addresses[0].addr_spec == "matrix@commstack.localhost"
