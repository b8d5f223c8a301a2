"""sipha: SIP high availability in pure Python (asyncio).

The protocol core lives in :mod:`sipha.sip` (sans-I/O), the asyncio transports in
:mod:`sipha.net`, and the engine that binds them in :mod:`sipha.stack`.
"""

__version__ = "0.4.1"
