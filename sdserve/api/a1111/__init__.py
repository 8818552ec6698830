"""The AUTOMATIC1111 dialect: ``/sdapi/v1`` (``webuiapi``, Krita/Photoshop plugins, bots).

``schemas.py`` holds the wire shapes, ``routes.py`` the routes and :func:`mount`.
"""
