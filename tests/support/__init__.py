"""Test helpers shared by the unit, integration and reliability suites (real servers, no mocks)."""
