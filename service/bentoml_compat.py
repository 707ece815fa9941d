"""Every use of BentoML's private modules, in one place.

BentoML labels its request metrics (``bentoml_service_request_*``) with the raw request path and
has no option to bound that label: every random path a scanner tries would become a new series
in every process. Its metrics middleware, the outermost one, is a private class
(``bentoml._internal.server.http.instruments.RunnerTrafficMetricsMiddleware``), so the only way
in is to wrap it (:func:`bound_endpoint_label`) and undo the relabelling for routing
(:class:`RestorePath`). Checked with BentoML 1.4.40 (``pyproject.toml`` pins ``>=1.4,<1.5``);
``tests/service/test_monitoring.py`` reads the labels from the installed sources and
``tests/service/test_service.py`` checks the bound label through a real app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

UNMATCHED_ENDPOINT = "/unmatched"  # the one endpoint label of every unknown path
ORIGINAL_PATH = "flowad.original_path"  # scope key: the path before it was relabelled


def bound_endpoint_label(is_known: Callable[[str], bool]) -> None:
    """Makes BentoML's request metrics label any path for which ``is_known`` is false as
    ``UNMATCHED_ENDPOINT``, in this process (the middleware class is patched, so it holds for
    every app built in the process, before or after). Idempotent: the first ``is_known`` stays.

    Arguments:
        is_known: whether a path is one the service answers.
    """
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    middleware: Any = RunnerTrafficMetricsMiddleware
    if getattr(middleware, "flowad_bounded", False):
        return
    original = middleware.__call__

    async def relabelled(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope.get("type") == "http" and not is_known(path):
            scope = {**scope, "path": UNMATCHED_ENDPOINT, ORIGINAL_PATH: path}
        await original(self, scope, receive, send)

    middleware.__call__ = relabelled
    middleware.flowad_bounded = True


class RestorePath:
    """ASGI middleware that undoes :func:`bound_endpoint_label`'s relabelling for routing; the
    first of the service's own middleware, since the others read paths.

    Arguments:
        app: the wrapped ASGI application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if ORIGINAL_PATH in scope:
            scope = {**scope, "path": scope[ORIGINAL_PATH]}
        await self.app(scope, receive, send)
