"""docs/settings.md is generated from config/settings.py and must be up to date."""

from pathlib import Path

from config.settings import Settings
from config.settings_doc import markdown

PAGE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_settings_page_is_generated_from_the_settings():
    assert PAGE.read_text(encoding="utf-8") == markdown(), (
        "docs/settings.md is out of date: run `python -m config.settings_doc`"
    )


def test_the_settings_page_names_every_environment_variable():
    page = PAGE.read_text(encoding="utf-8")
    missing = [
        name for name in (f"HYCHAT_{field.upper()}" for field in Settings.model_fields) if f"`{name}`" not in page
    ]
    assert not missing, f"{missing} not in docs/settings.md: run `python -m config.settings_doc`"


def test_every_setting_has_a_description():
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []
