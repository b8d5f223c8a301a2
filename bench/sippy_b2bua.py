"""Run the Sippy B2BUA (PyPI ``sippy``, its ``b2bua`` entry point) for bench/cps.py.

sippy 2.5.0 cannot carry a single call from SIPp 3.6.1 as shipped; two settings are
changed at run time here, nothing else:

- its Contact carries the display name "Anonymous"; SIPp 3.6.1 then puts the display
  name into the Request-URI of its ACK and BYE (it strips ``<>`` only from a value that
  starts with ``<``), which sippy refuses: the display name is left out;
- it reads and sends each UDP socket with 3 threads, which reorders messages (a 180, even
  a 100, reaches the caller after the 200 and SIPp fails the call): 1 thread each.

Arguments are the ``b2bua`` command's, e.g. ``-f -u -A 0 -l 127.0.0.1 -p 5062 -s
127.0.0.1:5070 -c /tmp/b2bua.sock`` (foreground, no RADIUS, fixed destination).
"""

from __future__ import annotations

import sys

import sippy.SipContact as contact_module
import sippy.Udp_server as udp_module
from sippy.b2bua import main_func

_contact_init = contact_module.SipContact.__init__


def _init(self: object, body: object = None, address: object = None) -> None:
    _contact_init(self, body, address)
    if body is None and address is None:
        self.address.name = None  # type: ignore[attr-defined]


contact_module.SipContact.__init__ = _init  # type: ignore[method-assign]
udp_module.Udp_server_opts.nworkers = 1

if __name__ == "__main__":
    sys.argv[0] = "b2bua"
    sys.exit(main_func())
