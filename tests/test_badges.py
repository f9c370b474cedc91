"""The badges as a README shows them: standalone SVG that parses as XML in the SVG namespace,
says its text to a screen reader, and shows the model's words in Gatus's colours; and the
shields.io endpoint JSON, exactly its schema."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from probe.pages import badges
from probe.pages.model import Availability

SVG = "{http://www.w3.org/2000/svg}"


def availability(percent: float | None, text: str) -> Availability:
    return Availability(0.0, 86_400.0, 86_400.0, 0.0, 0.0, 0.0, 0, percent, text)


def read(svg: str) -> tuple[ET.Element, list[str], list[str]]:
    """The root, the texts shown (each once: the shadow copy is left out), the fills."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    shown = [t.text or "" for t in root.iter(f"{SVG}text") if "fill-opacity" not in t.attrib]
    fills = [r.get("fill", "") for r in root.iter(f"{SVG}rect")]
    return root, shown, fills


def assert_accessible(root: ET.Element, said: str) -> None:
    assert root.get("role") == "img"
    assert root.get("aria-label") == said
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == said


@pytest.mark.parametrize(("state", "word", "colour"), [
    ("up", "up", "#40cc11"), ("down", "down", "#c7130a"),
    ("maintenance", "maintenance", "#2f6fcf"), ("unknown", "unknown", "#9f9f9f"),
    ("failing", "unknown", "#9f9f9f"),  # a state the badge does not know is not guessed
])
def test_the_health_badge_says_the_state_in_its_colour(state: str, word: str,
                                                       colour: str) -> None:
    root, shown, fills = read(badges.health_svg("shop", state))
    assert shown == ["shop", word]
    assert colour in fills
    assert_accessible(root, f"shop: {word}")
    assert badges.health_shields("shop", state) == {
        "schemaVersion": 1, "label": "shop", "message": word, "color": colour}


@pytest.mark.parametrize(("percent", "text", "shown", "colour"), [
    (100.0, "100 %", "100%", "#40cc11"),
    (99.95, "99.95 %", "99.95%", "#40cc11"),
    (99.999, "99.999 %", "99.999%", "#40cc11"),  # the model's digits, not re-rounded
    (97.5, "97.5 %", "97.5%", "#40cc11"),
    (97.49, "97.49 %", "97.49%", "#94cc11"),
    (95.0, "95 %", "95%", "#94cc11"),
    (92.0, "92 %", "92%", "#ccd311"),
    (85.0, "85 %", "85%", "#ccb311"),
    (70.0, "70 %", "70%", "#cc8111"),
    (64.9, "64.9 %", "64.9%", "#c7130a"),
    (None, "n/a", "n/a", "#9f9f9f"),
])
def test_the_uptime_badge_shows_the_models_text_in_gatus_colours(
        percent: float | None, text: str, shown: str, colour: str) -> None:
    a = availability(percent, text)
    root, texts, fills = read(badges.uptime_svg("30d", a))
    assert texts == ["uptime 30d", shown]
    assert fills[1:3] == ["#555", colour]
    assert_accessible(root, f"uptime 30d: {shown}")
    assert badges.uptime_shields("30d", a) == {
        "schemaVersion": 1, "label": "uptime 30d", "message": shown, "color": colour}


@pytest.mark.parametrize(("ms", "shown", "colour"), [
    (12.4, "12ms", "#40cc11"), (50.0, "50ms", "#94cc11"), (199.0, "199ms", "#94cc11"),
    (250.0, "250ms", "#ccd311"), (499.0, "499ms", "#ccb311"), (700.0, "700ms", "#cc8111"),
    (750.0, "750ms", "#c7130a"), (None, "n/a", "#9f9f9f"),
])
def test_the_latency_badge_uses_the_50_200_300_500_750_ms_steps(
        ms: float | None, shown: str, colour: str) -> None:
    _, texts, fills = read(badges.latency_svg("24h", ms))
    assert texts == ["latency 24h", shown]
    assert colour in fills
    assert badges.latency_shields("24h", ms)["message"] == shown


@pytest.mark.parametrize("window", ["24h", "7d", "30d", "90d"])
def test_every_window_has_an_uptime_badge(window: str) -> None:
    _, texts, _ = read(badges.uptime_svg(window, availability(99.0, "99 %")))
    assert texts[0] == f"uptime {window}"


def test_a_window_the_pages_do_not_keep_is_refused() -> None:
    with pytest.raises(ValueError, match="one of 24h, 7d, 30d, 90d"):
        badges.uptime_svg("1h", availability(99.0, "99 %"))
    with pytest.raises(ValueError, match="one of 24h, 7d, 30d"):
        badges.latency_svg("90d", 10.0)


def test_a_label_with_markup_is_text_in_the_badge() -> None:
    label = '<script>alert(1)</script>&"shop"'
    root, texts, _ = read(badges.health_svg(label, "up"))
    assert texts == [label, "up"]
    assert root.find(f".//{SVG}script") is None
    assert_accessible(root, f"{label}: up")


def test_the_badge_grows_with_its_text_about_seven_pixels_a_character() -> None:
    short = ET.fromstring(badges.health_svg("db", "up"))
    long = ET.fromstring(badges.health_svg("db-primary-replica", "up"))
    assert int(long.get("width", "0")) - int(short.get("width", "0")) == 7 * 16


def test_the_shields_json_is_exactly_the_endpoint_schema() -> None:
    body = json.loads(json.dumps(badges.shields("uptime 7d", "99.95%", "#40cc11")))
    assert body == {"schemaVersion": 1, "label": "uptime 7d", "message": "99.95%",
                    "color": "#40cc11"}
