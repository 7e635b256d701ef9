"""Synapse workers: which processes a preset runs, what each one does, and which requests reach it.

A preset (commstack:synapseWorkers) is a list of worker groups; a group is a number of identical
processes with one or more roles. The main process always runs and keeps everything no role takes.
The same plan feeds every place that must agree: each process's homeserver.yaml (instance_map,
stream_writers, the duty options; components/matrix/synapse.py), the nginx routing in front of them
(components/matrix/wellknown.py), Postgres's connection budget (components/matrix/postgres.py) and
the containers (docker names, networks, memory).

Facts are from Synapse's docs/workers.md (element-hq/synapse; the route lists below follow its
"generic_worker", stream-writer and media_repository sections) and were checked against the code of
the pinned matrix-synapse 1.163.2: synapse/config/workers.py (stream writers and their limits, the
duty options), synapse/rest/__init__.py (client servlets a worker does not register) and
synapse/rest/client/delayed_events.py (MSC4140 management is registered on the main process only).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional, Sequence

from components.matrix.postgres import DEFAULT_MAX_CONNECTIONS

# instance_map's name for the main process (synapse/config/workers.py MAIN_PROCESS_INSTANCE_MAP_NAME).
MAIN = "main"
# The one HTTP listener of every worker (client, federation or media resources, replication for
# stream writers, and /health always); the main process adds a replication listener to its 8008.
WORKER_PORT = 8083
MAIN_REPLICATION_PORT = 9093
WORKER_APP = "synapse.app.generic_worker"
# docker names (and instance names) of the worker containers: synapse-<group>-<n>.
CONTAINER_PREFIX = "synapse"

# Streams a stream writer can take besides `events` (synapse/config/workers.py WriterLocations).
OTHER_STREAMS = ("typing", "to_device", "account_data", "receipts", "presence", "push_rules", "device_lists",
                 "thread_subscriptions", "quarantined_media_changes")


@dataclass(frozen=True)
class Role:
    """One job a worker can do."""

    what: str
    # Streams it writes (stream_writers); a stream writer needs the replication resource and an
    # instance_map entry (docs/workers.md, "Stream writers").
    streams: tuple[str, ...] = ()
    # Listener resources (synapse/config/server.py KNOWN_RESOURCES); /health is always served.
    resources: tuple[str, ...] = ()
    # Whether several processes may share it (typing, to_device, account_data, presence and
    # push_rules take exactly one writer; appservice, user directory, background and the media
    # jobs run on one process).
    many: bool = True
    # It calls out of the host: other homeservers, push gateways, remote media.
    egress: bool = False
    # It sends transactions to the bridges (on the appservice network).
    appservice: bool = False


ROLES: dict[str, Role] = {
    "events": Role("persists events: the `events` stream writer (sharded by room across several)",
                   streams=("events",), resources=("replication",)),
    "streams": Role("writes every other stream (typing, to-device, account data, receipts, presence, push rules, "
                    "device lists, thread subscriptions, quarantined media) and serves their endpoints",
                    streams=OTHER_STREAMS, resources=("client", "replication"), many=False),
    "sync": Role("serves /sync, /events and initialSync, sticky per user", resources=("client",)),
    "client": Role("serves the client API a worker may serve (reads, event sending, login, keys, search)",
                   resources=("client",), egress=True),
    "room": Role("creates events (sends, state, membership, redactions), sharded by room", resources=("client",),
                 egress=True),
    "federation_inbound": Role("serves inbound federation (transactions, joins, backfill, queries)",
                               resources=("federation",), egress=True),
    "federation_sender": Role("sends federation traffic (federation_sender_instances)", egress=True),
    "pusher": Role("sends push notifications (pusher_instances)", egress=True),
    "media": Role("the media repository: uploads, downloads, thumbnails, remote media and its retention",
                  resources=("media",), many=False, egress=True),
    "appservice": Role("sends transactions to the bridges (notify_appservices_from_worker)", many=False,
                       appservice=True),
    "user_dir": Role("updates the user directory (update_user_directory_from_worker)", many=False),
    "background": Role("runs the background tasks (run_background_tasks_on)", many=False),
}

# -- routes ----------------------------------------------------------------------------------------
# Route groups in the order nginx tries them (the first match wins); each path regex is matched
# against the request's path. `main` routes stay on the main process whatever the preset.
_CLIENT = r"^/_matrix/client/(api/v1|r0|v3|unstable)"
_CLIENT_NO_V1 = r"^/_matrix/client/(r0|v3|unstable)"
ROUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # MSC4140 delayed events: update, cancel and send are registered on the main process only, and
    # only the main process schedules and sends them (synapse/rest/client/delayed_events.py,
    # synapse/handlers/delayed_events.py; element-hq/synapse#19141). All of them stay there, so a
    # MatrixRTC call's "leave" event is managed where it fires.
    ("main", (r"^/_matrix/client/unstable/org\.matrix\.msc4140/",)),
    ("streams", (
        rf"{_CLIENT}/rooms/.*/typing",
        rf"{_CLIENT_NO_V1}/sendToDevice/",
        rf"{_CLIENT_NO_V1}/.*/tags",
        rf"{_CLIENT_NO_V1}/.*/account_data",
        rf"{_CLIENT_NO_V1}/rooms/.*/receipt",
        rf"{_CLIENT_NO_V1}/rooms/.*/read_markers",
        rf"{_CLIENT}/presence/",
        rf"{_CLIENT}/pushrules/",
        r"^/_matrix/client/(r0|v3)/delete_devices$",
        rf"{_CLIENT}/devices(/|$)",
        rf"{_CLIENT_NO_V1}/keys/upload",
        rf"{_CLIENT}/keys/device_signing/upload$",
        rf"{_CLIENT}/keys/signatures/upload$",
        r"^/_matrix/client/unstable/io\.element\.msc4306/rooms/[^/]+/thread/[^/]+/subscription$",
        r"^/_matrix/client/unstable/io\.element\.msc4308/thread_subscriptions$",
    )),
    ("media", (r"^/_matrix/media/", r"^/_matrix/client/v1/media/", r"^/_matrix/federation/v1/media/")),
    ("sync", (
        r"^/_matrix/client/(r0|v3)/sync$",
        r"^/_matrix/client/(api/v1|r0|v3)/events$",
        r"^/_matrix/client/(api/v1|r0|v3)/initialSync$",
        r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
        # Simplified sliding sync (MSC4186, Element X): SlidingSyncRestServlet is registered on workers too.
        r"^/_matrix/client/unstable/org\.matrix\.simplified_msc3575/sync$",
    )),
    ("room", (
        rf"{_CLIENT}/rooms/.*/redact",
        rf"{_CLIENT}/rooms/.*/send",
        rf"{_CLIENT}/rooms/.*/state/",
        rf"{_CLIENT}/rooms/.*/(join|invite|leave|ban|unban|kick)$",
        rf"{_CLIENT}/join/",
        rf"{_CLIENT}/knock/",
        rf"{_CLIENT}/profile/",
        # Pagination: every request for one room must reach one process (docs/workers.md).
        rf"{_CLIENT}/rooms/.*/messages$",
    )),
    ("federation", (
        r"^/_matrix/federation/v1/version$",
        r"^/_matrix/federation/v1/event/",
        r"^/_matrix/federation/v1/state/",
        r"^/_matrix/federation/v1/state_ids/",
        r"^/_matrix/federation/v1/backfill/",
        r"^/_matrix/federation/v1/get_missing_events/",
        r"^/_matrix/federation/v1/publicRooms",
        r"^/_matrix/federation/v1/query/",
        r"^/_matrix/federation/v1/make_join/",
        r"^/_matrix/federation/v1/make_leave/",
        r"^/_matrix/federation/(v1|v2)/send_join/",
        r"^/_matrix/federation/(v1|v2)/send_leave/",
        r"^/_matrix/federation/v1/make_knock/",
        r"^/_matrix/federation/v1/send_knock/",
        r"^/_matrix/federation/(v1|v2)/invite/",
        r"^/_matrix/federation/v1/event_auth/",
        r"^/_matrix/federation/v1/timestamp_to_event/",
        r"^/_matrix/federation/v1/exchange_third_party_invite/",
        r"^/_matrix/federation/v1/user/devices/",
        r"^/_matrix/key/v2/query",
        r"^/_matrix/federation/v1/hierarchy/",
        # Inbound transactions, balanced by the sending server's address.
        r"^/_matrix/federation/v1/send/",
    )),
    ("client", (
        rf"{_CLIENT}/createRoom$",
        rf"{_CLIENT}/publicRooms$",
        rf"{_CLIENT}/rooms/.*/joined_members$",
        rf"{_CLIENT}/rooms/.*/context/.*$",
        rf"{_CLIENT}/rooms/.*/members$",
        rf"{_CLIENT}/rooms/.*/state$",
        r"^/_matrix/client/v1/rooms/.*/hierarchy$",
        r"^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
        r"^/_matrix/client/v1/rooms/.*/threads$",
        r"^/_matrix/client/unstable/im\.nheko\.summary/summary/.*$",
        r"^/_matrix/client/v1/room_summary/.*$",
        rf"{_CLIENT_NO_V1}/account/3pid$",
        rf"{_CLIENT_NO_V1}/account/whoami$",
        rf"{_CLIENT_NO_V1}/account/deactivate$",
        r"^/_matrix/client/versions$",
        rf"{_CLIENT}/voip/turnServer$",
        rf"{_CLIENT}/rooms/.*/event/",
        rf"{_CLIENT}/joined_rooms$",
        r"^/_matrix/client/v1/rooms/.*/timestamp_to_event$",
        r"^/_matrix/client/(api/v1|r0|v3|unstable/.*)/rooms/.*/aliases",
        rf"{_CLIENT}/search$",
        rf"{_CLIENT_NO_V1}/user/.*/filter(/|$)",
        rf"{_CLIENT}/directory/room/.*$",
        rf"{_CLIENT_NO_V1}/capabilities$",
        rf"{_CLIENT_NO_V1}/notifications$",
        rf"{_CLIENT_NO_V1}/keys/query$",
        rf"{_CLIENT_NO_V1}/keys/changes$",
        rf"{_CLIENT_NO_V1}/keys/claim$",
        rf"{_CLIENT_NO_V1}/room_keys/",
        rf"{_CLIENT}/login$",
        rf"{_CLIENT_NO_V1}/register$",
        rf"{_CLIENT_NO_V1}/register/available$",
        r"^/_matrix/client/v1/register/m\.login\.registration_token/validity$",
        rf"{_CLIENT_NO_V1}/password_policy$",
        rf"{_CLIENT_NO_V1}/user_directory/search$",
    )),
)
ROUTE_GROUPS = tuple(group for group, _ in ROUTES)
# Which roles may serve a route group, best first; with none of them in the preset, main serves it.
ROUTE_ROLES: dict[str, tuple[str, ...]] = {
    "main": (),
    "streams": ("streams",),
    "media": ("media",),
    "sync": ("sync", "client"),
    "room": ("room", "client"),
    "federation": ("federation_inbound",),
    "client": ("client",),
}
# Route groups whose requests the main process can serve itself when their workers are down (it
# cannot write another process's streams, and it loads no media repository once a worker does).
MAIN_CAN_SERVE = frozenset({"sync", "room", "federation", "client"})
# How a group of several workers shares a route group's requests: `user` sticks each user to one
# process (the access token's user part: /sync caches per user); `room` keeps a room on one process
# (pagination; event creation's per-room caches), else the user; `origin` keeps a remote server on one
# process (inbound transactions, docs/workers.md "Load balancing").
BALANCE = {"sync": "user", "room": "room", "client": "room", "federation": "origin", "streams": "user",
           "media": "user"}


# -- presets ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerGroup:
    """`count` identical worker processes; `pool` is each one's database connection pool (cp_max)."""

    name: str
    roles: tuple[str, ...]
    count: int = 1
    pool: int = 5
    memory_mb: int = 512

    @property
    def scalable(self) -> bool:
        return all(ROLES[role].many for role in self.roles)


