"""A legacy Matrix client for tests/e2e_nio.rs: matrix-nio (no OAuth support) signs in with the
login token the test browser brought back from the SSO redirect, checks whoami, creates a room,
sends a message and logs out. Prints one JSON object with what happened."""

import asyncio
import json
import sys

from nio import AsyncClient, LoginResponse, LogoutResponse, RoomCreateResponse, RoomSendResponse, WhoamiResponse


async def main(homeserver: str, login_token: str) -> None:
    client = AsyncClient(homeserver)
    out = {}
    try:
        login = await client.login(token=login_token, device_name="nio test client")
        if not isinstance(login, LoginResponse):
            out["login_error"] = str(login)
            return
        out.update(user_id=login.user_id, device_id=login.device_id, access_token=login.access_token)
        whoami = await client.whoami()
        if isinstance(whoami, WhoamiResponse):
            out.update(whoami_user_id=whoami.user_id, whoami_device_id=whoami.device_id)
        room = await client.room_create()
        if isinstance(room, RoomCreateResponse):
            out["room_id"] = room.room_id
            sent = await client.room_send(
                room.room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from matrix-nio"}
            )
            if isinstance(sent, RoomSendResponse):
                out["event_id"] = sent.event_id
        other = AsyncClient(homeserver)
        again = await other.login(token=login_token)
        await other.close()
        out["reuse_error"] = getattr(again, "status_code", None)
        logout = await client.logout()
        out["logged_out"] = isinstance(logout, LogoutResponse)
    finally:
        await client.close()
        print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
