"""The status page every node serves at GET /: plain HTML, CSS and JavaScript shipped as package
data (no build step, nothing fetched from outside: nodes may have no internet).

The page is static; it reads the node's JSON routes (/v1/cluster for members, the
partition grid, generators and embedders; /v1/cluster/latency for the chart) every
2 s from the browser, with the API key an operator pastes when api.keys is on.
The files are read once, when the routes are built, so a request never touches
the disk. The Content-Security-Policy allows only this node's own scripts,
styles and JSON: the page puts operator-chosen names into the DOM as text only.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

# route -> (file in this package, media type)
ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html"),
    "/status/app.js": ("app.js", "text/javascript"),
    "/status/style.css": ("style.css", "text/css"),
}
HEADERS = {
    "Cache-Control": "no-cache",  # a node upgraded in place serves its new page at once
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def read_asset(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


class StatusPage:
    def __init__(self) -> None:
        self._bodies = {route: (read_asset(name), media) for route, (name, media) in ASSETS.items()}

    def routes(self) -> list[web.RouteDef]:
        return [web.get(route, self.asset) for route in ASSETS]

    async def asset(self, request: web.Request) -> web.Response:
        resource = request.match_info.route.resource
        assert resource is not None
        body, media = self._bodies[resource.canonical]
        return web.Response(body=body, content_type=media, charset="utf-8", headers=HEADERS)
