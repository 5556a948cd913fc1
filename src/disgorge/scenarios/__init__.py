"""Bundled scenarios: real data shipped inside installed packages, nothing downloaded at run time."""

from .._registry import Registry

SCENARIOS: Registry = Registry("scenario", "see `disgorge scenarios`")

from .base import Scenario, SourceData  # noqa: E402
from .digits import DigitsBackdoor, DigitsClasswise, DigitsConsent  # noqa: E402
from .language import Book, People, PeopleForget01, PeopleForget05, PeopleMini  # noqa: E402
from .mnist import MNIST  # noqa: E402


def get_scenario(name: str) -> Scenario:
    """An instance of the scenario registered as ``name``."""
    return SCENARIOS.get(name)()


__all__ = ["MNIST", "SCENARIOS", "Book", "DigitsBackdoor", "DigitsClasswise", "DigitsConsent", "People",
           "PeopleForget01", "PeopleForget05", "PeopleMini", "Scenario", "SourceData", "get_scenario"]
