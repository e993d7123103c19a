"""What a webhook target receives: linewatch's JSON, a Slack message or a Teams card.

Pure functions of a notification (``db.Notification``: the ticket as it was, the event,
whether it announces the incident) and, for Slack, the ``ts`` of the incident's first
message. Every body names the incident, so a receiver can thread or deduplicate: the
JSON body carries ``incident`` and ``update``; Slack replies in the thread when it can,
and otherwise starts an update's text with ``update:``; a Teams card's title does the same.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA", "json_body", "render", "slack_body", "summary", "teams_body"]

SCHEMA = 1
_VERBS = {
    "opened": "opened", "escalated": "escalated", "reclassified": "reclassified",
    "acknowledged": "acknowledged", "resolved": "resolved", "reopened": "reopened",
}
_WHAT = {
    "maintenance": "risk of failure", "sensor": "sensor fault", "inspect": "inputs the model "
    "cannot judge", "retraining": "the model needs retraining",
}


def summary(event: str, announce: bool, ticket: dict[str, Any]) -> str:
    """One line for people: what happened to which ticket.

    >>> summary("opened", True, {"id": 7, "kind": "maintenance", "asset": "pump-3",
    ...         "site": "p1", "line": "l2"})
    'maintenance ticket 7 opened: pump-3 (p1/l2), risk of failure'
    >>> summary("resolved", False, {"id": 7, "kind": "maintenance", "asset": "pump-3",
    ...         "site": "p1", "line": "l2", "outcome": "confirmed_failure"})
    'update: maintenance ticket 7 resolved: pump-3 (p1/l2), outcome confirmed_failure'
    """
    verb = _VERBS.get(event, event)
    if announce and event != "opened":
        verb = f"open ({verb})"  # first news of a ticket opened while it was past
    tail = (f"outcome {ticket.get('outcome')}" if event == "resolved"
            else _WHAT.get(str(ticket.get("kind")), ""))
    text = (f"{ticket.get('kind')} ticket {ticket.get('id')} {verb}: {ticket.get('asset')} "
            f"({ticket.get('site')}/{ticket.get('line')}), {tail}")
    return text if announce else f"update: {text}"


def json_body(notification_id: int, incident: str, event: str, announce: bool,
              event_at: str, created_at: str, ticket: dict[str, Any]) -> dict[str, Any]:
    """linewatch's own body: everything, for scripts and CMMS adapters. ``id`` is the
    same on every retry (an idempotency key); ``incident`` on every notification about
    one ticket."""
    return {
        "schema": SCHEMA, "id": notification_id, "incident": incident, "event": event,
        "update": not announce, "event_at": event_at, "recorded_at": created_at,
        "summary": summary(event, announce, ticket), "ticket": ticket,
    }


def _facts(ticket: dict[str, Any], event_at: str) -> list[tuple[str, str]]:
    model = ticket.get("model") or {}
    facts = [("Asset", f"{ticket.get('asset')} ({ticket.get('site')}/{ticket.get('line')})"),
             ("Status", str(ticket.get("status"))),
             ("When", event_at),
             ("Model", f"{model.get('name')} {model.get('version')}")]
    if ticket.get("max_score") is not None:
        facts.append(("Risk", f"{ticket['alerts']} of {ticket['windows']} windows alert, "
                              f"highest {ticket['max_score']:.2f}"))
    if ticket.get("action"):
        facts.append(("Do", str(ticket["action"])))
    if ticket.get("outcome"):
        facts.append(("Outcome", str(ticket["outcome"])))
    return facts


def slack_body(event: str, announce: bool, event_at: str, ticket: dict[str, Any], *,
               channel: str | None = None, thread_ts: str | None = None) -> dict[str, Any]:
    """A Slack message (``text`` for notifications, ``blocks`` for the channel). With
    ``thread_ts`` (the incident's first message, from chat.postMessage) it is a reply in
    that thread; without, an update says ``update:`` first."""
    text = summary(event, announce, ticket)
    if thread_ts is not None and text.startswith("update: "):
        text = text.removeprefix("update: ")
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in _facts(ticket, event_at)]
    body: dict[str, Any] = {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}},
                   {"type": "section", "fields": fields[:10]}],
    }
    if channel is not None:
        body["channel"] = channel
    if thread_ts is not None:
        body["thread_ts"] = thread_ts
    return body


def teams_body(event: str, announce: bool, event_at: str, incident: str,
               ticket: dict[str, Any]) -> dict[str, Any]:
    """A Teams message holding an Adaptive Card (what Teams workflow webhooks take)."""
    card = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": True,
             "text": summary(event, announce, ticket)},
            {"type": "FactSet", "facts": [{"title": k, "value": v}
                                          for k, v in _facts(ticket, event_at)]},
            {"type": "TextBlock", "isSubtle": True, "wrap": True,
             "text": f"incident {incident}"},
        ],
    }
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}


def render(kind: str, *, notification_id: int, incident: str, event: str, announce: bool,
           event_at: str, created_at: str, ticket: dict[str, Any],
           channel: str | None = None, thread_ts: str | None = None) -> dict[str, Any]:
    """The body for a target of ``kind`` (json, slack or teams)."""
    if kind == "slack":
        return slack_body(event, announce, event_at, ticket, channel=channel,
                          thread_ts=thread_ts)
    if kind == "teams":
        return teams_body(event, announce, event_at, incident, ticket)
    return json_body(notification_id, incident, event, announce, event_at, created_at, ticket)
