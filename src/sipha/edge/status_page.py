"""The edge's HTML status page (``status.html``): no build step, refreshes from /status."""

from importlib.resources import files

STATUS_PAGE = files("sipha.edge").joinpath("status.html").read_text(encoding="utf-8")
