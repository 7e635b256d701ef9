"""doctor's MatrixRTC rows: what Element X and Element Web group calls need, checked as a client
does it, each with a fix hint.

1. `well-known rtc_foci` and `rtc transports`: the well-known client document's
   `org.matrix.msc4143.rtc_foci` and Synapse's
   `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports` (Synapse v1.163.2,
   synapse/rest/client/matrixrtc.py, with `experimental_features.msc4143_enabled`) are non-empty
   and name the same lk-jwt-service URL; `lk-jwt-service <url>` answers its `/healthz` through
   the route (lk-jwt-service v0.5.0 main.go prepareMux: `/healthz`, `/get_token`, `/sfu/get`).
2. `lk-jwt-service token`: the throwaway user's fresh OpenID token
   (`POST /_matrix/client/v3/user/{userId}/openid/request_token`) is exchanged at `/get_token`
   for a LiveKit JWT, checked for the room alias and identity lk-jwt-service derives
   (processSFURequest: unpadded base64 of SHA-256 over the JSON arrays `[room_id, slot_id]` and
   `[user_id, device_id, member_id]`), the join grant, its expiry and the LiveKit URL it returns.
3. `livekit signalling`: that URL's HTTP root answers LiveKit's "OK" through Traefik, and with the
   token the WebSocket `/rtc` joins the room (LiveKit's JoinResponse).
4. `livekit media <address>:<port>/udp`: over that join an offer gets LiveKit's answer, and one ICE
   connectivity check to each UDP candidate it advertises comes back (commstack/checks/rtc_probe.py says
   why a bare STUN binding request cannot do it).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from commstack.checks import rtc_probe
from commstack.checks.target import (FAIL, PASS, SKIP, Check, Target, TestUser, _errcode, _get, _json_document, _post,
                                     check_dns, check_tls, reach_address)

TRANSPORTS_PATH = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports"
FOCI_KEY = "org.matrix.msc4143.rtc_foci"
SLOT_ID = "m.call#ROOM"  # the one slot MatrixRTC defines for m.call
DEVICE_ID = "COMMSTACKDOCTOR"
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_.-]*")  # also a token cut short


def _redact(text: str) -> str:
    """LiveKit echoes a refused token in its error; a token is a credential."""
    return _JWT_RE.sub("<token>", text)


# -- 1. the announced foci ------------------------------------------------------------------------


def service_urls(foci) -> list[str]:
    """The livekit_service_url of each `livekit` focus, in order; anything malformed is dropped."""
    urls = []
    for focus in foci if isinstance(foci, list) else []:
        url = focus.get("livekit_service_url") if isinstance(focus, dict) and focus.get("type") == "livekit" else None
        if isinstance(url, str) and urlsplit(url).scheme == "https" and urlsplit(url).hostname:
            urls.append(url.rstrip("/"))
    return list(dict.fromkeys(urls))


def expected_service_urls(target: Target) -> list[str]:
    return service_urls(target.rtc_transports)


def check_well_known_foci(target: Target, expected: list[str]) -> tuple[Check, list[str]]:
    name = "well-known rtc_foci"
    hint = (f"/.well-known/matrix/client must carry {FOCI_KEY} = Synapse's matrix_rtc.transports "
            "(commstack:calls true renders both)")
    data, problem = _json_document(target, f"{target.well_known_url}/.well-known/matrix/client")
    if problem:
        return Check(name, FAIL, problem, hint), []
    foci = (data or {}).get(FOCI_KEY)
    urls = service_urls(foci)
    if not urls:
        return Check(name, FAIL, f"no livekit focus ({FOCI_KEY} is {json.dumps(foci)[:80]})", hint), []
    if expected and urls != expected:
        return Check(name, FAIL, f"{', '.join(urls)} != the stack's {', '.join(expected)}", hint), urls
    return Check(name, PASS, ", ".join(urls)), urls


def check_rtc_transports(target: Target, base_url: str, token: Optional[str],
                         expected: list[str]) -> tuple[Check, list[str]]:
    name = "rtc transports"
    if not token:
        return Check(name, SKIP, "needs a user's access token", "see the test user row"), []
    try:
        response = _get(target, f"{base_url.rstrip('/')}{TRANSPORTS_PATH}", headers={"Authorization": f"Bearer {token}"})
    except requests.RequestException as exc:
        return Check(name, FAIL, f"request failed: {exc.__class__.__name__}", "the client API must be reachable"), []
    if response.status_code in (404, 405) or _errcode(response) == "M_UNRECOGNIZED":
        return Check(name, FAIL, f"HTTP {response.status_code} {_errcode(response)}".strip(),
                     "Synapse does not serve MatrixRTC transports: experimental_features.msc4143_enabled and "
                     "matrix_rtc.transports in homeserver.yaml (commstack:calls true)"), []
    try:
        transports = response.json().get("rtc_transports") if response.status_code == 200 else None
    except ValueError:
        transports = None
    urls = service_urls(transports)
    if not urls:
        return Check(name, FAIL, f"HTTP {response.status_code}, no livekit transport",
                     "matrix_rtc.transports in homeserver.yaml must name lk-jwt-service's https URL"), []
    if expected and urls != expected:
        return Check(name, FAIL, f"{', '.join(urls)} != the stack's {', '.join(expected)}",
                     "Synapse runs an older homeserver.yaml: `pulumi up` and restart synapse"), urls
    return Check(name, PASS, ", ".join(urls)), urls


def check_service_health(target: Target, url: str) -> Check:
    name = f"lk-jwt-service {url}"
    host = urlsplit(url).hostname
    try:
        response = _get(target, f"{url}/healthz")
    except requests.exceptions.SSLError as exc:
        return Check(name, FAIL, f"TLS: {str(exc)[:120]}", f"the certificate must cover {host} (certificate_hosts)")
    except requests.RequestException as exc:
        return Check(name, FAIL, f"request failed: {exc.__class__.__name__}",
                     f"nothing answers on {host}:443: DNS record for {host}, Traefik running, 443/tcp open")
    if response.status_code == 200:
        return Check(name, PASS, "/healthz answers 200")
    if response.status_code in (502, 503, 504):
        hint = "Traefik cannot reach lk-jwt-service: is it running? `docker logs lk-jwt-service`"
    elif response.status_code == 404:
        hint = f"Traefik must route {host}{urlsplit(url).path} to lk-jwt-service and strip the prefix"
    else:
        hint = "lk-jwt-service answered an error: `docker logs lk-jwt-service`"
    return Check(name, FAIL, f"HTTP {response.status_code} on /healthz", hint)


# -- 2. the token exchange ----------------------------------------------------------------------


def _digest(values: list[str]) -> str:
    """lk-jwt-service's alias/identity: unpadded std base64 of SHA-256 over Go's json.Marshal."""
    raw = json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    return base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode().rstrip("=")


def room_alias(room_id: str, slot_id: str = SLOT_ID) -> str:
    return _digest([room_id, slot_id])


def livekit_identity(user_id: str, device_id: str, member_id: str) -> str:
    return _digest([user_id, device_id, member_id])


def jwt_claims(token: str) -> Optional[dict]:
    """The payload of a compact JWS, or None when it is not one."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        return None
    try:
        header, payload = (json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in parts[:2])
    except ValueError:
        return None
    return payload if isinstance(header, dict) and header.get("alg") == "HS256" and isinstance(payload, dict) else None


