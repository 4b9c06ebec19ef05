"""The background-difference presence signal: a frame that differs from the empty background scores higher, and
the running background learns only from empty frames."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.filter_background import auc, running_scores, score


def test_an_object_on_the_background_scores_higher_and_objects_never_enter_the_background():
    background = torch.zeros(4, 16, 16)
    empty = background + 0.01 * torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(0))
    with_object = empty.clone()
    with_object[:, 4:8, 4:8] += 1.0
    assert score(with_object, background) > 10 * score(empty, background)
    clip = torch.stack([with_object] * 5 + [empty])
    positive = np.array([True] * 5 + [False])
    scores = running_scores(clip, positive, background)
    assert np.allclose(scores[:5], scores[0])  # five frames with the object: the background did not absorb it
    assert auc(scores, positive) == 1.0
