"""Agentic batch benchmark: traces, the closed-loop runner, the comparison and the sweep."""
