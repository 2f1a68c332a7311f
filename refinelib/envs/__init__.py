"""Text environments: one interface (:mod:`.base`), five families, and named suites (:mod:`.registry`)."""

from refinelib.envs.base import CHECK_VALID_ACTIONS, BackendMissing, Instance, Reset, Step, TextEnv
from refinelib.envs.registry import EVALUATION_SUITES, FAMILIES, SUITES, Suite, make, make_instance, suite
from refinelib.envs.rollout import Transcript, oracle_policy, play

__all__ = [
    "CHECK_VALID_ACTIONS", "BackendMissing", "Instance", "Reset", "Step", "TextEnv",
    "EVALUATION_SUITES", "FAMILIES", "SUITES", "Suite", "make", "make_instance", "suite",
    "Transcript", "oracle_policy", "play",
]
