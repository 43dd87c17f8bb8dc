"""`labd ui`: a local web dashboard — a client of the public protocol, like jupyter_server is of kernels.

:mod:`labd.frontends.ui.server` is the web app (Starlette, token-protected), :mod:`labd.frontends.ui.serve` runs it
(uvicorn on loopback only: the socket, the printed URL, the stop, ``--open``);
``static/`` holds the page, its script and styles, served as packaged files with no build step and no CDN.
"""

from labd.frontends.ui.serve import run

__all__ = ["run"]
