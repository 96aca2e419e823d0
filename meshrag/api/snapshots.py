"""/v1/cluster/snapshots: take a snapshot of this node's data and follow it (admin scope).

POST starts the copy (backup/snapshot.py) and answers 202 with the job at once;
GET /v1/cluster/snapshots/{name} is its progress (partitions done / total,
bytes), then its outcome. `meshrag snapshot` polls it. The snapshot is written
under the node's own data directory (snapshots/<name>/): a request names it, it
never chooses a path, so an admin key cannot make the node write elsewhere.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from meshrag.api.errors import json_response
from meshrag.api.public import read_body
from meshrag.backup.manifest import check_name
from meshrag.backup.snapshot import Snapshots, SnapshotSources
from meshrag.config import Config
from meshrag.errors import NotFound, ValidationError
from meshrag.wire import printable

MAX_SNAPSHOT_BODY_BYTES = 1024


class SnapshotNode(Protocol):
    config: Config

    def snapshot_sources(self) -> SnapshotSources:
        """This node's storage as a snapshot reads it; raises 421/503 when it has none (yet)."""
        ...


class SnapshotRoutes:
    def __init__(self, node: SnapshotNode) -> None:
        self.snapshots = Snapshots(lambda: node.snapshot_sources())

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/cluster/snapshots", self.create),
            web.get("/v1/cluster/snapshots/{name}", self.status),
        ]

    async def create(self, request: web.Request) -> web.Response:
        name = await read_body(request, MAX_SNAPSHOT_BODY_BYTES, parse_create)
        job = await self.snapshots.start(name)
        return json_response(request, job.as_dict(), status=202)

    async def status(self, request: web.Request) -> web.Response:
        name = check_name(request.match_info["name"])
        found = await self.snapshots.status(name)
        if found is None:
            raise NotFound(f"no snapshot {name!r} on this node", field="name")
        return json_response(request, found)


def parse_create(body: Any) -> str | None:
    """{"name": optional snapshot name}; without one the node names it by the time (UTC)."""
    if not isinstance(body, dict):
        raise ValidationError("the body must be an object, e.g. {\"name\": \"before-upgrade\"} or {}")
    unknown = sorted(set(body) - {"name"})
    if unknown:
        field = printable(unknown[0])
        raise ValidationError(f"unknown field {field!r}", field=field)
    name = body.get("name")
    return None if name is None else check_name(name)