def token_problem(claims: Optional[dict], *, room: str, identity: str, now: float) -> Optional[str]:
    """Why a LiveKit token from lk-jwt-service would not let this member join, or None."""
    if claims is None:
        return "the jwt is not an HS256 JWT"
    video = claims.get("video") if isinstance(claims.get("video"), dict) else {}
    if video.get("roomJoin") is not True:
        return "the jwt grants no roomJoin"
    if video.get("room") != room:
        return f"the jwt names room {video.get('room')!r}, not {room!r}"
    if claims.get("sub") != identity:
        return f"the jwt names identity {claims.get('sub')!r}, not {identity!r}"
    if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] <= now:
        return "the jwt has expired (is the host's clock right?)"
    if not claims.get("iss"):
        return "the jwt names no API key (iss)"
    return None


@dataclass
class LiveKitAccess:
    url: str
    token: str
    room: Optional[str] = None  # the room the token is for, when known
    source: str = "lk-jwt-service"


def _user_id(target: Target, base_url: str, user: TestUser) -> Optional[str]:
    if user.user_id:
        return user.user_id
    try:
        response = _get(target, f"{base_url.rstrip('/')}/_matrix/client/v3/account/whoami",
                        headers={"Authorization": f"Bearer {user.token}"})
        return response.json().get("user_id") if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def _token_hint(status: int, errcode: str, body: str) -> str:
    if status == 401 or errcode == "M_UNAUTHORIZED":
        return ("lk-jwt-service could not confirm the OpenID token with our Synapse (https://<domain>/.well-known/"
                "matrix/server, then /_matrix/federation/v1/openid/userinfo on the matrix host: Synapse's openid "
                "listener resource, and lk-jwt-service trusting the certificate); `docker logs lk-jwt-service`")
    if "create room" in body.lower():
        return ("lk-jwt-service cannot create the room on LiveKit: its key file differs from LiveKit's, or its "
                "LIVEKIT_URL does not reach LiveKit; `docker logs lk-jwt-service`")
    if status in (502, 503, 504):
        return "Traefik cannot reach lk-jwt-service: is it running? `docker logs lk-jwt-service`"
    return "see `docker logs lk-jwt-service`"


