"""The DeepInfra dialect: ``POST /v1/inference/{owner}/{name}`` (JSON or multipart).

``schemas.py`` holds the wire shapes, ``routes.py`` the route and :func:`mount`.
DeepInfra's OpenAI-compatible ``/v1/openai/images/...`` are the OpenAI Images routes,
which the app also mounts under that prefix.
"""
