"""The consumer a plant would write in an afternoon: paho -> line protocol -> InfluxDB 1.x.

No validation, no dedupe, no rules: each payload is ``json.loads``-ed, every item becomes
one line, and a writer thread posts what has gathered (up to 5,000 lines) at once. paho
acknowledges each message on receipt (its default), before anything is stored. It is the
yardstick of ``bench.consumers``, not a part of linewatch.

    python -m bench.bare_consumer --mqtt-port 1883 --influx-url http://127.0.0.1:8086 \
        --database bench_bare --topic 'linewatch/v1/+/+/+/predictions'
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import urllib.request
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

BATCH_LINES = 5000


def lines_of(payload: bytes) -> list[str]:
    """The envelope's predictions as line protocol (time: window end, in ns)."""
    env = json.loads(payload)
    agent, model = env["agent"], env["model"]["name"]
    out = []
    for item in env["items"]:
        ns = int(datetime.fromisoformat(item["window_end"]).timestamp() * 1e9)
        out.append(f"prediction,agent={agent},asset={item['asset']},model={model} "
                   f"score={item['score']},alert={str(item['alert']).lower()} {ns}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bare_consumer")
    p.add_argument("--mqtt-host", default="127.0.0.1")
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--influx-url", required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--topic", default="linewatch/v1/+/+/+/predictions")
    p.add_argument("--client-id", default="bench-bare")
    args = p.parse_args(argv)

    pending: queue.Queue[list[str]] = queue.Queue()
    url = f"{args.influx_url}/write?db={args.database}&precision=ns"

    def writer() -> None:
        while True:
            lines = pending.get()
            while len(lines) < BATCH_LINES:
                try:
                    lines.extend(pending.get_nowait())
                except queue.Empty:
                    break
            body = "\n".join(lines).encode()
            urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"))

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        pending.put(lines_of(message.payload))

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe(args.topic, qos=1)

    threading.Thread(target=writer, daemon=True).start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         clean_session=False)
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(args.mqtt_host, args.mqtt_port, keepalive=30)
    client.loop_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
