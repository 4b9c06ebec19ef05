"""Entropic student: the GHND feature loss plus beta x rate, with a learned factorized entropy model on the latent.

As in Entropic Student (Matsubara et al., WACV 2022): encoder -> latent ``y`` -> CompressAI ``EntropyBottleneck``
(likelihoods of ``y`` + uniform noise give the rate in bits) -> decoder on ``round(y - median) + median`` (the
straight-through estimator, so the decoder trains on exactly what the server will decode) -> ``layer2..4``,
matched to the teacher's outputs. Only the bottleneck and the entropy model train. CompressAI is imported here,
for training only; the runtime codec (``common/entropy.py``) codes with the exported tables and constriction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from splitdet.common.entropy import EntropyTables
from splitdet.distill.config import Term
from splitdet.distill.mimic import HeadMimic, backbone_outputs


def entropy_bottleneck(channels: int) -> nn.Module:
    from compressai.entropy_models import EntropyBottleneck  # heavy (pandas, scipy): only when training

    return EntropyBottleneck(channels)


def tables_of(eb: nn.Module) -> EntropyTables:
    """The integer tables of a CompressAI ``EntropyBottleneck`` (its ``update()`` must have run)."""
    return EntropyTables(
        eb._quantized_cdf.detach().cpu().to(torch.int32).numpy(),
        eb._cdf_length.detach().cpu().reshape(-1).to(torch.int32).numpy(),
        eb._offset.detach().cpu().reshape(-1).to(torch.int32).numpy(),
        eb._get_medians().detach().cpu().reshape(-1).float().numpy(),
    )


class EntropicMimic(HeadMimic):
    """``forward(images, targets)`` -> feature terms, ``rate`` (beta x bits per image) and ``aux`` (the entropy
    model's quantile loss, which moves only its medians and tails)."""

    def __init__(
        self,
        student: GeneralizedRCNN,
        teacher: GeneralizedRCNN,
        terms: Sequence[Term],
        reduction: str = "sum",
        beta: float = 0.0,
    ) -> None:
        super().__init__(student, teacher, terms, reduction)
        self.beta = beta
        self.entropy_bottleneck = entropy_bottleneck(student.backbone.body.layer1.channels)

    def train(self, mode: bool = True) -> EntropicMimic:
        super().train(mode)
        self.entropy_bottleneck.train(mode)
        return self

    def rounded(self, y: Tensor) -> Tensor:
        """``round(y - median) + median`` with a straight-through gradient: what the server decodes."""
        medians = self.entropy_bottleneck._get_medians().detach().view(1, -1, 1, 1)
        return y + (torch.round(y - medians) + medians - y).detach()

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
        batch, _ = self.teacher.transform(images)
        with torch.no_grad():
            wanted = backbone_outputs(self.teacher, batch.tensors, self.upto)
        body = self.student.backbone.body
        x = body.maxpool(body.relu(body.bn1(body.conv1(batch.tensors))))
        y = body.layer1.encoder(x)
        _, likelihoods = self.entropy_bottleneck(y)
        x = body.layer1.decoder(self.rounded(y))
        got = [x]
        for i in range(2, self.upto + 1):
            x = getattr(body, f"layer{i}")(x)
            got.append(x)
        losses = {f"layer{t.layer}": t.factor * self.mse(got[t.layer - 1], wanted[t.layer - 1]) for t in self.terms}
        bits = -torch.log(likelihoods).sum() / (math.log(2) * y.shape[0])
        losses["rate"] = self.beta * bits
        losses["aux"] = self.entropy_bottleneck.loss()
        return losses

    def latents(self, images: list[Tensor]) -> Tensor:
        """The encoder's latent for ``images`` (no gradient)."""
        with torch.no_grad():
            batch, _ = self.teacher.transform(images)
            body = self.student.backbone.body
            return body.layer1.encoder(body.maxpool(body.relu(body.bn1(body.conv1(batch.tensors)))))

    def fit_prior(self, images: list[Tensor], steps: int = 150, lr: float = 0.02) -> float:
        """Fit the entropy model alone to the initial latents of ``images`` (seconds: no backbone in the loop), so
        that joint training starts from a realistic rate instead of an untrained prior. Returns bits per image."""
        was_training = self.entropy_bottleneck.training
        self.entropy_bottleneck.train()
        y = torch.cat([self.latents(images[i : i + 8]) for i in range(0, len(images), 8)])
        opt = torch.optim.Adam(self.entropy_bottleneck.parameters(), lr=lr)
        for _ in range(steps):
            _, likelihoods = self.entropy_bottleneck(y)
            bits = -torch.log(likelihoods).sum() / (math.log(2) * y.shape[0])
            opt.zero_grad(set_to_none=True)
            (bits + self.entropy_bottleneck.loss()).backward()
            opt.step()
        self.entropy_bottleneck.train(was_training)
        return float(bits.detach())

    def tables(self) -> EntropyTables:
        """Integer CDF tables of the current entropy model (what the checkpoint ships)."""
        self.entropy_bottleneck.update(force=True)
        return tables_of(self.entropy_bottleneck)


def widen_bottleneck(student: GeneralizedRCNN, source: dict[str, Tensor]) -> None:
    """Start a C-channel student's encoder/decoder from a narrower (or equal) student's ``source`` state: the
    first channels copy it, the new encoder outputs start small and random and the decoder ignores them (zero
    weights), so the widened student computes what the source did and training can use the new channels."""
    prefix = "backbone.body.layer1."
    own = student.state_dict()
    taken = {}
    for k, v in source.items():
        if not k.startswith(prefix) or k not in own:
            continue
        target = own[k].clone()
        if target.shape == v.shape:
            taken[k] = v
            continue
        if target.dim() != v.dim() or any(t < s for t, s in zip(target.shape, v.shape, strict=True)):
            raise ValueError(f"cannot widen {k}: {tuple(v.shape)} -> {tuple(target.shape)}")
        if k.endswith(".weight") and target.dim() == 4 and target.shape[1] > v.shape[1]:
            target.zero_()  # decoder input conv: new channels contribute nothing at first
        elif target.dim() == 4:
            target.mul_(0.1)  # encoder output conv: small random new channels
        target[tuple(slice(0, s) for s in v.shape)] = v
        taken[k] = target
    student.load_state_dict(taken, strict=False)
