"""Stability AI's APIs: REST v1, REST v2beta and the gRPC ``GenerationService``.

``engines.py`` (engine ids, samplers, style presets, prompts) and ``results.py``
(artifacts, finish reasons, error shapes) are shared by the three; each has its own
schemas and routes (``v1_*``, ``v2_*``) or its gRPC servicer (``grpc_*``).
"""
