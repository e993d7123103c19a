"""A real asyncua OPC UA server for the OPC UA source's tests, run as a subprocess:

    python tests/opcua_server.py PORT ASSET[,ASSET...] CHANNEL[,CHANNEL...]

It serves one variable per asset and channel, node id ``ns=2;s=<asset>.<channel>``, at
opc.tcp://127.0.0.1:PORT/linewatch, and writes a new value to every variable every 50 ms
(a counter plus the channel's index, so each value is known), with a source timestamp. It
prints "ready" once it serves, and runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime


async def main(port: int, assets: list[str], channels: list[str]) -> None:
    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/linewatch")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:linewatch:test")
    plant = await server.nodes.objects.add_object(ns, "plant")
    variables = []
    for asset in assets:
        for j, channel in enumerate(channels):
            node_id = ua.NodeId(f"{asset}.{channel}", ns)
            var = await plant.add_variable(node_id, f"{asset}.{channel}", 0.0)
            variables.append((var, j))
    async with server:
        print("ready", flush=True)
        k = 0
        while True:
            k += 1
            now = datetime.now(UTC)
            for var, j in variables:
                await var.write_value(ua.DataValue(ua.Variant(float(k + j), ua.VariantType.Double),
                                                   SourceTimestamp=now, ServerTimestamp=now))
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(",")))
