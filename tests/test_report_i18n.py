"""The weekly report in French: `sinkhole report --lang fr` and `report.lang` in the config,
every format, numbers and dates as French writes them, and the catalogues complete."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import date
from typing import Any

import pytest
import yaml
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from resolver import config as config_mod
from resolver import i18n
from resolver import report as rpt
from tests.conftest import REPO_ROOT, run_cli
from tests.test_report import PARIS, generate_hits, make_db

WEEK = "2026-W13"
#: Written out here, not taken from Babel, so that the test checks what Babel gives.
MONTHS = "janvier février mars avril mai juin juillet août septembre octobre novembre décembre"
NNBSP, NBSP = "\u202f", "\u00a0"
CATALOGUES = {
    "report": (REPO_ROOT / "resolver/locale/fr/LC_MESSAGES/messages.po", REPO_ROOT / "resolver"),
    "web": (
        REPO_ROOT / "resolver/web/locale/fr/LC_MESSAGES/messages.po",
        REPO_ROOT / "resolver/web",
    ),
}


def french_number(n: int) -> str:
    """1234567 -> "1 234 567" with narrow no-break spaces."""
    return f"{n:,}".replace(",", NNBSP)


def french_percent(share: float) -> str:
    """0.0359 -> "3,59 %", 0.125 -> "12,5 %": one or two decimals, a comma, a no-break space."""
    text = f"{share * 100:.2f}"
    if text.endswith("0"):
        text = text[:-1]
    return text.replace(".", ",") + NBSP + "%"


def french_date(d: date) -> str:
    return f"{d.day} {MONTHS.split()[d.month - 1]} {d.year}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A database with a busy week 2026-W13 (thousands of blocked queries) and configs."""
    tmp = tmp_path_factory.mktemp("fr")
    db = make_db(tmp / "s.db")
    start, end = rpt.week_bounds(WEEK, PARIS)
    generate_hits(db, 4000, int(start.timestamp()), int(end.timestamp()), seed=13)
    configs = {}
    for name, extra in {"plain": {}, "fr": {"report": {"lang": "fr"}}}.items():
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"database": str(db), "timezone": PARIS, **extra}))
        configs[name] = path
    return {"db": db, "configs": configs, "tmp": tmp}


