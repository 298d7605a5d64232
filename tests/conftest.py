import pytest

from helpers import fresh_seed


@pytest.fixture
def seed(request):
    """A fresh seed per test, shown in the report so a failure can be replayed with
    FASTELBO_TEST_SEED=<seed>."""
    value = fresh_seed()
    request.node.user_properties.append(("seed", value))
    print(f"seed={value}")
    return value
