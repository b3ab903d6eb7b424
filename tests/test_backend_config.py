"""Choosing the vLLM backend where vLLM is not installed fails at config validation, naming the key
and the install command (runs everywhere; the backend itself is tested in test_vllm.py)."""

from __future__ import annotations

import importlib.util

import pytest

from sparring.config import config_from_dict
from sparring.errors import UserError


def test_backend_vllm_without_vllm_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(UserError, match=r"generation\.backend = 'vllm'.*pip install 'sparring\[vllm\]'"):
        config_from_dict({"generation": {"backend": "vllm"}})


def test_backend_hf_needs_nothing_more():
    assert config_from_dict({"generation": {"backend": "hf"}}).generation.backend == "hf"


def test_unknown_backend_names_the_choices():
    with pytest.raises(UserError, match=r"generation\.backend.*'hf', 'vllm'"):
        config_from_dict({"generation": {"backend": "sglang"}})