def report(site: dict[str, Any], *args: str, config: str = "plain") -> str:
    env = {"SINKHOLE_CONFIG": str(site["configs"][config]), "SINKHOLE_DB": str(site["db"])}
    r = run_cli("report", "--week", WEEK, *args, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def keys_of(value: Any) -> Any:
    """The shape of a JSON value: its keys, recursively, without the values."""
    if isinstance(value, dict):
        return {k: keys_of(v) for k, v in value.items()}
    if isinstance(value, list):
        return [keys_of(v) for v in value[:1]]
    return type(value).__name__


def test_french_json_keeps_english_keys_and_figures(site: dict[str, Any]) -> None:
    en = json.loads(report(site, "--format", "json"))
    fr = json.loads(report(site, "--format", "json", "--lang", "fr"))
    assert en["lang"] == "en" and fr["lang"] == "fr"
    assert keys_of(fr) == keys_of(en)
    # Figures and machine values are the same; only the human text differs.
    assert fr["totals"] == en["totals"] and fr["days"] == en["days"]
    assert [d["weekday"] for d in fr["days"]] == ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    assert fr["breakdown"] == en["breakdown"] and fr["gaps"] == en["gaps"]
    assert en["privacy"]["note"].startswith("Clients are recorded by IP address.")
    assert fr["privacy"]["note"].startswith("Les clients sont enregistrés par adresse IP.")
    names = {s["id"]: s["name"] for s in fr["services"]}
    assert names["custom"] == "Règles personnalisées"
    assert names["list:extra"] == "Liste importée extra"


def test_french_text_has_french_headings_numbers_and_dates(site: dict[str, Any]) -> None:
    data = json.loads(report(site, "--format", "json"))
    totals = data["totals"]
    assert totals["blocked"] >= 1000 and totals["queries"] >= 1000  # grouping shows
    text = report(site, "--lang", "fr")
    first, last = (
        date.fromisoformat(data["days"][0]["date"]),
        date.fromisoformat(data["days"][-1]["date"]),
    )
    assert text.startswith(f"Rapport sinkhole, semaine {WEEK}\n")
    assert f"lun. {french_date(first)} au dim. {french_date(last)}" in text
    for heading in ("Résumé", "Services", "Par jour", "Groupes de clients", "Principaux clients"):
        assert f"\n{heading}\n" in text
    assert re.search(rf"Requêtes bloquées +{french_number(totals['blocked'])}\n", text)
    assert re.search(rf"Toutes les requêtes +{french_number(totals['queries'])}\n", text)
    assert re.search(rf"Part bloquée +{french_percent(totals['blocked_share'])}\n", text)
    # Each day's row: French weekday, French date, French numbers.
    for day in data["days"]:
        d = date.fromisoformat(day["date"])
        assert re.search(
            rf"\n\S+ +{french_date(d)} +{french_number(day['blocked'])} +"
            rf"{french_number(day['attempts'])} +{french_number(day['queries'])}\n",
            text,
        ), day
    assert "Blocked queries" not in text and "Summary" not in text
    assert "Mode de confidentialité\u00a0: ip" in text


def test_french_markdown_html_and_csv(site: dict[str, Any]) -> None:
    data = json.loads(report(site, "--format", "json"))
    blocked = french_number(data["totals"]["blocked"])
    md = report(site, "--format", "markdown", "--lang", "fr")
    assert md.startswith(f"# Rapport sinkhole, semaine {WEEK}\n")
    assert "## Résumé" in md and "| Indicateur | Valeur |" in md
    assert f"| Requêtes bloquées | {blocked} |" in md
    html = report(site, "--format", "html", "--lang", "fr")
    assert '<html lang="fr">' in html and "<h2>Tentatives de contournement" in html
    assert f'<td class="n">{blocked}</td>' in html
    assert 'aria-label="Requêtes bloquées par jour"' in html
    first = data["days"][0]
    tip = (
        f"{french_date(date.fromisoformat(first['date']))}\u00a0: "
        f"{french_number(first['blocked'])} bloquées, {french_number(first['attempts'])} tentatives"
    )
    assert f"<title>{tip}</title>" in html
    csv_text = report(site, "--format", "csv", "--lang", "fr")
    header, *rows = csv_text.splitlines()
    assert header == "date,service,catégorie,groupe,bloquées,tentatives,confidentialité"
    # The rows stay machine-readable: ISO dates and plain integers, as in English.
    assert rows == report(site, "--format", "csv").splitlines()[1:]


def test_report_lang_in_the_config_and_lang_overrides_it(site: dict[str, Any]) -> None:
    for fmt in ("text", "markdown", "html", "json"):
        assert report(site, "--format", fmt, config="fr") == report(
            site, "--format", fmt, "--lang", "fr"
        )
    assert report(site, "--lang", "en", config="fr") == report(site)


@pytest.mark.parametrize("value", ["de", "FR", 1, ["fr"]])
def test_bad_report_lang_is_one_line_naming_file_and_key(site: dict[str, Any], value) -> None:
    path = site["tmp"] / "bad.yaml"
    path.write_text(yaml.safe_dump({"database": str(site["db"]), "report": {"lang": value}}))
    r = run_cli("report", "--week", WEEK, env={"SINKHOLE_CONFIG": str(path)})
    assert r.returncode != 0 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert f"{path}: report.lang: must be one of en, fr" in line, line
    assert "Traceback" not in r.stderr


def test_unknown_report_key_is_named(site: dict[str, Any]) -> None:
    path = site["tmp"] / "typo.yaml"
    path.write_text(yaml.safe_dump({"report": {"language": "fr"}}))
    r = run_cli("config", "check", "--config", str(path))
    assert r.returncode != 0
    assert f"{path}: report.language: unknown key" in r.stdout + r.stderr


def test_config_languages_are_the_catalogues() -> None:
    assert config_mod.REPORT_LANGUAGES == i18n.LANGUAGES
    with pytest.raises(ValueError, match="unknown language 'de'"):
        i18n.Language("de")


@pytest.mark.parametrize("which", sorted(CATALOGUES))
def test_french_catalogue_translates_every_message(which: str) -> None:
    po, source = CATALOGUES[which]
    with po.open("rb") as f:
        catalog = read_po(f)
    empty = [
        m.id
        for m in catalog
        if m.id and not all(m.string if isinstance(m.string, tuple) else [m.string])
    ]
    assert empty == [], f"empty msgstr in {po}"
    fuzzy = [m.id for m in catalog if m.id and m.fuzzy]
    assert fuzzy == [], f"fuzzy entries in {po}"
    # Every message of the code is in the catalogue, with the same placeholders.
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    keywords = {"_": None, "gettext": None, "N_": None, "ngettext": (1, 2)}
    found = set()
    for filename, _line, msg, _comments, _ctx in extract_from_dir(
        source, method_map, keywords=keywords
    ):
        if which == "report" and filename.startswith("web/"):
            continue
        found.add(msg)
    assert len(found) > 80
    for msg in found:
        entry = catalog.get(msg)
        assert entry is not None and entry.string, f"untranslated in {po}: {msg!r}"
        ids = msg if isinstance(msg, tuple) else (msg,)
        strings = entry.string if isinstance(entry.string, tuple) else (entry.string,)
        wanted = set(re.findall(r"%\((\w+)\)s", ids[-1]))
        for s in strings:
            assert set(re.findall(r"%\((\w+)\)s", s)) == wanted, (msg, s)


def test_the_french_report_needs_no_web_extra() -> None:
    """The report and the mail load their French without the dashboard's modules."""
    code = (
        "import sys; from resolver import mailer, report; from resolver.i18n import Language; "
        "assert Language('fr')._('Summary') == 'Résumé'; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'jinja2', 'uvicorn', 'resolver.web') or m.startswith('resolver.web')); "
        "assert not bad, bad"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert r.returncode == 0, r.stderr
