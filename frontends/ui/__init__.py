"""`labd ui`: a local web dashboard — a client of the public protocol, like jupyter_server is of kernels.

:mod:`labd.frontends.ui.server` is the web server (Starlette on uvicorn, loopback only, token-protected);
``static/`` holds the page, its script and styles, served as packaged files with no build step and no CDN.
"""

from labd.frontends.ui.server import run

__all__ = ["run"]
