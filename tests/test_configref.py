"""The committed config reference is the one the models generate (it cannot drift)."""

from pathlib import Path

from sipha.configref import render


def test_committed_reference_matches_the_models() -> None:
    committed = (Path(__file__).parents[1] / "docs" / "config-reference.md").read_text()
    assert committed == render(), "run: python -m sipha.configref > docs/config-reference.md"


def test_reference_names_every_section_and_key_of_the_phone() -> None:
    text = render()
    for needle in ("`[policy]`", "`sip_transaction_timeout`", "`[[connection]]`", "`reg_interval`",
                   "`[[pool.destination]]`", "`[[health]]`", "**required**"):
        assert needle in text, needle
