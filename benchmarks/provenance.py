"""Where and when a benchmark ran: every results file records it, and every table in the docs shows it."""
import datetime
import importlib.metadata
import os
import platform


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    except OSError:
        return platform.processor() or None


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def gpus() -> list[str]:
    """The GPUs TensorFlow sees, when the benchmark has imported it (importing it here would cost seconds)."""
    import sys

    tf = sys.modules.get("tensorflow")
    if tf is None:
        return []
    return [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]


def provenance() -> dict:
    """{"date": the UTC date, "machine": CPUs, CPU model, memory, GPUs, Python and TensorFlow versions}."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
            "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "memory_gib": memory_gib(), "gpus": gpus(),
                        "python": platform.python_version(), "tensorflow": importlib.metadata.version("tensorflow")}}
