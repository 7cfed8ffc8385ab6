"""Tests for resolver.catalog: the shipped blocklists and the validation of catalog files."""

from __future__ import annotations

import datetime
import shutil
import textwrap
from pathlib import Path

import pytest

from resolver.catalog import (
    CATALOG_ENV,
    Catalog,
    check_catalog,
    default_catalog_dir,
    load_catalog,
    normalize_name,
)
from resolver.errors import ListError

SHIPPED = Path(__file__).resolve().parent.parent / "blocklists"


def matches(pattern: str, name: str) -> bool:
    """The catalog's rule, written out independently: equal or under; '*.x' only under."""
    if pattern.startswith("*."):
        base = pattern[2:]
        return name.endswith("." + base)
    return name == pattern or name.endswith("." + pattern)


def blocking_services(catalog: Catalog, name: str) -> list[str]:
    return [
        sid for sid, svc in catalog.services.items() if any(matches(p, name) for p in svc.domains)
    ]


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog(SHIPPED)


# --- the shipped catalog ---------------------------------------------------------------


def test_shipped_catalog_has_no_problems() -> None:
    assert check_catalog(SHIPPED) == []


def test_default_catalog_dir_finds_the_checkout_blocklists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CATALOG_ENV, raising=False)
    assert default_catalog_dir().resolve() == SHIPPED


def test_catalog_env_var_overrides_the_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write(tmp_path, "mini.yaml", MINIMAL)
    monkeypatch.setenv(CATALOG_ENV, str(tmp_path))
    catalog = load_catalog()
    assert catalog.directory == tmp_path
    assert list(catalog.services) == ["example-chat"]


def test_shipped_catalog_has_both_categories(shipped: Catalog) -> None:
    assert {"ai-chatbots", "bypass"} <= set(shipped.categories)


def test_every_service_has_name_domains_sources_and_verified_date(shipped: Catalog) -> None:
    for sid, svc in shipped.services.items():
        assert svc.name, sid
        assert svc.sources, sid
        assert all(s.startswith("https://") for s in svc.sources), sid
        assert svc.verified is not None, sid
        # A real date, not after the day this catalog was last checked.
        assert datetime.date.fromisoformat(svc.verified).isoformat() <= LAST_CHECKED, sid
        # Only a service DNS cannot separate may have no domains, and it must say why.
        assert svc.domains or svc.notes, sid


#: The day the shipped catalog was last gone through against the public lists.
LAST_CHECKED = "2026-12-02"
MUST_NOT_BLOCK = SHIPPED / "must-not-block.txt"


def must_not_block() -> list[str]:
    names = []
    for line in MUST_NOT_BLOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def test_must_not_block_list_is_long_enough_to_mean_something() -> None:
    names = must_not_block()
    assert len(names) >= 100
    for needed in ("google.com", "googleapis.com", "github.com", "x.com", "amazonaws.com"):
        assert needed in names


@pytest.mark.parametrize("name", must_not_block())
def test_no_catalog_pattern_covers_a_must_not_block_name(shipped: Catalog, name: str) -> None:
    # The name itself and a name under it: "*.x" never blocks x but blocks www.x.
    for probe in (name, "www." + name):
        assert blocking_services(shipped, probe) == [], probe


def test_no_two_services_claim_one_domain(shipped: Catalog) -> None:
    owners: list[tuple[str, str]] = [
        (p, sid) for sid, svc in shipped.services.items() for p in svc.domains
    ]
    clashes = [
        (a, sa, b, sb)
        for a, sa in owners
        for b, sb in owners
        if sa != sb and matches(a, b.removeprefix("*."))
    ]
    assert clashes == []


def test_every_keep_and_api_host_lies_under_its_own_service(shipped: Catalog) -> None:
    for sid, svc in shipped.services.items():
        for host in (*svc.keep, *svc.api):
            assert any(matches(p, host) or p == host for p in svc.domains), (sid, host)


def test_the_catalog_check_itself_reports_a_keep_outside_its_service(tmp_path: Path) -> None:
    write(tmp_path, "examples.yaml", MINIMAL + "    keep: [status.other.org]\n")
    assert any("keep[0]" in p for p in check_catalog(tmp_path))


