"""Access to the reference data in ../shared/conformance and helpers to build
the published models with its settings."""
import os
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / 'configs'
CONFORMANCE_DIR = REPO_ROOT.parent / 'shared' / 'conformance'


def conformance_path(name: str) -> Path:
    """Path of a reference file. Skips when shared/ is absent, except in CI
    (``CI`` or ``REGPROXY_REQUIRE_CONFORMANCE`` set), where it fails."""
    path = CONFORMANCE_DIR / name
    if not path.exists():
        message = (f'conformance file {path} not found: the reference data '
                   'lives in ../shared/conformance beside the checkout')
        if os.environ.get('CI') or os.environ.get('REGPROXY_REQUIRE_CONFORMANCE'):
            pytest.fail(message)
        pytest.skip(message)
    return path


def load_conformance(name: str) -> dict:
    return torch.load(conformance_path(name), weights_only=False)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to the largest |expected|."""
    expected = expected.double()
    return ((actual.double() - expected).abs().max() /
            expected.abs().max()).item()


def published_config(name: str) -> Config:
    """The published config ``name`` (file stem, as in layouts.json)."""
    folder = 'regproxy_cityscapes' if 'cityscapes' in name else 'regproxy_ade20k'
    return Config.fromfile(CONFIG_DIR / folder / f'{name}.py')