# The main process's pool alone (the monolith), and beside workers, which take its load.
MONOLITH_POOL = 10
MAIN_POOL_WITH_WORKERS = 5

PRESETS: dict[str, tuple[WorkerGroup, ...]] = {
    # One process: small stacks (commstack's default, like matrix-docker-ansible-deploy's).
    "none": (),
    # Every core busy on a small host, in six processes: one writer creates and persists events
    # (no HTTP hop between the two, the costliest part of a send) and writes every other stream,
    # /sync on its own, the rest of the client and federation API on a generic worker, media, and
    # one worker for everything that runs in the background.
    "balanced": (
        WorkerGroup("writer", ("events", "streams", "room"), pool=10, memory_mb=1024),
        WorkerGroup("sync", ("sync",), pool=5, memory_mb=1024),
        WorkerGroup("client", ("client", "federation_inbound"), pool=10, memory_mb=1024),
        WorkerGroup("media", ("media",), pool=3, memory_mb=512),
        WorkerGroup("tasks", ("federation_sender", "pusher", "appservice", "user_dir", "background"), pool=5,
                    memory_mb=512),
    ),
    # One process per job, like matrix-docker-ansible-deploy's specialized-workers (room, sync,
    # client_reader and federation_reader workers, plus one of each other kind and the stream writers).
    "specialized": (
        WorkerGroup("event-persister", ("events",), count=2, pool=10, memory_mb=1024),
        WorkerGroup("stream-writer", ("streams",), pool=5, memory_mb=512),
        WorkerGroup("sync", ("sync",), count=2, pool=5, memory_mb=1024),
        WorkerGroup("room", ("room",), pool=10, memory_mb=1024),
        WorkerGroup("client-reader", ("client",), pool=5, memory_mb=1024),
        WorkerGroup("federation-reader", ("federation_inbound",), pool=5, memory_mb=512),
        WorkerGroup("federation-sender", ("federation_sender",), pool=3, memory_mb=512),
        WorkerGroup("pusher", ("pusher",), pool=3, memory_mb=256),
        WorkerGroup("media", ("media",), pool=3, memory_mb=512),
        WorkerGroup("appservice", ("appservice",), pool=3, memory_mb=256),
        WorkerGroup("user-dir", ("user_dir",), pool=3, memory_mb=256),
        WorkerGroup("background", ("background",), pool=3, memory_mb=512),
    ),
}
DEFAULT_PRESET = "none"
# At most this many processes of one group: each is a Python interpreter of its own.
MAX_COUNT = 16


