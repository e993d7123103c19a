"""The model health report for people who want a yes or a no: Markdown and HTML.

It says in plain words, with natural frequencies ("31 of 40 alerts were real faults"), what
``aggregator.figures.compute`` found. Every number comes from the ``HealthFigures`` it is
given; this module only words and formats them (percentages, dates, units), and never
recomputes a figure. Both renderings are built from the same sections, so they say the same
thing.

Safety: names (assets, sites, lines, models) come from the field and are escaped: for HTML
with the standard library's ``html.escape``; for Markdown with backslashes, so that an
asset called ``<script>`` is shown as text by any Markdown renderer. The HTML page is
self-contained (inline style, no scripts, no external assets).

Examples
--------
>>> from datetime import UTC, datetime
>>> from aggregator.figures import compute
>>> f = compute([], since=datetime(2026, 3, 1, tzinfo=UTC),
...             until=datetime(2026, 4, 1, tzinfo=UTC), target_f1=0.8)
>>> headline(f)
'Too early to say: not enough outcomes yet.'
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from aggregator.figures import (
    Action,
    EstimateCheck,
    Figure,
    GroupFigures,
    HealthFigures,
    LeadTime,
    MissedFailure,
)
from aggregator.operations import PSI_MODERATE, PSI_SHIFTED, Findings, ModelOperations

__all__ = ["headline", "render_html", "render_markdown"]

# How many missed failures a sentence names before it says "and N more".
_MAX_NAMED = 10

_HEADLINES: dict[Action, str] = {
    "keep": "Yes, the model still works: keep it.",
    "watch": "Probably, but not for certain: watch it.",
    "retrain": "No, it needs work: retrain it.",
    "not_enough_data": "Too early to say: not enough outcomes yet.",
}
_ACTION_WORDS: dict[Action, str] = {
    "keep": "Keep", "watch": "Watch", "retrain": "Retrain",
    "not_enough_data": "Not enough data",
}


@dataclass(frozen=True, slots=True)
class _Para:
    text: str
    strong: bool = False


@dataclass(frozen=True, slots=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class _Section:
    title: str
    blocks: tuple[_Para | _Table, ...]


# --------------------------------------------------------------------------- formatting


def _pct(value: float) -> str:
    """A share in whole percent; never "100 %" or "0 %" unless it is exactly that."""
    whole = math.floor(value * 100 + 0.5)
    if value < 1 and whole >= 100:
        whole = 99
    elif value > 0 and whole <= 0:
        whole = 1
    return f"{whole} %"


def _score(value: float) -> str:
    """An F1 with two decimals; never "1.00" or "0.00" unless it is exactly that."""
    text = f"{value:.2f}"
    if value < 1 and text == "1.00":
        return "0.99"
    if value > 0 and text == "0.00":
        return "0.01"
    return text


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _were(n: int) -> str:
    return "was" if n == 1 else "were"


def _is(n: int) -> str:
    return "is" if n == 1 else "are"


def _rate(value: float) -> str:
    if value == 0:
        return "0"
    if value < 0.01:
        return "less than 0.01"
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _money(value: float, currency: str) -> str:
    amount = f"{value:,.0f}" if value == int(value) else f"{value:,.2f}"
    return f"{amount} {currency}".strip()


def _duration(seconds: float, unit_of: float) -> str:
    """``seconds`` in days, or in hours when ``unit_of`` (the median) is under two days."""
    if abs(unit_of) >= 2 * 86_400:
        return f"{seconds / 86_400:.1f} days"
    return f"{seconds / 3_600:.1f} hours"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


def _day(when: datetime, with_year: bool) -> str:
    # Not strftime's %b: that follows the process's locale.
    day = f"{when.day} {_MONTHS[when.month - 1]}"
    return f"{day} {when.year}" if with_year else day


def _last_day(f: HealthFigures) -> datetime:
    # ``until`` is excluded: the last day shown is the one just before it.
    return f.until - timedelta(microseconds=1)


def _spans_years(f: HealthFigures) -> bool:
    return f.since.year != _last_day(f).year


def _interval(fig: Figure, fmt: str) -> str:
    assert fig.low is not None and fig.high is not None
    show = _pct if fmt == "pct" else _score
    return f"likely between {show(fig.low)} and {show(fig.high)}"


def _not_enough(what: str, f: HealthFigures) -> str:
    return (f"Not enough outcomes yet to say: {what} so far; at least {f.min_outcomes} are "
            "needed for a useful figure.")


def _cell(fig: Figure, fmt: str) -> str:
    if fig.value is None or fig.low is None or fig.high is None:
        return "-"
    show = _pct if fmt == "pct" else _score
    text = f"{show(fig.value)} ({show(fig.low)} to {show(fig.high)})"
    return text if fig.enough else f"{text}, too few"


# --------------------------------------------------------------------------- sentences


def headline(f: HealthFigures) -> str:
    """The yes-or-no answer, in one line."""
    assert f.overall.verdict is not None
    return _HEADLINES[f.overall.verdict.action]


def _named(missed: Sequence[MissedFailure], f: HealthFigures) -> str:
    several_sites = len({m.site for m in missed}) > 1
    years = _spans_years(f)
    names = [f"{m.asset} ({m.site + ', ' if several_sites else ''}{_day(m.at, years)})"
             for m in missed[:_MAX_NAMED]]
    more = len(missed) - len(names)
    return ", ".join(names) + (f" and {more} more" if more else "")


def _precision(g: GroupFigures, f: HealthFigures) -> list[_Para]:
    p = g.precision
    if p.value is None:
        out = [_Para(_not_enough("no alerts resolved", f))]
    elif not p.enough:
        out = [_Para(_not_enough(f"{_plural(g.alerts, 'alert')} resolved", f)),
               _Para(f"So far {g.real} of {g.alerts} {_were(g.alerts)} real faults "
                     f"({_pct(p.value)}, {_interval(p, 'pct')}).")]
    else:
        out = [_Para(f"{g.real} of {_plural(g.alerts, 'alert')} {_were(g.real)} real faults: "
                     f"{_pct(p.value)}, {_interval(p, 'pct')}.")]
    extra = []
    if g.not_counted:
        extra.append(f"{_plural(g.not_counted, 'more ticket')} {_were(g.not_counted)} closed "
                     f"without a verdict (superseded or other) and {_is(g.not_counted)} not "
                     "counted.")
    if g.open:
        extra.append(f"{_plural(g.open, 'alert')} {_is(g.open)} still open.")
    if extra:
        out.append(_Para(" ".join(extra)))
    return out


def _recall(g: GroupFigures, f: HealthFigures) -> list[_Para]:
    r = g.recall
    failures = g.real + g.missed
    missed = ("it missed none" if not g.missed
              else f"it missed {g.missed}: {_named(g.missed_failures, f)}")
    if r.value is None:
        out = [_Para(_not_enough("no failures known (caught or missed)", f))]
    elif not r.enough:
        out = [_Para(_not_enough(f"{_plural(failures, 'failure')} known (caught or missed)",
                                 f)),
               _Para(f"So far the model caught {g.real} of {failures} ({_pct(r.value)}, "
                     f"{_interval(r, 'pct')}); {missed}.")]
    else:
        out = [_Para(f"The model caught {g.real} of {_plural(failures, 'failure')} "
                     f"({_pct(r.value)}, {_interval(r, 'pct')}); {missed}.")]
    if f.unattributed_missed and f.by_model:
        out.append(_Para(
            f"{_plural(f.unattributed_missed, 'missed failure')} {_were(f.unattributed_missed)}"
            " not linked to a model version; the figures per model version leave "
            f"{'it' if f.unattributed_missed == 1 else 'them'} out."))
    return out


def _f1(g: GroupFigures, f: HealthFigures) -> list[_Para]:
    s = g.f1
    source = f" ({f.target_source})" if f.target_source else ""
    target = f"The target is {_score(f.target_f1)}{source}."
    what = ("F1 weighs wrong alerts and missed failures together; 1 would be perfect.")
    if s.value is None:
        return [_Para(_not_enough("no outcomes", f)), _Para(f"{what} {target}")]
    if not s.enough:
        return [_Para(_not_enough(_plural(s.n, "outcome"), f)),
                _Para(f"So far F1 is {_score(s.value)}, {_interval(s, 'score')}. {what} "
                      f"{target}")]
    return [_Para(f"F1 is {_score(s.value)}, {_interval(s, 'score')}. {what} {target}")]


def _lead(lt: LeadTime) -> list[_Para]:
    if lt.n == 0 or lt.median_s is None or lt.q1_s is None or lt.q3_s is None:
        return [_Para("No real faults yet, so no warning time to measure.")]
    m = lt.median_s
    when = "before" if m >= 0 else "after"
    text = (f"Real faults were flagged a median of {_duration(abs(m), m)} {when} the failure "
            f"(half of them between {_duration(lt.q1_s, m)} and {_duration(lt.q3_s, m)}; "
            f"{_plural(lt.n, 'fault')}).")
    if lt.from_resolution:
        text += (f" For {lt.from_resolution} of them no failure time was recorded (fixed "
                 "before failing, or not dated): the time the ticket was closed stands in.")
    return [_Para(text)]


def _cost(g: GroupFigures) -> list[_Para]:
    c = g.cost
    if c.visits == 0:
        return [_Para("No alerts were resolved, so there are no technician visits to count.")]
    rate = ("" if g.false_alarms_per_asset_month is None
            else f" (about {_rate(g.false_alarms_per_asset_month)} per machine per month)")
    text = (f"{_plural(c.visits, 'alert')} meant {_plural(c.visits, 'technician visit')}; "
            f"{_plural(c.wasted_visits, 'false alarm')} cost "
            f"{_plural(c.wasted_visits, 'technician visit')}{rate}.")
    if c.visit_cost is not None and c.total is not None and c.wasted is not None:
        text += (f" At {_money(c.visit_cost, c.currency)} a visit: "
                 f"{_money(c.total, c.currency)} in all, {_money(c.wasted, c.currency)} of "
                 "it on false alarms.")
    return [_Para(text)]


def _drift(g: GroupFigures) -> list[_Para]:
    d = g.drift
    began = (f" ({_plural(d.started, 'drift condition')} began during the period.)"
             if d.started else "")
    if d.retraining_tickets:
        ids = ", ".join(f"#{i}" for i in d.retraining_tickets)
        text = (f"Yes: {_plural(len(d.retraining_tickets), 'retraining ticket')} "
                f"{_is(len(d.retraining_tickets))} open ({ids}): its evidence says why "
                "(the model's inputs moved beyond what it was trained on, or its F1 fell "
                "below the target).")
        if d.conditions:
            text += (f" {_plural(d.conditions, 'drift condition')} "
                     f"{_is(d.conditions)} active on "
                     f"{_plural(d.assets, 'machine')}.")
        return [_Para(text + began)]
    if d.conditions:
        return [_Para(f"Its inputs are moving: {_plural(d.conditions, 'drift condition')} "
                      f"{_is(d.conditions)} active on "
                      f"{_plural(d.assets, 'machine')}, but not yet enough for a retraining "
                      f"ticket.{began}")]
    return [_Para(f"No: no drift condition is active and no retraining ticket is open.{began}")]


def _ms(value: float) -> str:
    return f"{value:.2g} ms" if value < 1 else f"{value:.1f} ms"


def _agents_sentence(op: ModelOperations) -> str:
    a = op.agents
    if not a.reporting:
        return "No agent sent a health report on it."
    text = f"{_plural(a.reporting, 'agent')} reported, {a.complete} complete"
    if a.completeness is None:
        text += " (no delivery records for the period)"
    else:
        lost = (f"; lost windows: {', '.join(a.incomplete[:_MAX_NAMED])}"
                + (f" and {len(a.incomplete) - _MAX_NAMED} more"
                   if len(a.incomplete) > _MAX_NAMED else "") if a.incomplete else "")
        text += (f" ({100 * a.completeness:.1f} % of "
                 f"{a.windows_received + a.windows_undeliverable:,} windows arrived{lost})")
    lt = op.latency
    if lt.median_ms is None or lt.max_ms is None:
        return text + "; no inference time reported."
    return (text + f"; inference {_ms(lt.median_ms)} median (the middle of the agents' "
            f"medians), at most {_ms(lt.max_ms)}.")


_READINGS = {"stable": "stable", "moderate": "moderately shifted", "shifted": "shifted"}


def _scores_sentence(op: ModelOperations) -> str:
    s = op.scores
    if s.reading is None:
        return f"Scores: not compared with a reference ({s.reason})."
    if s.reading == "not_enough_data":
        return f"Scores: not enough data to compare with the card's reference ({s.reason})."
    assert s.psi is not None
    text = f"Scores of {s.windows:,} windows"
    if s.above_p95 is not None and s.above_p95_expected is not None:
        text += (f": {_pct(s.above_p95)} above the reference's 95th percentile "
                 f"({_pct(s.above_p95_expected)} expected)")
    way = f" {s.direction}" if s.direction and s.reading != "stable" else ""
    text += (f"; PSI {s.psi:.2f} against the card's reference: {_READINGS[s.reading]}{way} "
             f"(below {PSI_MODERATE} stable, up to {PSI_SHIFTED} moderate, above it "
             "shifted).")
    r = s.alert_rate
    if r.value is not None and r.low is not None and r.high is not None:
        text += (f" Alerts on {_pct(r.value)} of windows ({_interval(r, 'pct')})")
        if s.reference_alert_rate is not None:
            text += f", against {_pct(s.reference_alert_rate)} in training"
            text += {"higher": ": higher", "lower": ": lower", "in_line": ": in line",
                     None: ""}[s.alert_rate_reading]
        text += "."
    return text


def _findings(f: Findings) -> str:
    named = []
    for item in f.items[:3]:
        where = f" on {_plural(item.assets, 'asset')}" if item.assets else ""
        named.append(f"{item.monitor} {item.detector}{where}")
    more = len(f.items) - len(named)
    return ", ".join(named) + (f" and {more} more" if more > 0 else "")


def _findings_sentence(op: ModelOperations) -> str:
    c, e = op.conditions, op.events
    if not c.items:
        text = "No drift or data-quality condition was active."
    else:
        text = (f"{_plural(c.drift, 'input-drift condition')} and "
                f"{_plural(c.quality, 'data-quality condition')} ({_findings(c)}).")
    if not op.series_available:
        return text + " The agents' events could not be read (series store down)."
    if e.items:
        text += (f" The agents sent {_plural(e.drift, 'drift event')} and "
                 f"{_plural(e.quality, 'data-quality event')} (a start and an end each"
                 f"{'; the newest only, there were more' if op.events_truncated else ''}).")
    return text


def _operations(f: HealthFigures) -> list[_Para]:
    out = []
    for op in f.operations:
        label = f"{op.model_name} {op.model_version}: " if len(f.operations) > 1 else ""
        out += [_Para(label + _agents_sentence(op)), _Para(_scores_sentence(op)),
                _Para(_findings_sentence(op))]
    return out


_METRIC_WORDS = {"precision": "the share of alerts that are right", "recall":
                 "the share of failures caught", "f1": "F1"}


def _estimate(check: EstimateCheck) -> str:
    fmt = "score" if check.metric == "f1" else "pct"
    show = _score if fmt == "score" else _pct
    est = show(check.estimated)
    if check.low is not None and check.high is not None:
        est += f" (likely between {show(check.low)} and {show(check.high)})"
    text = (f"The gateways estimated {_METRIC_WORDS[check.metric]} per scored window at "
            f"{est} without waiting for outcomes; ")
    real = check.realised
    if real.value is None:
        return text + "there are no outcomes yet to compare it with."
    if check.basis == "windows":
        text += (f"the windows judged against the failures reported give {show(real.value)} "
                 f"({_interval(real, fmt)}, {real.n} windows)")
    else:
        text += (f"no window can be judged yet, and the tickets' outcomes give "
                 f"{show(real.value)} ({_interval(real, fmt)}), which count machines, not "
                 "windows, so they can differ for that reason alone")
    if check.agrees is None:
        return text + ": too few outcomes yet to check the estimate."
    if check.agrees:
        return text + ": they agree."
    return text + ": they disagree; trust the outcomes, and have the estimate checked."


def _estimates(f: HealthFigures) -> list[_Para]:
    out = []
    for g in (f.overall, *f.by_model, *f.by_site, *f.by_line):
        for check in g.estimates:
            prefix = "" if g.group.dimension == "all" else f"{g.group.label}: "
            out.append(_Para(prefix + _estimate(check)))
    return out


def _table(groups: Sequence[GroupFigures], first: str, verdicts: bool) -> _Table:
    header = (first, "Alerts", "Real faults", "False alarms", "Missed", "Alerts right",
              "Failures caught", "F1") + (("Verdict",) if verdicts else ())
    rows = []
    for g in groups:
        row: tuple[str, ...] = (
            g.group.label, str(g.alerts), str(g.real), str(g.false_alarms), str(g.missed),
            _cell(g.precision, "pct"), _cell(g.recall, "pct"), _cell(g.f1, "score"))
        if verdicts:
            row += (_ACTION_WORDS[g.verdict.action] if g.verdict else "-",)
        rows.append(row)
    return _Table(header, tuple(rows))


def _next(f: HealthFigures) -> list[_Para]:
    assert f.overall.verdict is not None
    v = f.overall.verdict
    out = [_Para(f"{_ACTION_WORDS[v.action]}, because {v.reason}.", strong=True)]
    if len(f.by_model) > 1:
        for g in f.by_model:
            assert g.verdict is not None
            out.append(_Para(f"{g.group.label}: {_ACTION_WORDS[g.verdict.action].lower()}, "
                             f"because {g.verdict.reason}."))
    return out


def _method(f: HealthFigures) -> _Para:
    return _Para(
        "Alerts are maintenance tickets resolved in the period as a real fault (confirmed "
        "failure, or fixed before it failed) or as a false alarm (no fault found, or a faulty "
        "sensor); tickets superseded or closed for another reason are not counted. Missed "
        "failures are failures reported without a ticket. \"Likely between\" is a 95 % "
        "interval (Wilson score; for F1, the Wilson interval of real faults among all "
        f"outcomes). A figure needs at least {f.min_outcomes} outcomes to be useful.")


def _sections(f: HealthFigures) -> tuple[str, list[_Section]]:
    g = f.overall
    assert g.verdict is not None
    period = f"{_day(f.since, True)} to {_day(_last_day(f), True)}"
    models = ", ".join(m.group.label for m in f.by_model)
    intro = f"Period: {period}." + (f" Model: {models}." if len(f.by_model) == 1 else
                                   f" Models: {models}." if f.by_model else "")
    sections = [
        _Section("Does the model still work?", (
            _Para(intro), _Para(headline(f), strong=True),
            _Para(f"Because {g.verdict.reason}."))),
        _Section("Are its alerts right?", tuple(_precision(g, f))),
        _Section("Does it catch the failures?", tuple(_recall(g, f))),
        _Section("Overall score (F1)", tuple(_f1(g, f))),
        _Section("How much warning does it give?", tuple(_lead(g.lead_time))),
        _Section("What does it cost?", tuple(_cost(g))),
        _Section("Is it drifting?", tuple(_drift(g))),
    ]
    if f.operations:
        sections.append(_Section("How it ran", tuple(_operations(f))))
    estimates = _estimates(f)
    if estimates:
        sections.append(_Section("The gateways' own estimate", tuple(estimates)))
    if f.by_month:
        sections.append(_Section("Over time", (_table(f.by_month, "Month", False),)))
    for title, groups, first in (("By model version", f.by_model, "Model version"),
                                 ("By site", f.by_site, "Site"),
                                 ("By line", f.by_line, "Line")):
        if len(groups) > 1:
            sections.append(_Section(title, (_table(groups, first, True),)))
    sections.append(_Section("What to do next", tuple(_next(f))))
    sections.append(_Section("How these figures are made", (_method(f),)))
    return period, sections


# --------------------------------------------------------------------------- rendering

# Characters that Markdown (CommonMark, GFM tables) could read as markup. An underscore
# inside a word (cmapss_fd001) is never emphasis and is left alone, for readability.
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|&#!~])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


# At the start of a line these would begin a list, a quote or a heading.
_MD_LINE_START = re.compile(r"^(\s*)([-+=>]|\d+[.)])")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _md(text: str) -> str:
    """Text shown as itself inside a Markdown line (a table cell, a heading); a line break
    in a name must not end the line."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), _CONTROL.sub(" ", text))


