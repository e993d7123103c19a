"""The aggregator's web pages: tickets as risk cards, the fleet, model health.

Served by the aggregator itself under ``/ui`` (``/`` leads there), for a plant network
with no internet: the templates (Jinja2) render on the server, the charts are drawn by
uPlot, vendored under ``static/uplot`` with its licence, and no page names any other host.

- ``pages``: the routes; every change goes through the REST API's own route functions
  (same rules, same audit entries, with the token's name);
- ``sessions``: sign in with an API token, then a session cookie (HttpOnly,
  SameSite=Strict, Secure over https) and a CSRF token on every form; the JSON API keeps
  accepting only the ``Authorization`` header;
- ``risk``: a ticket's risk card in plain words.

``install(app)`` adds it all to the aggregator's app.
"""

from __future__ import annotations

from aggregator.web.pages import STATIC_DIR, STATIC_PREFIX, install

__all__ = ["STATIC_DIR", "STATIC_PREFIX", "install"]
