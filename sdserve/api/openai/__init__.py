"""The OpenAI Images dialect: ``/v1/images/{generations,edits,variations}``.

``schemas.py`` holds the wire shapes, ``routes.py`` the routes and :func:`mount`, which
the app calls once per prefix it serves them under.
"""