def _md_para(text: str) -> str:
    """Text shown as itself as a Markdown paragraph."""
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), _md(text))


def render_markdown(figures: HealthFigures, *, title: str = "Model health report") -> str:
    """The report as Markdown (CommonMark with GFM tables)."""
    period, sections = _sections(figures)
    lines = [f"# {_md(title)}", ""]
    for section in sections:
        lines += [f"## {_md(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, _Table):
                lines.append("| " + " | ".join(_md(h) for h in block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in block.rows]
            else:
                text = _md_para(block.text)
                lines.append(f"**{text}**" if block.strong else text)
            lines.append("")
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #1a1a1a; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 1.8rem; }
.answer { font-size: 1.25rem; font-weight: 600; padding: .6rem .9rem; border-radius: .4rem; }
.keep { background: #e3f4e6; } .watch { background: #fdf1d6; }
.retrain { background: #fbe0df; } .not_enough_data { background: #ececec; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .3rem .5rem; text-align: left; }
th { background: #f4f4f4; }
"""


def render_html(figures: HealthFigures, *, title: str = "Model health report") -> str:
    """The report as one self-contained HTML page (inline style, no scripts)."""
    e = html.escape
    period, sections = _sections(figures)
    assert figures.overall.verdict is not None
    action = figures.overall.verdict.action
    body = [f"<h1>{e(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{e(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, _Table):
                head = "".join(f"<th>{e(h)}</th>" for h in block.header)
                rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                               for row in block.rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
                            "</table>")
            elif block.strong:
                body.append(f'<p class="answer {e(action)}">{e(block.text)}</p>')
            else:
                body.append(f"<p>{e(block.text)}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{e(title)}: {e(period)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