def check_token(target: Target, base_url: str, user: TestUser, service_url: str) -> tuple[Check, Optional[LiveKitAccess]]:
    name = "lk-jwt-service token"
    user_id = _user_id(target, base_url, user) if user.token else None
    if not user_id:
        return Check(name, SKIP, "needs a user (see the test user row)", "give --stack, --admin-url or --access-token"), None
    try:
        openid = _post(target, f"{base_url.rstrip('/')}/_matrix/client/v3/user/{quote(user_id)}/openid/request_token",
                       headers={"Authorization": f"Bearer {user.token}"}, json={})
    except requests.RequestException as exc:
        return Check(name, FAIL, f"OpenID request failed: {exc.__class__.__name__}", "the client API must be reachable"), None
    if openid.status_code != 200:
        return Check(name, FAIL, f"OpenID token: HTTP {openid.status_code} {_errcode(openid)}",
                     "Synapse must issue OpenID tokens to its users (see the Synapse log)"), None
    room_id = f"!commstack-doctor-{secrets.token_hex(6)}:{target.server_name}"
    member_id = secrets.token_hex(8)
    body = {"room_id": room_id, "slot_id": SLOT_ID, "openid_token": openid.json(),
            "member": {"id": member_id, "claimed_user_id": user_id, "claimed_device_id": DEVICE_ID}}
    try:
        response = _post(target, f"{service_url}/get_token", json=body)
    except requests.RequestException as exc:
        return Check(name, FAIL, f"{service_url}/get_token: {exc.__class__.__name__}",
                     "lk-jwt-service must be reachable at the announced URL (see its health row)"), None
    if response.status_code != 200:
        try:
            body = response.json()
        except ValueError:
            body = None
        # lk-jwt-service's Matrix-style errors (writeMatrixError), or a proxy's text page.
        text = str(body.get("error") or "") if isinstance(body, dict) else response.text[:200]
        errcode = str(body.get("errcode") or "") if isinstance(body, dict) else ""
        detail = f"HTTP {response.status_code} {errcode}".strip() + (f": {_redact(text.strip())}" if text.strip() else "")
        return Check(name, FAIL, detail[:200], _token_hint(response.status_code, errcode, text)), None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    url, token = answer.get("url"), answer.get("jwt")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("wss", "ws") or not isinstance(token, str):
        return Check(name, FAIL, f"answer has no ws(s) url and jwt (keys {sorted(answer)})",
                     "an lk-jwt-service of another version? configs/images.yaml pins v0.5.0"), None
    alias = room_alias(room_id)
    problem = token_problem(jwt_claims(token), room=alias, identity=livekit_identity(user_id, DEVICE_ID, member_id),
                            now=time.time())
    if problem:
        return Check(name, FAIL, problem, "lk-jwt-service's LIVEKIT_KEY_FILE or its version; see its log"), None
    if urlsplit(url).scheme != "wss":
        return Check(name, FAIL, f"LiveKit URL {url} is not wss://", "LIVEKIT_URL must be wss://<rtc host>/livekit/sfu"), None
    if target.livekit_url and url.rstrip("/") != target.livekit_url.rstrip("/"):
        return Check(name, FAIL, f"LiveKit URL {url} != the stack's {target.livekit_url}",
                     "lk-jwt-service's LIVEKIT_URL is stale: `pulumi up` and restart lk-jwt-service"), None
    return (Check(name, PASS, f"JWT ok, {url}"),
            LiveKitAccess(url, token, alias))


