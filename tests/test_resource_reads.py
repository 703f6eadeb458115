"""How audit records name a resource read (securemcp._resource_reads)."""

from __future__ import annotations

from securemcp._resource_reads import audited_read, template_arguments, unresolved_target


def test_a_template_read_is_named_by_its_template_and_the_values_fastmcp_reads() -> None:
    assert audited_read("cfg://app?x=1", None) == ("cfg://app?x=1", {})
    assert audited_read("users://alice%40x.org/ssn#f", "users://{email}/ssn") == (
        "users://{email}/ssn",
        {"email": "alice@x.org"},
    )
    # only the query parameters the template names; the first value of a repeated one
    assert template_arguments("q://s?b=2&a=1&a=3&junk=x", "q://s{?a,b}") == {"a": "1", "b": "2"}
    assert template_arguments("q://s?tag=a&tag=b", "q://s{?tag*}") == {"tag": ["a", "b"]}
    # a URI the template does not match is hashed whole rather than not at all
    assert template_arguments("other://x", "users://{email}/ssn") == {"uri": "other://x"}


def test_an_unresolved_read_keeps_only_a_well_formed_scheme() -> None:
    assert unresolved_target("users://alice@example.com/ssn") == "users://"
    assert unresolved_target("urn:isbn:0451450523") == "urn:"
    assert unresolved_target("git+ssh://host/repo") == "git+ssh://"
    for text in ("no scheme at all", "://x", "1abc://x", "Bearer eyJhbGciOi.x.y:z", ""):
        assert unresolved_target(text) == "", text