def test_shipped_catalog_has_the_coverage_the_readme_states(shipped: Catalog) -> None:
    readme = (SHIPPED.parent / "README.md").read_text()
    count = len(shipped.categories["ai-chatbots"])
    assert f"`ai-chatbots.yaml` ({count} services" in readme


@pytest.mark.parametrize(
    "probe",
    [
        "chatgpt.com",
        "chat.openai.com",
        "gemini.google.com",
        "bard.google.com",
        "gemini.google",
        "claude.ai",
        "copilot.microsoft.com",
        "copilot.cloud.microsoft",
        "sydney.bing.com",
        "www.perplexity.ai",
        "chat.mistral.ai",
        "chat.deepseek.com",
        "grok.com",
        "x.ai",
        "www.meta.ai",
        "poe.com",
        "character.ai",
        "you.com",
        "pi.ai",
        "chat.qwen.ai",
        "kimi.com",
        "www.doubao.com",
        "manus.im",
        "jasper.ai",
        "writesonic.com",
        "www.phind.com",
        "coral.cohere.com",
        "copy.ai",
        "chatglm.cn",
        "yiyan.baidu.com",
        # 2026-12-02: second domains, hosts the chat pages load, international brands,
        # search engines, playgrounds, agents, companions.
        "sora.com",
        "gemini.gstatic.com",
        "ai.studio",
        "www.perplexity.com",
        "ppl-ai-file-upload.s3.amazonaws.com",
        "grok.x.com",
        "www.dola.com",
        "www.coze.com",
        "www.minimax.io",
        "www.talkie-ai.com",
        "www.genspark.ai",
        "openrouter.ai",
        "chat.together.ai",
        "www.cursor.com",
        "jules.google.com",
        "janitorai.com",
        "www.replika.com",
        "quillbot.com",
        "giga.chat",
        "alice.yandex.ru",
    ],
)
def test_shipped_catalog_blocks_each_required_chatbot(shipped: Catalog, probe: str) -> None:
    assert blocking_services(shipped, probe), f"{probe} is not blocked by any service"


def test_huggingchat_is_listed_with_notes_but_huggingface_stays_reachable(
    shipped: Catalog,
) -> None:
    svc = shipped.services["huggingchat"]
    assert svc.domains == ()
    assert svc.notes and "huggingface.co" in svc.notes


def test_api_hosts_are_listed_apart_and_blocked_with_their_service(shipped: Catalog) -> None:
    gemini = shipped.services["google-gemini"]
    assert "generativelanguage.googleapis.com" in gemini.api
    assert "api.openai.com" in shipped.services["openai-chatgpt"].api
    for sid, svc in shipped.services.items():
        for host in svc.api:
            assert any(matches(p, host) for p in svc.domains), (sid, host)


def test_services_that_dns_cannot_fully_separate_say_so_in_notes(shipped: Catalog) -> None:
    assert "Microsoft 365 Copilot" in (shipped.services["microsoft-copilot"].notes or "")
    assert "x.com" in (shipped.services["xai-grok"].notes or "")
    assert "facebook.com" in (shipped.services["meta-ai"].notes or "")


POPULAR = [
    "www.google.com",
    "google.com",
    "mail.google.com",
    "docs.google.com",
    "drive.google.com",
    "googleapis.com",
    "www.googleapis.com",
    "fonts.googleapis.com",
    "bing.com",
    "www.bing.com",
    "www.microsoft.com",
    "microsoft.com",
    "login.microsoftonline.com",
    "outlook.office365.com",
    "office.com",
    "www.office.com",
    "m365.cloud.microsoft",
    "teams.microsoft.com",
    "github.com",
    "api.github.com",
    "apple.com",
    "icloud.com",
    "www.icloud.com",
    "wikipedia.org",
    "en.wikipedia.org",
    "x.com",
    "twitter.com",
    "facebook.com",
    "www.facebook.com",
    "huggingface.co",
    "amazon.com",
    "linkedin.com",
    "youtube.com",
    "www.youtube.com",
    "baidu.com",
    "www.baidu.com",
    "tencent.com",
    "aliyun.com",
    "duckduckgo.com",
    "cloudflare.com",
    "livekit.cloud",
    "githubusercontent.com",
    "raw.githubusercontent.com",
]


