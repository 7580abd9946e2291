"""Test setup: 8 fake CPU devices for mesh tests (must be set before JAX is imported)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=1200 "
                      "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300 --xla_cpu_collective_timeout_seconds=1200")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gin  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_gin():
  """Gin bindings are global: a test that builds configs directly must not see another's."""
  gin.clear_config()
  yield
  gin.clear_config()
