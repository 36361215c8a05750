"""README.md's config reference is exactly what the schema generates (so it cannot drift)."""

from __future__ import annotations

from pathlib import Path

from lmstream.config import TrainingConfig
from lmstream.config_reference import BEGIN, END, render

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_matches_schema() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert section.strip() == render().strip(), "run `python -m lmstream.config_reference --update`"


def test_reference_lists_every_seed_field(seed_yaml_text: str) -> None:
    import yaml

    reference = render()

    def walk(node: dict, prefix: str = "") -> list[str]:
        out = []
        for key, value in node.items():
            out += walk(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
        return out

    for dotted in walk(yaml.safe_load(seed_yaml_text)):
        assert f"`{dotted}`" in reference, dotted
    assert "model.hidden_size" in reference and TrainingConfig.model_fields


def test_lists_of_sections_show_their_fields() -> None:
    """A mixture's sources are documented field by field, not as one opaque row."""
    reference = render()
    for dotted in ("sources[].name", "sources[].weight", "sources[].dataset",
                   "sources[].max_samples", "data.mixture[].train_shards",
                   "data.mixture[].validation_shards"):  # fmt: skip
        assert f"| `{dotted}` |" in reference, dotted
    assert "| `sources` | list[section] \\| null |" in reference