def scalable_groups(preset: str) -> list[str]:
    """The groups of a preset whose count may be set (commstack:synapseWorkerCounts)."""
    return [group.name for group in PRESETS[preset] if group.scalable]


def count_problems(preset: str, counts: Mapping[str, object]) -> list[str]:
    """What is wrong with per-group counts for a preset (empty: nothing)."""
    if preset not in PRESETS:
        return [f"there is no preset {preset!r}"]
    scalable = scalable_groups(preset)
    names = [group.name for group in PRESETS[preset]]
    problems = []
    for name, value in counts.items():
        if name not in names:
            problems.append(f"the {preset} preset has no worker group {name!r}"
                            + (f" (its groups: {', '.join(names)})" if names else " (it runs no workers)"))
        elif name not in scalable:
            problems.append(f"{name!r} runs exactly one process (only {', '.join(scalable)} can have more)")
        elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
            problems.append(f"the count of {name!r} must be a whole number from 1 to {MAX_COUNT}, not {value!r}")
    return problems


# -- the plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerProcess:
    """One worker process (one container)."""

    name: str  # its instance name, docker name and host name: synapse-<group>-<n>
    group: str
    roles: tuple[str, ...]
    pool: int
    memory_mb: int

    @property
    def resources(self) -> tuple[str, ...]:
        found = dict.fromkeys(r for role in self.roles for r in ROLES[role].resources)
        return tuple(found) or ("health",)

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(s for role in self.roles for s in ROLES[role].streams)

    @property
    def routed(self) -> bool:
        """Whether the proxy sends it requests (it serves client, federation or media)."""
        return any(r in ("client", "federation", "media") for r in self.resources)

    @property
    def egress(self) -> bool:
        return any(ROLES[role].egress for role in self.roles)

    @property
    def appservice(self) -> bool:
        return any(ROLES[role].appservice for role in self.roles)

    @property
    def address(self) -> str:
        return f"{self.name}:{WORKER_PORT}"


