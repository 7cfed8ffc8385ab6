"""`sinkhole catalog compare`: a public list against the enabled policy, in each format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resolver.compare import registrable_domain
from tests.conftest import run_cli

#: In every sample: two names the shipped catalog blocks (chatgpt.com, a host under
#: claude.ai), two it does not (under one registrable domain, and one under another),
#: and one shared name the must-not-block list keeps out (huggingface.co).
SAMPLES = {
    "adguard-services": """{
  "blocked_services": [
    {"id": "chatgpt", "name": "ChatGPT", "rules": ["||chatgpt.com^", "||cdn.claude.ai^"],
     "group": "ai"},
    {"id": "newchat", "name": "New Chat", "rules": [
      "||chat.new-ai.co.uk^",
      "||api.new-ai.co.uk^",
      "||other-bot.example^",
      "||huggingface.co^"
    ], "group": "ai"},
    {"id": "videos", "name": "Videos", "rules": ["||videos.example^"], "group": "streaming"}
  ]
}
""",
    "v2fly": """# v2fly data file
include:extra
chatgpt.com
full:cdn.claude.ai
domain:chat.new-ai.co.uk
full:api.new-ai.co.uk
keyword:newai
huggingface.co
""",
    "hosts": """0.0.0.0 chatgpt.com
0.0.0.0 cdn.claude.ai
0.0.0.0 chat.new-ai.co.uk api.new-ai.co.uk
0.0.0.0 other-bot.example
0.0.0.0 huggingface.co
""",
    "domains": """chatgpt.com
cdn.claude.ai
chat.new-ai.co.uk
api.new-ai.co.uk
other-bot.example
huggingface.co
""",
    "adblock": """[Adblock Plus 2.0]
||chatgpt.com^
||cdn.claude.ai^
||chat.new-ai.co.uk^
||api.new-ai.co.uk^
||other-bot.example^
||huggingface.co^
""",
}


def write_sample(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / ("services.json" if fmt == "adguard-services" else f"ai-{fmt}")
    path.write_text(SAMPLES[fmt])
    (tmp_path / "extra").write_text("other-bot.example\n")
    return path


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_compare_lists_what_the_policy_leaves_by_registrable_domain(tmp_path: Path, fmt: str):
    path = write_sample(tmp_path, fmt)
    args = ["catalog", "compare", str(path), "--db", str(tmp_path / "s.db")]
    if fmt == "adguard-services":
        args += ["--service", "ai"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    head, *rest = r.stdout.splitlines()
    assert head == (
        f"{path} ({fmt}): 6 names; 2 blocked by the enabled policy, "
        "3 not blocked in 2 domains, 1 shared (must-not-block)"
    )
    origin = {"adguard-services": "  [New Chat (newchat)]", "v2fly": f"  [{path.name}]"}
    assert rest[:6] == [
        "new-ai.co.uk (2)",
        f"  chat.new-ai.co.uk{origin.get(fmt, '')}",
        f"  api.new-ai.co.uk{origin.get(fmt, '')}",
        "other-bot.example (1)",
        "  other-bot.example"
        + {"adguard-services": "  [New Chat (newchat)]", "v2fly": "  [extra]"}.get(fmt, ""),
        "shared, never blocked by the catalog (must-not-block):",
    ]
    assert rest[6:] == ["  huggingface.co"]
    if fmt == "v2fly":
        assert "keyword rule 'newai'" in r.stderr


def test_compare_json_and_a_disabled_service_shows_up(tmp_path: Path) -> None:
    path = write_sample(tmp_path, "domains")
    db = str(tmp_path / "s.db")
    assert run_cli("lists", "disable", "openai-chatgpt", "--db", db).returncode == 0
    r = run_cli("catalog", "compare", str(path), "--db", db, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["blocked"] == 1
    assert data["missing"]["chatgpt.com"] == ["chatgpt.com"]
    assert data["shared"] == ["huggingface.co"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "no such file"),
        ('{"blocked_services": [', "not valid JSON"),
        ("!!!\nnot a name at all ###\n", "no valid"),
    ],
)
def test_compare_bad_source_is_one_line_and_exit_1(tmp_path: Path, content, why: str) -> None:
    path = tmp_path / "list.txt"
    if content is not None:
        path.write_text(content)
    fmt = ["--format", "adguard-services"] if content and content.startswith("{") else []
    r = run_cli("catalog", "compare", str(path), *fmt, "--db", str(tmp_path / "s.db"))
    assert r.returncode == 1
    assert why in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("Error")]) == 1


def test_registrable_domain_uses_the_public_suffix_list() -> None:
    assert registrable_domain("chat.new-ai.co.uk") == "new-ai.co.uk"
    assert registrable_domain("*.cdn.example.com") == "example.com"
    # ICANN suffixes only: a host of a shared cloud groups under the cloud's domain.
    assert registrable_domain("bucket.s3.amazonaws.com") == "amazonaws.com"
