"""The edge tests share Redis with the endpoint tests: one redis-server helper."""

from tests.redisserver import redis_server, redis_url  # noqa: F401
