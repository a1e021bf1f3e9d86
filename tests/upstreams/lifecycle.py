"""What the test servers of tests/upstreams/ share: exit when the test that started them
ends (its end of our stdin closes), so no server outlives its test."""

from __future__ import annotations

import os
import sys
import threading


def exit_on_stdin_eof() -> None:
    """With `IDGUARD_EXIT_ON_STDIN_EOF=1`: exit as soon as stdin reaches end of file."""
    if os.environ.get("IDGUARD_EXIT_ON_STDIN_EOF") != "1":
        return

    def wait() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=wait, name="stdin-eof", daemon=True).start()
