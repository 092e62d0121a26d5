"""Test doubles shared by test suites: mock workers and the harnesses that wire them."""
