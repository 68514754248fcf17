"""Shared fixtures: a synthetic VOC-layout dataset, and VOC + SBD folders made from it."""

from __future__ import annotations

import pytest
from sbd_fixtures import make_paper_sets

from pipeline.demo.synthvoc import generate_voc
from pipeline.ray_session import disable_usage_stats

# Every Ray the tests start (ray.init, ray.cluster_utils) reports no usage statistics.
disable_usage_stats()


@pytest.fixture(scope="session")
def synth_voc(tmp_path_factory):
    """A tiny VOC-layout dataset (6 train, 3 val images of about 96x128); returns its root."""
    root = tmp_path_factory.mktemp("synth_voc")
    generate_voc(str(root), n_train=6, n_val=3, size=(96, 128), seed=0)
    return str(root)


@pytest.fixture(scope="session")
def paper_sets(tmp_path_factory, synth_voc):
    """VOC (VOC classes) + SBD folders that overlap like the real ones; see sbd_fixtures.make_paper_sets."""
    return make_paper_sets(str(tmp_path_factory.mktemp("paper_sets")), synth_voc)
