"""Fixtures for every test directory."""

from tests.flavors import flavor  # noqa: F401 - a fixture, found by name
