"""The operator web app, ``/metrics``, health probes and DICOMweb STOW-RS, in the node process or alone.

:func:`~node.web.app.create_app` builds the Starlette app from a :class:`~node.web.context.WebContext`;
:class:`~node.web.server.WebServer` serves it with uvicorn in a thread of ``cardionode serve``, and
:func:`~node.web.server.web_main` runs it alone (``cardionode web``). Access: :mod:`node.web.auth`;
pages and actions: :mod:`node.web.pages`.
"""

from node.web.app import create_app
from node.web.context import ComponentState, NodeProbe, WebContext
from node.web.server import WebServer, WebServerError

__all__ = ["ComponentState", "NodeProbe", "WebContext", "WebServer", "WebServerError", "create_app"]
