"""``linewatch registry``: make the signing key, publish a model directory.

``keygen --out DIR`` writes ``signing.key`` (the aggregator's
``LINEWATCH_SIGNING_KEY_FILE``, mode 0600, never overwritten) and ``signing.pub`` (the
public key every agent is given to trust). ``publish MODEL_DIR --url URL --token-file F``
packs the directory with ``contract.artifact.pack`` and uploads it to
``{URL}/registry/versions`` with an admin token; the aggregator checks and signs it. Only
the standard library talks HTTP here, so a training machine needs no aggregator install.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from agent.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK

__all__ = ["DESCRIPTION", "add_arguments", "keygen", "publish", "run"]

DESCRIPTION = """\
The model registry, from a shell. keygen writes the ed25519 key pair the aggregator signs
model artifacts with (signing.key, for LINEWATCH_SIGNING_KEY_FILE) and the agents trust
(signing.pub). publish packs a model directory (card.json, model.onnx, CARD.md) and
uploads it to an aggregator with an admin token; the same directory again is a no-op.

examples:
  linewatch registry keygen --out /etc/linewatch/registry
  linewatch registry publish models/cmapss_fd001 --url http://127.0.0.1:8000 \\
      --token-file ~/.linewatch-admin-token --answers 42
"""

TIMEOUT_S = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    k = sub.add_parser("keygen", help="write signing.key (0600) and signing.pub")
    k.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="directory to write them to (created; existing keys are kept)")
    p = sub.add_parser("publish", help="pack a model directory and upload it")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("--url", required=True, help="the aggregator's base URL")
    p.add_argument("--token-file", type=Path, required=True, metavar="FILE",
                   help="file holding an admin API token (first line)")
    p.add_argument("--answers", type=int, default=None, metavar="TICKET_ID",
                   help="the retraining ticket this version answers")


def keygen(out: Path) -> tuple[Path, Path]:
    """Write a new key pair into ``out``; FileExistsError rather than replace a key the
    agents may already trust."""
    from contract.artifact import generate_key, public_pem

    out.mkdir(parents=True, exist_ok=True)
    private, public = out / "signing.key", out / "signing.pub"
    for path in (private, public):
        if path.exists():
            raise FileExistsError(f"{path} exists: agents may trust it; remove it first to "
                                  "replace the key")
    pem = generate_key()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(public_pem(pem))
    return private, public


def publish(model_dir: Path, url: str, token: str, answers: int | None = None
            ) -> tuple[int, dict[str, object]]:
    """Upload the packed directory; the HTTP status and the answer's JSON."""
    from contract.artifact import pack

    data = pack(model_dir)
    query = "" if answers is None else "?" + urllib.parse.urlencode({"answers": answers})
    request = urllib.request.Request(
        f"{url.rstrip('/')}/registry/versions{query}", data=data, method="POST",
        headers={"Content-Type": "application/gzip", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the response's socket
            body = exc.read()
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {"detail": body.decode("utf-8", "replace")[:500]}
        return exc.code, answer


def _say(text: str, *, err: bool = False) -> None:
    (sys.stderr if err else sys.stdout).write(text + "\n")


def run(args: argparse.Namespace) -> int:
    if args.registry_command == "keygen":
        try:
            private, public = keygen(args.out)
        except FileExistsError as exc:
            _say(f"error: {exc}", err=True)
            return EXIT_CONFIG
        _say(f"wrote {private} (set LINEWATCH_SIGNING_KEY_FILE to it; keep it secret) and "
             f"{public} (give it to every agent to trust)")
        return EXIT_OK
    try:
        token = args.token_file.read_text().splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        _say(f"error: --token-file {args.token_file}: no token in it ({exc})", err=True)
        return EXIT_CONFIG
    try:
        status, answer = publish(args.model_dir, args.url, token, args.answers)
    except urllib.error.URLError as exc:
        _say(f"error: cannot reach {args.url}: {exc.reason}", err=True)
        return EXIT_FAILED
    if status in (200, 201):
        version = answer.get("version")
        assert isinstance(version, dict)
        _say(f"{'stored' if status == 201 else 'already stored'}: {version['name']} "
             f"{version['version']} sha256 {version['sha256']}")
        return EXIT_OK
    _say(f"error: the registry answered {status}: {answer.get('detail', answer)}", err=True)
    return EXIT_FAILED
