"""Test setup: 8 fake CPU devices for mesh tests (must be set before JAX is imported)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=1200 "
                      "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300 --xla_cpu_collective_timeout_seconds=1200")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
