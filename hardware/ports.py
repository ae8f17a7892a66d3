"""pyserial ports that wait with poll(), so a process may hold any number of meter lines.

pyserial's `socket://` handler and its POSIX `Serial` wait for data with `select.select()`,
which refuses every file descriptor numbered FD_SETSIZE (1024) or above ("filedescriptor out of
range in select()"). A bridge with some hundreds of lines (a serial port takes five descriptors:
the device and two pipes) gets such numbers, and every port opened after that fails. The
classes here are pyserial's own with the waits done by `select.poll()`, which has no such
limit; `serial_for_url` picks them for `socket://` URLs and device paths and leaves every other
URL (`loop://`, `rfc2217://`, ...) to pyserial.

pyserial's `PosixPollSerial` is not used: its `read()` fails when a timeout passes with
nothing to read (pyserial 3.5), which is what every poll of a quiet line does, and its
`write()` still waits with select().
"""

from __future__ import annotations

import errno
import os
import select
import sys
from typing import Any

import serial
from serial.serialutil import (
    PortNotOpenError,
    SerialException,
    SerialTimeoutException,
    Timeout,
    to_bytes,
)
from serial.urlhandler import protocol_socket

__all__ = ["PollSocketSerial", "allow_lines", "descriptors", "serial_for_url", "wait_ready"]

# A POSIX serial port holds the device and two pipes (cancel_read, cancel_write): 5 descriptors.
DEVICE_FDS = 5

_RETRY = (errno.EAGAIN, errno.EALREADY, errno.EWOULDBLOCK, errno.EINPROGRESS, errno.EINTR)


def wait_ready(watch: list[tuple[int, int]], timeout: float | None) -> list[int]:
    """The descriptors of `watch` ((fd, poll events) pairs) that are ready, or report an error
    or a hang-up, within `timeout` s (None: for ever; 0: only look). Any fd number works."""
    poller = select.poll()
    for fd, events in watch:
        poller.register(fd, events)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return [fd for fd, _ in poller.poll(ms)]


def _wait(fd: int, event: int, abort_fd: int | None, timeout: Timeout) -> str:
    """Wait for `event` on `fd` within `timeout`: "ready", "timeout", or "cancelled" (a byte
    on `abort_fd`, pyserial's cancel_read/cancel_write pipe, which is emptied)."""
    watch = [(fd, event)] + ([(abort_fd, select.POLLIN)] if abort_fd is not None else [])
    ready = wait_ready(watch, timeout.time_left())
    if abort_fd is not None and abort_fd in ready:
        os.read(abort_fd, 1000)
        return "cancelled"
    return "ready" if ready else "timeout"


def _read_upto(recv: Any, fd: int, abort_fd: int | None, size: int,
               read_timeout: float | None, gone: str) -> bytes:
    """Up to `size` bytes from `recv` (socket.recv or os.read on `fd`), waiting with poll() at
    most `read_timeout`; a byte on `abort_fd` (cancel_read) stops it. Readiness with nothing to
    read means the other end is gone: SerialException(`gone`)."""
    read = bytearray()
    timeout = Timeout(read_timeout)
    while len(read) < size:
        got = _wait(fd, select.POLLIN, abort_fd, timeout)
        if got != "ready":
            break  # cancelled, or the timeout passed
        try:
            buf = recv(size - len(read))
        except OSError as exc:
            if exc.errno not in _RETRY:
                raise SerialException(f"read failed: {exc}") from exc
        else:
            if not buf:
                raise SerialException(gone)
            read.extend(buf)
        if timeout.expired():
            break
    return bytes(read)


def _write_all(send: Any, fd: int, abort_fd: int | None, data: Any,
               write_timeout: float | None) -> int:
    """Write `data` with `send` (socket.send or os.write on `fd`), waiting with poll() for room;
    a byte on `abort_fd` (cancel_write) stops it. SerialTimeoutException when the timeout
    passes first; the bytes sent."""
    view = memoryview(to_bytes(data))
    timeout = Timeout(write_timeout)
    sent = 0
    while sent < len(view):
        try:
            sent += send(view[sent:])
        except OSError as exc:
            if exc.errno not in _RETRY:
                raise SerialException(f"write failed: {exc}") from exc
        if timeout.is_non_blocking:
            return sent
        if sent < len(view):
            got = _wait(fd, select.POLLOUT, abort_fd, timeout)
            if got == "cancelled":
                break
            if got == "timeout":
                raise SerialTimeoutException("Write timeout")
    return sent


