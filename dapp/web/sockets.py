"""Socket.IO handlers: only logged-in sessions connect, and every event checks the user again.

Flask-SocketIO handlers skip `before_request` and see a copy of the session taken at connect, so
each handler asks `current_user()` itself: a logged-out or expired session is refused.
Cross-origin connections are refused by the server (same-origin is engineio's default).

Client → server events: ``refresh`` (send me the full state again; answers {"ok": bool}).
Server → client events: ``chain``, ``wallet``, ``market``, ``notice``, ``session_expired``,
``agent`` (one entry of the trading agent's log, to its owner's room only), ``agent_log`` (the
whole log, numbered, to a socket that just connected: what was logged while the page loaded).
"""

from __future__ import annotations

from typing import Any

from flask import request
from flask_socketio import SocketIO, disconnect, emit, join_room

from dapp.services import messages
from dapp.web.extensions import AppState
from dapp.web.live import MARKET_ROOM, user_room
from dapp.web.security import current_user


def register_handlers(socketio: SocketIO, ext: AppState) -> None:
    """Attach the connect/disconnect/refresh handlers to this app's SocketIO."""

    @socketio.on("connect")
    def on_connect(auth: Any = None) -> None:
        """Accept logged-in sessions only; join the user's room and the market room."""
        user = current_user()
        if user is None:
            raise ConnectionRefusedError(messages.SOCKET_LOGIN_FIRST)
        join_room(user_room(user.address))
        join_room(MARKET_ROOM)
        ext.hub.joined(request.sid, user.session_id, user.address)  # type: ignore[attr-defined]

    @socketio.on("disconnect")
    def on_disconnect(*args: Any) -> None:
        """Forget the socket."""
        ext.hub.left(request.sid)  # type: ignore[attr-defined]

    @socketio.on("refresh")
    def on_refresh(data: Any = None) -> dict[str, Any]:
        """Send this socket the full state again (after the user checked in)."""
        user = current_user()
        if user is None:
            emit("session_expired", {"reason": "not logged in"})
            disconnect()
            return {"ok": False, "error": messages.SOCKET_LOGIN_FIRST}
        ext.hub.greet(request.sid, user.address)  # type: ignore[attr-defined]
        return {"ok": True}