# -- 3. signalling ----------------------------------------------------------------------------------


def _https(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, parts.path.rstrip("/") + "/", "", ""))


def _tls_context(target: Target) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=target.ca_file)
    if target.insecure_tls:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def _signalling_hint(error: rtc_probe.SignallingError, host: str) -> str:
    body = error.body.lower()
    if error.status == 401 and ("invalid token" in body or "invalid api key" in body):
        return ("LiveKit refused the token's key or signature: LiveKit's key file and lk-jwt-service's differ "
                "(both come from the stack; `pulumi up` rewrites them)")
    if error.status == 401:
        return "LiveKit refused the token (expired or without a join grant)"
    if error.status == 404 and "room does not exist" in body:
        return ("the room does not exist: lk-jwt-service creates it for users of LIVEKIT_FULL_ACCESS_HOMESERVERS "
                "(our server_name); a --livekit-token needs its room created first")
    if error.status in (502, 503, 504):
        return "Traefik cannot reach LiveKit: is it running? `docker logs livekit`"
    if error.status == 404:
        return f"Traefik must route {host}/livekit/sfu (WebSocket) to LiveKit and strip the prefix"
    return "see `docker logs livekit` and Traefik's log"


def check_signalling(target: Target, access: Optional[LiveKitAccess]) -> tuple[Check, Optional[tuple]]:
    """LiveKit's root through the route, then a real join; returns the open join for the media rows."""
    name = "livekit signalling"
    url = access.url if access else target.livekit_url
    if not url:
        return Check(name, SKIP, "no LiveKit URL (lk-jwt-service gave none)", "fix the lk-jwt-service rows, or give "
                                                                              "--livekit-url"), None
    host = urlsplit(url).hostname or ""
    try:
        root = _get(target, _https(url))
    except requests.RequestException as exc:
        return Check(name, FAIL, f"{_https(url)}: {exc.__class__.__name__}",
                     f"nothing answers on {host}:443: DNS record for {host}, Traefik running, 443/tcp open"), None
    if root.status_code != 200 or root.text.strip() != "OK":
        hint = ("Traefik cannot reach LiveKit: is it running? `docker logs livekit`" if root.status_code in (502, 503, 504)
                else f"Traefik must route {host}/livekit/sfu to LiveKit (prefix stripped)")
        return Check(name, FAIL, f"{_https(url)} answers HTTP {root.status_code}, not LiveKit's OK", hint), None
    if access is None:
        return Check(name, PASS, f"{_https(url)} answers OK (no LiveKit token to join with)"), None
    parts = urlsplit(url)
    address = reach_address(target, host, parts.port or (443 if parts.scheme == "wss" else 80))
    try:
        ws = rtc_probe.open_websocket(address, rtc_probe.rtc_url(url, access.token),
                                      tls_context=_tls_context(target) if parts.scheme == "wss" else None)
    except rtc_probe.SignallingError as exc:
        detail = f"HTTP {exc.status}: {_redact(exc.body)}" if exc.status and exc.status != 101 else str(exc)
        return Check(name, FAIL, detail[:200], _signalling_hint(exc, host)), None
    except (OSError, ssl.SSLError) as exc:
        return Check(name, FAIL, f"WebSocket to {host}: {exc}"[:200], f"open 443/tcp to {host}; see Traefik's log"), None
    try:
        join = rtc_probe.join_and_offer(ws)
    except (rtc_probe.SignallingError, OSError, ValueError) as exc:
        ws.close()
        return Check(name, FAIL, f"joined, then: {_redact(str(exc))}"[:200], "see `docker logs livekit`"), None
    if access.room and join.room != access.room:
        ws.close()
        return Check(name, FAIL, f"joined room {join.room!r}, not the token's {access.room!r}", "see `docker logs livekit`"), None
    return Check(name, PASS, f"joined with {access.source}'s token, LiveKit {join.server_version}"), (ws, join)


# -- 4. media over UDP ------------------------------------------------------------------------------


