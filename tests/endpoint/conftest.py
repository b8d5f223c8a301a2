"""Fixtures for the endpoint tests: Redis (shared with the edge tests) and DNS."""

from tests.redisserver import redis_server, redis_url  # noqa: F401
