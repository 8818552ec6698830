"""The web playground: a page at ``/`` that drives the Replicate API of the same server."""

from sdserve.web.routes import web_router

__all__ = ["web_router"]