@dataclass(frozen=True)
class WorkerPlan:
    """The processes of one stack, and everything derived from them."""

    preset: str = DEFAULT_PRESET
    groups: tuple[WorkerGroup, ...] = ()
    processes: tuple[WorkerProcess, ...] = field(default=())

    @property
    def enabled(self) -> bool:
        return bool(self.processes)

    @property
    def main_pool(self) -> int:
        return MAIN_POOL_WITH_WORKERS if self.enabled else MONOLITH_POOL

    @property
    def pools(self) -> dict[str, int]:
        """Database pool (cp_max) per process, main first."""
        return {MAIN: self.main_pool, **{p.name: p.pool for p in self.processes}}

    def with_role(self, role: str) -> list[WorkerProcess]:
        return [p for p in self.processes if role in p.roles]

    def process(self, name: str) -> WorkerProcess:
        return next(p for p in self.processes if p.name == name)

    def stream_writers(self) -> dict[str, list[str]]:
        writers: dict[str, list[str]] = {}
        for process in self.processes:
            for stream in process.streams:
                writers.setdefault(stream, []).append(process.name)
        return writers

    def instance_map(self, main_host: str) -> dict[str, dict]:
        """main's replication listener and each stream writer's (docs/workers.md, "Stream writers")."""
        entries = {MAIN: {"host": main_host, "port": MAIN_REPLICATION_PORT}}
        for process in self.processes:
            if "replication" in process.resources:
                entries[process.name] = {"host": process.name, "port": WORKER_PORT}
        return entries

    def duties(self) -> dict:
        """The shared-config options that move a job off the main process."""
        def one(role: str) -> Optional[str]:
            found = self.with_role(role)
            return found[0].name if found else None

        options: dict = {}
        if self.with_role("federation_sender"):
            options["federation_sender_instances"] = [p.name for p in self.with_role("federation_sender")]
        if self.with_role("pusher"):
            options["pusher_instances"] = [p.name for p in self.with_role("pusher")]
        for role, key in (("appservice", "notify_appservices_from_worker"),
                          ("user_dir", "update_user_directory_from_worker"),
                          ("background", "run_background_tasks_on"),
                          ("media", "media_instance_running_background_jobs")):
            if one(role):
                options[key] = one(role)
        return options

    def route_target(self, route_group: str) -> Optional[WorkerGroup]:
        """The worker group that serves a route group; None: the main process."""
        for role in ROUTE_ROLES[route_group]:
            for group in self.groups:
                if role in group.roles:
                    return group
        return None

    def members(self, group: WorkerGroup) -> list[WorkerProcess]:
        return [p for p in self.processes if p.group == group.name]