@pytest.mark.parametrize("name", POPULAR)
def test_popular_names_are_not_matched_by_any_catalog_pattern(shipped: Catalog, name: str) -> None:
    assert blocking_services(shipped, name) == []


@pytest.mark.parametrize(
    ("name", "service", "answer"),
    [
        ("use-application-dns.net", "firefox-canary", "nxdomain"),
        ("mask.icloud.com", "icloud-private-relay", "nxdomain"),
        ("mask-h2.icloud.com", "icloud-private-relay", "nxdomain"),
        ("_dns.resolver.arpa", "discovery-of-designated-resolvers", "nodata"),
        ("dns.google", "google-public-dns", None),
        ("mozilla.cloudflare-dns.com", "cloudflare-dns", None),
        ("chrome.cloudflare-dns.com", "cloudflare-dns", None),
        ("one.one.one.one", "cloudflare-dns", None),
        ("dns.quad9.net", "quad9", None),
        ("doh.opendns.com", "opendns-doh", None),
        ("firefox.dns.nextdns.io", "nextdns", None),
        ("dns.adguard-dns.com", "adguard-dns", None),
        ("doh.cleanbrowsing.org", "cleanbrowsing", None),
    ],
)
def test_bypass_names_are_answered_as_specified(
    shipped: Catalog, name: str, service: str, answer: str | None
) -> None:
    assert blocking_services(shipped, name) == [service]
    svc = shipped.services[service]
    assert svc.category == "bypass"
    assert svc.answer == answer


def test_resolve_turns_a_category_or_service_id_into_service_ids(shipped: Catalog) -> None:
    assert shipped.resolve("ai-chatbots") == shipped.categories["ai-chatbots"]
    assert "openai-chatgpt" in shipped.resolve("ai-chatbots")
    assert shipped.resolve("openai-chatgpt") == ("openai-chatgpt",)


def test_resolve_unknown_name_lists_the_valid_ones(shipped: Catalog) -> None:
    with pytest.raises(ListError) as info:
        shipped.resolve("chatgtp")
    message = str(info.value)
    assert "'chatgtp'" in message
    assert "ai-chatbots" in message and "openai-chatgpt" in message


# --- validation of broken catalog files ---------------------------------------------------

MINIMAL = """\
category: examples
services:
  example-chat:
    name: Example Chat
    domains: [chat.example.com]
    sources: [https://example.com/network]
    verified: 2026-11-29
"""


def write(directory: Path, filename: str, text: str) -> Path:
    path = directory / filename
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_minimal_catalog_loads_with_normalised_names(tmp_path: Path) -> None:
    write(
        tmp_path,
        "examples.yaml",
        MINIMAL.replace("[chat.example.com]", "[Chat.Example.COM., 'bücher.example']"),
    )
    catalog = load_catalog(tmp_path)
    svc = catalog.services["example-chat"]
    assert svc.domains == ("chat.example.com", "xn--bcher-kva.example")
    assert svc.category == "examples"
    assert svc.file == str(tmp_path / "examples.yaml")
    assert svc.answer is None and svc.keep == () and svc.api == ()


