"""Server.stop and waitress's wake-up pipe (its "trigger"), with the racy order forced, not waited for.

waitress's pull_trigger(thunk) queues the thunk, then writes a byte into the pipe to wake the loop
thread. When the loop is already awake (another thread pulled: a handler finishing a request), it can
run the thunk before that write. A stop whose last thunk closed the trigger (wasyncore.close_all) then
wrote into a closed fd: EBADF about one run in ten of these tests, or, had the number been reused
meanwhile by a socket or file another thread opened, a stray b"x" written into that."""

from __future__ import annotations

import http.client
import os
import time

from tfe_worker.httpapp import App, HTTPOptions, Server


def _pipe_id(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None  # closed
    return st.st_dev, st.st_ino


def test_stop_writes_every_wake_up_byte_into_its_own_open_pipe() -> None:
    app = App("stop-test")
    app.route("GET", "/x", lambda r: (200, {"ok": True}))
    srv = Server(app, HTTPOptions(threads=2))
    port = srv.start("127.0.0.1", 0)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/x")  # an open keep-alive connection: a channel for the stop to close
    assert conn.getresponse().read() == b'{"ok":true}'

    waitress_srv, loop = srv.server, srv.thread
    assert loop is not None
    trig = waitress_srv.trigger
    wfd = trig.trigger
    pipe = _pipe_id(wfd)
    physical_pull = trig._physical_pull
    seen: list[bool] = []

    def pull_after_the_loop_ran_the_thunk() -> None:
        os.write(wfd, b"x")  # another thread's pull: the loop wakes and runs what is queued
        deadline = time.monotonic() + 10
        while trig.thunks:
            assert time.monotonic() < deadline, "the loop did not run the queued thunk"
            time.sleep(0.01)
        seen.append(_pipe_id(wfd) == pipe)
        assert seen[-1], "the wake-up byte would go to a closed fd (or to whatever reused its number)"
        physical_pull()  # the write of the pull that queued the thunk, after the thunk ran

    trig._physical_pull = pull_after_the_loop_ran_the_thunk
    try:
        srv.stop(flush_timeout=1.0)
    finally:
        conn.close()
    assert len(seen) >= 2 and all(seen)  # the stop's two pulls (and a handler's, finishing the request)
    assert not loop.is_alive() and srv.server is None
    assert trig._closed and not waitress_srv._map  # and stop closed the pipe itself, after the loop ended
