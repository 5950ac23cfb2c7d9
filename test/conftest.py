"""Shared fixtures: the embedded models, and real SGLang servers on CPU (one per test module)."""

from __future__ import annotations

import logging
import os
import sys

import pytest

# SGLang's Engine shuts down again at interpreter exit, after pytest closed its captured streams;
# its log call there would print a "Logging error" traceback after the test summary.
logging.raiseExceptions = False

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))


@pytest.fixture(scope="session")
def models_dir() -> str:
    from sglang_concur.tiny_model import main

    path = os.environ.get("CONCUR_TEST_MODELS", os.path.join(ROOT, "models"))
    if not os.path.exists(os.path.join(path, "tiny", "config.json")):
        main([path])
    return path


@pytest.fixture(scope="session")
def tiny_model(models_dir: str) -> str:
    return os.path.join(models_dir, "tiny")
