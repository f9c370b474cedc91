"""Badges for READMEs and wikis: health, uptime over a window, latency over a window, each as a
standalone SVG in shields.io's flat style and as shields.io's endpoint JSON.

The set and the colours are Gatus's (api/badge.go): uptime ≥ 97.5 % #40cc11, ≥ 95 #94cc11,
≥ 90 #ccd311, ≥ 80 #ccb311, ≥ 65 #cc8111, else #c7130a; latency under 50, 200, 300, 500, 750 ms
the same five colours, above red. probe adds 90d to the windows, "maintenance" to the health
states, and grey "n/a" where nothing was counted. The text is the model's (Availability.text),
only its space before "%" dropped, as badges write it; widths are estimated from the number of
characters as shields does for Verdana 11px (about 7 px a character), so no font is needed."""

from __future__ import annotations

from typing import Any

from markupsafe import escape

from probe.pages.model import LATENCY_WINDOWS, WINDOWS, Availability

GREY = "#9f9f9f"
SCALE = ("#40cc11", "#94cc11", "#ccd311", "#ccb311", "#cc8111", "#c7130a")
UPTIME_STEPS = (97.5, 95.0, 90.0, 80.0, 65.0)  # at or above: SCALE[i]
LATENCY_STEPS = (50.0, 200.0, 300.0, 500.0, 750.0)  # below: SCALE[i]
HEALTH_COLOURS = {"up": SCALE[0], "down": SCALE[-1], "maintenance": "#2f6fcf", "unknown": GREY}


def uptime_colour(availability: Availability) -> str:
    if availability.percent is None:
        return GREY
    for step, colour in zip(UPTIME_STEPS, SCALE, strict=False):
        if availability.percent >= step:
            return colour
    return SCALE[-1]


def latency_colour(mean_ms: float | None) -> str:
    if mean_ms is None:
        return GREY
    for step, colour in zip(LATENCY_STEPS, SCALE, strict=False):
        if mean_ms < step:
            return colour
    return SCALE[-1]


def uptime_text(availability: Availability) -> str:
    return "n/a" if availability.percent is None else availability.text.replace(" %", "%")


def latency_text(mean_ms: float | None) -> str:
    return "n/a" if mean_ms is None else f"{mean_ms:.0f}ms"


def _width(text: str) -> int:
    return 7 * len(text) + 10  # 5 px of padding each side


def badge(label: str, message: str, colour: str) -> str:
    """A flat badge: the label on grey, the message on the colour."""
    lw, mw = _width(label), _width(message)
    total = lw + mw
    said = escape(f"{label}: {message}")
    lab, msg = escape(label), escape(message)
    lx, mx = lw * 5, (lw + mw / 2) * 10  # text is drawn at scale .1 for sub-pixel placement
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" '
        f'aria-label="{said}"><title>{said}</title>'
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" '
        'stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/>'
        f'<rect x="{lw}" width="{mw}" height="20" fill="{colour}"/>'
        f'<rect width="{total}" height="20" fill="url(#s)"/></g>'
        '<g fill="#fff" text-anchor="middle" '
        'font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="110">'
        f'<text x="{lx}" y="150" fill="#010101" fill-opacity=".3" transform="scale(.1)">'
        f"{lab}</text>"
        f'<text x="{lx}" y="140" transform="scale(.1)">{lab}</text>'
        f'<text x="{mx:.0f}" y="150" fill="#010101" fill-opacity=".3" transform="scale(.1)">'
        f"{msg}</text>"
        f'<text x="{mx:.0f}" y="140" transform="scale(.1)">{msg}</text>'
        "</g></svg>")


def _health(state: str) -> tuple[str, str]:
    return (state, HEALTH_COLOURS[state]) if state in HEALTH_COLOURS else ("unknown", GREY)


def _window(window: str, allowed: tuple[str, ...]) -> str:
    if window not in allowed:
        raise ValueError(f"window {window!r}: one of {', '.join(allowed)}")
    return window


def health_svg(label: str, state: str) -> str:
    """up, down, maintenance; any other state shows as unknown."""
    return badge(label, *_health(state))


def uptime_svg(window: str, availability: Availability) -> str:
    return badge(f"uptime {_window(window, WINDOWS)}", uptime_text(availability),
                 uptime_colour(availability))


def latency_svg(window: str, mean_ms: float | None) -> str:
    return badge(f"latency {_window(window, LATENCY_WINDOWS)}", latency_text(mean_ms),
                 latency_colour(mean_ms))


def shields(label: str, message: str, color: str) -> dict[str, Any]:
    """shields.io's endpoint badge schema (https://shields.io/badges/endpoint-badge)."""
    return {"schemaVersion": 1, "label": label, "message": message, "color": color}


def health_shields(label: str, state: str) -> dict[str, Any]:
    return shields(label, *_health(state))


def uptime_shields(window: str, availability: Availability) -> dict[str, Any]:
    return shields(f"uptime {_window(window, WINDOWS)}", uptime_text(availability),
                   uptime_colour(availability))


def latency_shields(window: str, mean_ms: float | None) -> dict[str, Any]:
    return shields(f"latency {_window(window, LATENCY_WINDOWS)}", latency_text(mean_ms),
                   latency_colour(mean_ms))
