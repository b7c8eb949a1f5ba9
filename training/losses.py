"""Training losses: the asymmetric loss for tagging (official RAM settings) and distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al. 2021) as RAM trains with it: gamma_neg 7, gamma_pos 0, clip 0.05.

    Returns the sum over samples and classes, as the official implementation; the focusing
    weights are computed without gradient (the official `disable_torch_grad_focal_loss=True`).
    """

    def __init__(self, gamma_neg: float = 7.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits, targets: (B, C); targets in {0, 1}."""
        targets = targets.to(logits.dtype)
        prob = torch.sigmoid(logits.float())
        prob_neg = 1 - prob
        if self.clip and self.clip > 0:
            # Probability shifting: easy negatives (p < clip) contribute nothing.
            prob_neg = (prob_neg + self.clip).clamp(max=1)
        loss = targets * torch.log(prob.clamp(min=self.eps)) + (1 - targets) * torch.log(prob_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.no_grad():
                pt = prob * targets + prob_neg * (1 - targets)
                gamma = self.gamma_pos * targets + self.gamma_neg * (1 - targets)
                weight = torch.pow(1 - pt, gamma)
            loss = loss * weight
        return -loss.sum()


def distillation_loss(image_cls: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 between the pooled image token (after image_proj) and a teacher image embedding."""
    return F.l1_loss(image_cls.float(), teacher.float())
