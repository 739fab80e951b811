"""A signing-key rotation in another process, under steady load, refuses no valid request."""

from __future__ import annotations

import asyncio

from gateway import keyring
from tests.conftest import AUDIENCE, ISSUER, Gateway

FEEDBACK = "/api/v1/aiops/feedback"


async def test_key_rotation_under_load_refuses_zero_valid_requests(gateway: Gateway) -> None:
    cli_view = keyring.Keyring.load(gateway.ring.path)  # what `aiops keys rotate` would load
    statuses: list[int] = []
    stop = asyncio.Event()

    def fresh_token() -> str:
        # Each client signs with whatever key is active now, as a token issuer would.
        cli_view.reload_if_changed()
        return keyring.mint_token(
            cli_view,
            subject="load",
            roles=["viewer"],
            issuer=ISSUER,
            audience=AUDIENCE,
            ttl_seconds=300,
        )

    async def client(held: str) -> None:
        while not stop.is_set():
            token = held if len(statuses) % 2 else fresh_token()
            async with gateway.session.get(
                gateway.url(FEEDBACK), headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                statuses.append(resp.status)

    old_token = fresh_token()
    tasks = [asyncio.create_task(client(old_token)) for _ in range(8)]
    await asyncio.sleep(0.5)
    before = len(statuses)
    new_kid = await asyncio.to_thread(cli_view.rotate)
    await asyncio.sleep(1.5)  # keep the load on after the rotation
    stop.set()
    await asyncio.gather(*tasks)
    assert cli_view.active_kid == new_kid
    assert len(statuses) - before > 50, "the load was not steady"
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