class PollSocketSerial(protocol_socket.Serial):
    """pyserial's `socket://` port, waiting with poll() instead of select()."""

    def close(self) -> None:
        """Close the port; the socket too when its shutdown fails (pyserial then leaks it, e.g.
        after the meter reset the connection)."""
        sock = self._socket
        try:
            super().close()
        finally:
            if sock is not None:
                sock.close()

    @property
    def in_waiting(self) -> int:
        """1 if something can be read now (as pyserial's handler), else 0."""
        if not self.is_open:
            raise PortNotOpenError()
        return len(wait_ready([(self._socket.fileno(), select.POLLIN)], 0))

    def read(self, size: int = 1) -> bytes:
        """Up to `size` bytes, waiting at most the port's timeout."""
        if not self.is_open:
            raise PortNotOpenError()
        return _read_upto(self._socket.recv, self._socket.fileno(), None, size, self._timeout,
                          "socket disconnected")

    def write(self, data: Any) -> int:
        """Send `data`; SerialTimeoutException if the write timeout passes first."""
        if not self.is_open:
            raise PortNotOpenError()
        return _write_all(self._socket.send, self._socket.fileno(), None, data,
                          self._write_timeout)

    def reset_input_buffer(self) -> None:
        """Discard whatever has arrived and not been read."""
        if not self.is_open:
            raise PortNotOpenError()
        while wait_ready([(self._socket.fileno(), select.POLLIN)], 0):
            try:
                if not self._socket.recv(4096):
                    return  # closed by the other end: nothing more will come
            except OSError as exc:
                if exc.errno not in _RETRY:
                    raise SerialException(f"read failed: {exc}") from exc
                return


if os.name == "posix":
    from serial.serialposix import Serial as _PosixSerial

    class PollSerial(_PosixSerial):
        """pyserial's POSIX serial port (a device, a pty), waiting with poll() not select()."""

        def read(self, size: int = 1) -> bytes:
            """Up to `size` bytes, waiting at most the port's timeout (cancel_read stops it)."""
            if not self.is_open:
                raise PortNotOpenError()
            fd = self.fd
            # A disconnected device is always ready to read and reads nothing.
            return _read_upto(lambda n: os.read(fd, n), fd, self.pipe_abort_read_r, size,
                              self._timeout, "device reports readiness to read but returned "
                              "no data (device disconnected or multiple access on port?)")

        def write(self, data: Any) -> int:
            """Send `data`; SerialTimeoutException if the write timeout passes first."""
            if not self.is_open:
                raise PortNotOpenError()
            fd = self.fd
            return _write_all(lambda chunk: os.write(fd, chunk), fd, self.pipe_abort_write_r,
                              data, self._write_timeout)

    __all__ += ["PollSerial"]
else:  # pragma: no cover - Windows: pyserial's own port does not use select()
    PollSerial = None


def serial_for_url(url: str, **kwargs: Any) -> serial.SerialBase:
    """Open `url` as `serial.serial_for_url` does, with the poll() ports where pyserial's
    would use select() (`socket://` and device paths)."""
    scheme = url.partition("://")[0].lower() if "://" in url else None
    klass = PollSocketSerial if scheme == "socket" else PollSerial if scheme is None else None
    if klass is None:
        return serial.serial_for_url(url, **kwargs)
    port = klass(None, **kwargs)
    port.port = url
    port.open()
    return port


def descriptors(url: str) -> int:
    """How many file descriptors the port of `url` holds open (a device path 5, a URL 1)."""
    return 1 if "://" in url else DEVICE_FDS


def allow_lines(urls: list[str], spare: int = 256) -> bool:
    """Raise the soft open-files limit (RLIMIT_NOFILE, often 1024) up to the hard one so that
    the ports of `urls` fit beside `spare` other descriptors; False if the hard one is too low."""
    if sys.platform == "win32":  # pragma: no cover - no such limit
        return True
    import resource

    need = sum(descriptors(url) for url in urls) + spare
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return True
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return False
    return target >= need
