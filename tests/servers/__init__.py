"""Real servers the tests start on loopback ports and stop by their PID: redis-server and
PostgreSQL from Debian packages, moto's S3 endpoint from PyPI. A test that needs one skips
when it is not installed (``scripts/install`` installs them where apt-get can)."""