def worker_plan(preset: str = DEFAULT_PRESET, counts: Optional[Mapping[str, int]] = None) -> WorkerPlan:
    """The plan of a preset with its per-group counts; raises ValueError on bad input (settings check first)."""
    counts = dict(counts or {})
    problems = count_problems(preset, counts)
    if problems:
        raise ValueError("; ".join(problems))
    groups = tuple(replace(g, count=counts.get(g.name, g.count)) for g in PRESETS[preset])
    processes = tuple(WorkerProcess(name=f"{CONTAINER_PREFIX}-{g.name}-{n}", group=g.name, roles=g.roles, pool=g.pool,
                                    memory_mb=g.memory_mb)
                      for g in groups for n in range(1, g.count + 1))
    return WorkerPlan(preset=preset, groups=groups, processes=processes)


# -- Postgres's connection budget ---------------------------------------------------------------------

# Connections a role may hold beyond its pools: Synapse's start-up schema check opens its own, and an
# operator's psql session fits too.
ROLE_SLACK = 5
# superuser_reserved_connections (3 by default) plus the backup job's pg_dump and the init job's psql.
SUPERUSER_SLOTS = 10


def synapse_connection_limit(plan: WorkerPlan) -> int:
    """The Synapse role's CONNECTION LIMIT: every process's pool full, plus the slack."""
    return sum(plan.pools.values()) + ROLE_SLACK


def max_connections(role_limits: Sequence[int]) -> int:
    """Postgres max_connections for these role limits: all of them at once, the superuser's slots,
    and a fifth more for headroom, rounded up to ten; never below Postgres's default."""
    needed = (sum(role_limits) + SUPERUSER_SLOTS) * 1.2
    return max(DEFAULT_MAX_CONNECTIONS, int(math.ceil(needed / 10.0)) * 10)


# -- nginx: which process serves a request -------------------------------------------------------------

# nginx names: the upstream of the main process and of each worker group.
MAIN_UPSTREAM = "synapse_main"
_NAME_RE = re.compile(r"[^a-z0-9]+")


