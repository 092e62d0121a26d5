"""Each render case of tests/helm/cases.py, rendered once per session."""

from __future__ import annotations

import pytest

from tests.helm.cases import CASES, case_values
from tests.helm.chart import Rendered, render


@pytest.fixture(scope="session", params=CASES)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    """One render per case, shared by every test of the session."""
    return render(case_values(request.param))