BROKEN = [
    pytest.param(
        "category: examples\nservices:\n  a: [unclosed\n",
        "examples.yaml:4:1: YAML error",
        id="yaml-syntax",
    ),
    pytest.param(
        MINIMAL + "    colour: blue\n",
        "examples.yaml: services.example-chat: unknown key 'colour'",
        id="unknown-service-key",
    ),
    pytest.param(
        MINIMAL + "owner: me\n",
        "examples.yaml: unknown key 'owner'",
        id="unknown-file-key",
    ),
    pytest.param(
        MINIMAL.replace("    name: Example Chat\n", ""),
        "examples.yaml: services.example-chat.name: missing",
        id="missing-name",
    ),
    pytest.param(
        MINIMAL.replace("    domains: [chat.example.com]\n", ""),
        "examples.yaml: services.example-chat.domains: missing",
        id="missing-domains",
    ),
    pytest.param(
        MINIMAL.replace("    sources: [https://example.com/network]\n", ""),
        "examples.yaml: services.example-chat.sources: missing",
        id="missing-sources",
    ),
    pytest.param(
        MINIMAL.replace("[chat.example.com]", "[chat.example.com, 'bad..name']"),
        "examples.yaml: services.example-chat.domains[1]: 'bad..name' is not a valid domain name",
        id="bad-domain",
    ),
    pytest.param(
        MINIMAL.replace("[chat.example.com]", "[com]"),
        "services.example-chat.domains[0]: 'com' is a single label",
        id="whole-tld",
    ),
    pytest.param(
        MINIMAL + "    keep: [status.other.org]\n",
        "services.example-chat.keep[0]: 'status.other.org' is not under any",
        id="keep-not-under-domains",
    ),
    pytest.param(
        MINIMAL + "    api: [api.example.net]\n",
        "services.example-chat.api[0]: 'api.example.net' is not under any",
        id="api-not-under-domains",
    ),
    pytest.param(
        MINIMAL + "    answer: drop\n",
        "services.example-chat.answer: 'drop' is not one of",
        id="bad-answer",
    ),
    pytest.param(
        MINIMAL.replace("verified: 2026-11-29", "verified: last week"),
        "services.example-chat.verified: 'last week' is not a date",
        id="bad-verified",
    ),
    pytest.param(
        MINIMAL.replace("[https://example.com/network]", "[see the wiki]"),
        "services.example-chat.sources[0]: 'see the wiki' is not an http(s) URL",
        id="source-not-url",
    ),
    pytest.param(
        MINIMAL.replace("[chat.example.com]", "[]"),
        "services.example-chat.domains: empty; a service DNS cannot block needs notes",
        id="empty-domains-without-notes",
    ),
    pytest.param(
        MINIMAL + MINIMAL.split("services:\n", 1)[1],
        "examples.yaml:8:3: YAML error: duplicate key 'example-chat'",
        id="duplicate-key-in-file",
    ),
    pytest.param("- just\n- a list\n", "examples.yaml: expected a mapping", id="not-a-mapping"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_check_catalog_reports_broken_file_with_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    write(tmp_path, "examples.yaml", text)
    problems = check_catalog(tmp_path)
    label = f"{tmp_path.name}/"
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(label) for p in problems), problems


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_load_catalog_raises_list_error_not_yaml_errors(
    tmp_path: Path, text: str, expected: str
) -> None:
    write(tmp_path, "examples.yaml", text)
    with pytest.raises(ListError) as info:
        load_catalog(tmp_path)
    assert type(info.value) is ListError


def test_service_id_in_two_files_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", MINIMAL)
    write(tmp_path, "b.yaml", MINIMAL.replace("category: examples", "category: others"))
    problems = check_catalog(tmp_path)
    assert any(
        p.startswith(f"{tmp_path.name}/b.yaml: services.example-chat")
        and "already defined in" in p
        and "a.yaml" in p
        for p in problems
    ), problems


def test_check_catalog_reports_every_problem_not_only_the_first(tmp_path: Path) -> None:
    text = MINIMAL.replace("[chat.example.com]", "['a..b', 'c d.example']") + "    answer: x\n"
    write(tmp_path, "examples.yaml", text)
    problems = check_catalog(tmp_path)
    assert len(problems) == 3, problems


def test_missing_catalog_directory_is_a_problem(tmp_path: Path) -> None:
    problems = check_catalog(tmp_path / "nope")
    assert problems and "not found" in problems[0]
    with pytest.raises(ListError):
        load_catalog(tmp_path / "nope")


def test_shipped_files_pass_after_copy(tmp_path: Path) -> None:
    # The checks depend on file contents only, not on where the directory lives.
    target = tmp_path / "blocklists"
    shutil.copytree(SHIPPED, target)
    assert check_catalog(target) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM.", "example.com"),
        ("*.Example.com", "*.example.com"),
        ("_dns.resolver.arpa", "_dns.resolver.arpa"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_normalize_name_accepts_and_normalises(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("a..b", "empty label"),
        ("." + "a" * 10, "empty label"),
        ("a" * 64 + ".com", "label longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("exa mple.com", "bad character"),
        ("ex!ample.com", "bad character"),
        ("x.*.example.com", "'*' is only allowed"),
        ("*.*.example.com", "'*' is only allowed"),
        ("1.2.3.4", "IP address"),
    ],
)
def test_normalize_name_rejects_invalid_names_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize_name(raw)
