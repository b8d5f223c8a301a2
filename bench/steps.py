"""Rising-rate load steps shared by the benchmarks: stop at the first failing step."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Step = Callable[
    [int, int, float], Awaitable[tuple[bool, str]]
]  # (port, rate, seconds) -> (passed, detail)


async def climb(
    name: str, unit: str, step: Step, port: int, rates: list[int], seconds: float
) -> int:
    """The highest rate whose step passed (0 if the first failed)."""
    best = 0
    for rate in rates:
        good, detail = await step(port, rate, seconds)
        print(f"  {name:<10} {rate:>6} {unit}  {'pass' if good else 'FAIL'}  {detail}", flush=True)
        if not good:
            break
        best = rate
    return best


def print_summary(what: str, metric: str, sipha: int, peer_name: str, peer: int | None) -> None:
    """The closing table of a climb: sipha, the peer (None: not installed), their ratio."""
    width = max(len(what), len(peer_name), 22)
    print()
    print(f"{what:<{width}} {metric:>26}")
    print(f"{'sipha (1 process)':<{width}} {sipha:>26}")
    if peer is not None:
        print(f"{peer_name:<{width}} {peer:>26}")
        if peer:
            print(f"\nsipha / {peer_name.split()[0]}: {sipha / peer:.2f}")
