"""Shared pytest setup: offline hubs, a capped JVM, and one thread per test process."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-Xmx768m -XX:+UseSerialGC")
os.environ.setdefault("OMP_NUM_THREADS", "1")