def parse_port_range(value) -> Optional[tuple[int, int]]:
    """`49193-49200` or `49193` -> (low, high); None when absent or malformed."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,5}(-\d{1,5})?", value.strip()):
        return None
    low, _, high = value.strip().partition("-")
    return int(low), int(high or low)


def candidate_problem(candidate: rtc_probe.Candidate, public_ip: Optional[str],
                      ports: Optional[tuple[int, int]]) -> Optional[tuple[str, str]]:
    """(detail, hint) when LiveKit advertises an address or port clients cannot use, else None."""
    if public_ip and candidate.address != public_ip:
        try:
            private = ipaddress.ip_address(candidate.address).is_private
        except ValueError:
            private = False
        what = "a private or Docker address" if private else "an address that is not publicIp"
        return (f"advertises {candidate.address} ({what}), not {public_ip}",
                "LiveKit's rtc.node_ip must be commstack:publicIp, with use_external_ip false (matrix-docker-"
                "ansible-deploy #4958)")
    if ports and not ports[0] <= candidate.port <= ports[1]:
        return (f"port {candidate.port} is outside LiveKit's range {ports[0]}-{ports[1]}",
                "rtc.udp_port in livekit.yaml must be the livekit-rtc range of configs/ports.yaml")
    return None


def check_media(target: Target, join: rtc_probe.Join) -> list[Check]:
    udp = [c for c in join.candidates if c.protocol == "udp"]
    if not udp:
        return [Check("livekit media", FAIL, f"LiveKit advertised no UDP candidate ({len(join.candidates)} others)",
                      "livekit.yaml rtc.udp_port and node_ip; `docker logs livekit`")]
    ports = target.livekit_media_ports
    range_text = f"{ports[0]}-{ports[1]}/udp" if ports else "LiveKit's UDP range (49193-49200 by default)"
    checks = []
    for candidate in udp:
        name = f"livekit media {candidate.address}:{candidate.port}/udp"
        problem = candidate_problem(candidate, target.public_ip, ports)
        if problem:
            checks.append(Check(name, FAIL, *problem))
            continue
        result = rtc_probe.ice_check(reach_address(target, candidate.address, candidate.port), join.remote, join.local)
        if result.ok or result.answered:
            checks.append(Check(name, PASS, result.detail))
        elif result.refused:
            checks.append(Check(name, FAIL, result.detail,
                                f"nothing receives on {candidate.port}/udp: is LiveKit publishing {range_text} "
                                "(`docker ps`), with rtc.udp_port the same range?"))
        else:
            checks.append(Check(name, FAIL, result.detail,
                                f"UDP to {candidate.address}:{candidate.port} is dropped: open {range_text} in the "
                                "host's and the cloud provider's firewall (security group), and check that publicIp "
                                f"({candidate.address} here) is the address clients reach"))
    return checks


# -- the rows together -------------------------------------------------------------------------------


def check_calls(target: Target, base_url: str, user: TestUser, checked_hosts: set[str]) -> list[Check]:
    if target.calls is False:
        return [Check("calls", SKIP, "calls are off (commstack:calls false, or --no-calls)", "")]
    expected = expected_service_urls(target)
    foci_check, foci = check_well_known_foci(target, expected)
    transports_check, transports = check_rtc_transports(target, base_url, user.token, expected)
    announced = list(dict.fromkeys([*transports, *foci, *expected]))
    calls_expected = target.calls is True or bool(expected) or bool(target.livekit_url)
    if not announced and not calls_expected:
        return [Check("calls", SKIP, "neither the well-known nor Synapse announces a MatrixRTC focus",
                      "commstack:calls true sets calls up; --no-calls silences this row")]
    checks = [foci_check, transports_check]
    for url in announced:
        host = urlsplit(url).hostname
        if host and host not in checked_hosts:
            checked_hosts.add(host)
            checks.append(check_dns(host, target.public_ip))
            checks.append(check_tls(target, host, urlsplit(url).port or 443))
        checks.append(check_service_health(target, url))
    access = None
    if announced:
        token_check, access = check_token(target, base_url, user, announced[0])
        checks.append(token_check)
    if target.livekit_token:
        # An operator's own LiveKit token (e.g. `lk token create`) for the LiveKit rows.
        access = LiveKitAccess(target.livekit_url or (access.url if access else ""), target.livekit_token,
                               source="--livekit-token")
        if not access.url:
            access = None
    signalling_check, opened = check_signalling(target, access)
    checks.append(signalling_check)
    if opened is None:
        checks.append(Check("livekit media", SKIP, "needs a LiveKit join (see the signalling row)",
                            "fix the rows above; a --livekit-token lets doctor join without lk-jwt-service"))
        return checks
    ws, join = opened
    try:
        checks += check_media(target, join)
    finally:
        ws.close()
    return checks
