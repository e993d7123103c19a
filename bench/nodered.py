"""The Node-RED flow a plant would build instead: mqtt in -> a function that turns an
envelope's items into points -> influxdb batch (node-red-contrib-influxdb, InfluxDB 1.x).

``install`` puts the two npm packages, at the versions pinned here, into a private folder
(``var/bench/node-red``, never globally); ``start`` runs Node-RED there on a flow written
for the given broker and database, with its editor on a free loopback port.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "var" / "bench" / "node-red"
PACKAGES = {"node-red": "4.1.15", "node-red-contrib-influxdb": "0.7.0"}

# One message in, one batch write out: what the batch node does with msg.payload.
_TO_POINTS = """
const env = msg.payload;
msg.payload = env.items.map(i => ({
    measurement: "prediction",
    tags: {agent: env.agent, asset: i.asset, model: env.model.name},
    fields: {score: i.score, alert: i.alert},
    timestamp: Date.parse(i.window_end),
}));
return msg;
"""


def install() -> Path:
    """The private folder with the pinned packages (npm runs only when one is missing)."""
    red = HOME / "node_modules" / "node-red" / "red.js"
    plugin = HOME / "node_modules" / "node-red-contrib-influxdb" / "package.json"
    if red.exists() and plugin.exists():
        return HOME
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: install Node.js (20 or newer) to run the Node-RED "
                           "consumer")
    HOME.mkdir(parents=True, exist_ok=True)
    (HOME / "package.json").write_text(json.dumps(
        {"name": "linewatch-bench-node-red", "private": True, "dependencies": PACKAGES},
        indent=2))
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(HOME)],
                   check=True, cwd=HOME, stdout=subprocess.DEVNULL)
    return HOME


def flow(mqtt_host: str, mqtt_port: int, influx_host: str, influx_port: int, database: str,
         topic: str, client_id: str) -> list[dict[str, Any]]:
    """The flow: broker and database config nodes, mqtt in (QoS 1, parsed JSON), the
    function, the batch node (ms precision: window ends are whole milliseconds)."""
    return [
        {"id": "tab", "type": "tab", "label": "linewatch bench"},
        {"id": "broker", "type": "mqtt-broker", "name": "bench", "broker": mqtt_host,
         "port": str(mqtt_port), "clientid": client_id, "protocolVersion": "4",
         "keepalive": "30", "cleansession": False, "autoConnect": True},
        {"id": "influx", "type": "influxdb", "hostname": influx_host,
         "port": str(influx_port), "protocol": "http", "database": database,
         "name": "bench", "usetls": False, "influxdbVersion": "1.x"},
        {"id": "in", "type": "mqtt in", "z": "tab", "name": "", "topic": topic, "qos": "1",
         "datatype": "json", "broker": "broker", "nl": False, "rap": True, "rh": 0,
         "inputs": 0, "x": 100, "y": 100, "wires": [["points"]]},
        {"id": "points", "type": "function", "z": "tab", "name": "to points",
         "func": _TO_POINTS, "outputs": 1, "x": 300, "y": 100, "wires": [["write"]]},
        {"id": "write", "type": "influxdb batch", "z": "tab", "influxdb": "influx",
         "precision": "ms", "retentionPolicy": "", "name": "", "x": 500, "y": 100,
         "wires": []},
    ]


def start(folder: Path, flow_nodes: list[dict[str, Any]], port: int,
          log: Path) -> subprocess.Popen[bytes]:
    """Node-RED on ``flow_nodes``, its editor and admin API on 127.0.0.1:``port``."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found: install Node.js (20 or newer)")
    user = folder / "user"
    user.mkdir(parents=True, exist_ok=True)
    (user / "flows.json").write_text(json.dumps(flow_nodes))
    (user / "settings.js").write_text(
        "module.exports = {uiHost: '127.0.0.1', flowFile: 'flows.json', "
        "logging: {console: {level: 'warn'}}, editorTheme: {tours: false}};\n")
    with open(log, "ab") as out:
        return subprocess.Popen(
            [node, str(HOME / "node_modules" / "node-red" / "red.js"), "--userDir", str(user),
             "--port", str(port), "--settings", str(user / "settings.js")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
