"""refinelib: the AgentRefine method (Fu et al., ICLR 2025) as a small, tested library."""

__version__ = "0.1.0"
