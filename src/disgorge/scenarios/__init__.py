"""Bundled scenarios: real data shipped inside installed packages, nothing downloaded at run time."""

from __future__ import annotations

from ..workspace import Workspace
from .base import Scenario, SourceData
from .bias import Bias
from .digits import DigitsBackdoor, DigitsClasswise, DigitsConsent
from .language import Book, People, PeopleForget01, PeopleForget05, PeopleMini
from .mnist import MNIST, MNISTBackdoor
from .registry import SCENARIOS
from .text import SmsSpam, SmsSpamMini


def get_scenario(name: str) -> Scenario:
    """An instance of the scenario registered as ``name``."""
    return SCENARIOS.get(name)()


def workspace_purpose(ws: Workspace) -> str:
    """The purpose of the bundled scenario a workspace holds (``privacy`` for a workspace of users' files)."""
    name = ws.scenario
    return get_scenario(name).purpose if name in SCENARIOS else "privacy"


__all__ = [
    "MNIST",
    "SCENARIOS",
    "Bias",
    "Book",
    "DigitsBackdoor",
    "DigitsClasswise",
    "DigitsConsent",
    "MNISTBackdoor",
    "People",
    "PeopleForget01",
    "PeopleForget05",
    "PeopleMini",
    "Scenario",
    "SmsSpam",
    "SmsSpamMini",
    "SourceData",
    "get_scenario",
    "workspace_purpose",
]