def upstream_name(group: Optional[WorkerGroup]) -> str:
    return MAIN_UPSTREAM if group is None else "synapse_" + _NAME_RE.sub("_", group.name)


def _quoted(text: str) -> str:
    if '"' in text or text.endswith("\\"):
        raise ValueError(f"an nginx map key cannot hold {text!r}")
    return f'"{text}"'


def render_nginx_routing(plan: WorkerPlan, main_address: str, resolver: Optional[str]) -> str:
    """nginx's http-context half of the routing: the route map, the keys that keep a user, a room or
    a remote server on one process, one upstream per worker group (and main), and an access log that
    names the group. `resolver` (Docker's DNS) re-resolves each server (nginx 1.27.3+ `resolve`), so a
    replaced container's new address is used; None renders plain addresses (for tests)."""
    if not plan.enabled:
        raise ValueError("the monolith needs no routing")
    resolve = " resolve" if resolver else ""
    lines = ["# Which Synapse process serves a request (components/matrix/workers.py; Synapse's docs/workers.md).",
             "# The first matching path wins; anything else goes to the main process."]
    if resolver:
        lines.append(f"resolver {resolver} valid=10s ipv6=off;")
    lines.append("map $uri $synapse_upstream_group {")
    lines.append(f"    default {MAIN_UPSTREAM};")
    for route_group, patterns in ROUTES:
        target = upstream_name(plan.route_target(route_group)) if route_group != "main" else MAIN_UPSTREAM
        lines.append(f"    # {route_group}")
        lines += [f"    {_quoted('~' + pattern)} {target};" for pattern in patterns]
    lines.append("}")
    lines += [
        "# The user a request is for: the localpart prefix of Synapse's syt_ access tokens (header or query).",
        "map $arg_access_token $synapse_query_user {",
        "    default $arg_access_token;",
        '    "~^syt_([^_]+)_" $1;',
        "}",
        "map $http_authorization $synapse_user {",
        "    default $http_authorization;",
        '    "~^Bearer syt_([^_]+)_" $1;',
        '    "" $synapse_query_user;',
        "}",
        "# The room a client request is about, else its user.",
        "map $uri $synapse_room {",
        "    default $synapse_user;",
        f'    "~{_CLIENT}/rooms/([^/]+)/" $2;',
        "}",
    ]
    balance_keys = {"user": "$synapse_user", "room": "$synapse_room", "origin": "$remote_addr"}
    targets: dict[str, tuple[Optional[WorkerGroup], list[str]]] = {MAIN_UPSTREAM: (None, [])}
    for route_group in ROUTE_GROUPS:
        group = plan.route_target(route_group) if route_group != "main" else None
        entry = targets.setdefault(upstream_name(group), (group, []))
        entry[1].append(route_group)
    for name, (group, route_groups) in targets.items():
        lines.append(f"upstream {name} {{")
        lines.append(f"    zone {name} 64k;")
        if group is None:
            lines.append(f"    server {main_address}{resolve};")
        else:
            members = plan.members(group)
            if len(members) > 1:
                lines.append(f"    hash {balance_keys[BALANCE[route_groups[0]]]} consistent;")
            lines += [f"    server {p.address} max_fails=1 fail_timeout=10s{resolve};" for p in members]
            if len(members) == 1 and all(r in MAIN_CAN_SERVE for r in route_groups):
                # Its one worker is down: the main process serves these requests meanwhile (nginx
                # passes a non-idempotent request on only if the worker never received it).
                lines.append(f"    server {main_address} backup{resolve};")
        lines.append("}")
    lines += [
        "# One line per proxied request: which group and process served it; no query string (it can hold tokens).",
        "log_format synapse_routing '$remote_addr [$time_local] \"$request_method $uri\" $status '",
        "                           '$synapse_upstream_group $upstream_addr $upstream_status $request_time';",
    ]
    return "\n".join(lines) + "\n"


def route_of(plan: WorkerPlan, path: str) -> str:
    """The upstream nginx picks for a request path (the map above, in Python: first match wins)."""
    for route_group, patterns in ROUTES:
        if any(re.search(pattern, path) for pattern in patterns):
            return MAIN_UPSTREAM if route_group == "main" else upstream_name(plan.route_target(route_group))
    return MAIN_UPSTREAM
