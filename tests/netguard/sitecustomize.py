"""Records every attempt to reach a non-loopback address (loaded via PYTHONPATH).

Python's audit hooks see ``socket.connect`` and ``socket.getaddrinfo`` in this process
and, because child processes load ``sitecustomize`` too, in every worker distilabel
starts. Violations are appended to ``$NETGUARD_LOG`` and the call is refused.
"""

import os
import sys

_LOG = os.environ.get("NETGUARD_LOG")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost", ""}


def _is_loopback(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host)
    return host in _LOOPBACK_NAMES or host.startswith("127.") or host == "0.0.0.0"


def _hook(event: str, args: tuple) -> None:
    target = None
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address and not _is_loopback(address[0]):
            target = address
    elif event == "socket.getaddrinfo" and not _is_loopback(args[0]):
        target = args[0]
    if target is not None:
        if _LOG:
            with open(_LOG, "a") as fh:
                fh.write(f"{os.getpid()} {event} {target!r}\n")
        raise OSError(f"netguard: network access to {target!r} refused in tests")


if _LOG:
    sys.addaudithook(_hook)
