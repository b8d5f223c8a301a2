"""A sipha UAS in a few lines: answer every call, hang up when the caller sends BYE.

python examples/uas.py udp:127.0.0.1:5080 tcp:127.0.0.1:5080
"""

import asyncio
import sys

from sipha.runtime import install_uvloop
from sipha.stack import SipStack
from sipha.ua import InboundCall, UserAgent, simple_sdp


async def main(listen: list[str]) -> None:
    stack = await SipStack(listen).start()

    async def on_invite(call: InboundCall) -> None:
        call.ring()
        call.answer(simple_sdp("127.0.0.1", 40000))

    UserAgent(stack, user="uas", on_invite=on_invite)
    print("ready", " ".join(str(s) for s in stack.listen_specs), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main(sys.argv[1:] or ["udp:127.0.0.1:5080"]))
