"""Pascal VOC 2007 average precision (the classification devkit's definition)."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np


# The recall thresholds of the VOC 2007 devkit (VOCevalcls.m), bit for bit:
# ``for t=0:0.1:1, p=max(prec(rec>=t)); if isempty(p), p=0; end; ap=ap+p/11; end``.
# MATLAB's colon a:d:b with n = round((b-a)/d) = 10 steps builds its elements
# symmetrically from both ends: a + k*d for k <= n/2, b - k*d for the rest,
# and (a+b)/2 in the middle. That gives k/10 (the doubles nearest to them)
# except the fourth, 3*0.1 = 0.30000000000000004, which lies above the double
# 0.3: a recall of exactly 3/10 (6/20, ...) does not reach t = 0.3. (The
# common Python port, np.arange(0, 1.1, 0.1), also has 0.30000000000000004 but
# builds 0.6 and 0.7 as 6*0.1 and 7*0.1, one ulp above 0.6 and 0.7, so it also
# drops recalls of exactly 6/10 and 7/10; the devkit does not.)
VOC07_RECALL_THRESHOLDS = tuple(
    [k * 0.1 for k in range(5)] + [(0.0 + 1.0) / 2] +
    [1.0 - k * 0.1 for k in range(4, -1, -1)])


def voc07_average_precision(scores: np.ndarray, labels: np.ndarray,
                            difficult: Optional[np.ndarray] = None) -> float:
  """VOC 2007 11-point interpolated AP for one class, as the devkit computes it.

  labels: 1 positive, 0 negative; ``difficult`` marks images left out (the
  VOC "0" label; the devkit keeps them in the ranking but counts them neither
  as true nor as false positives, which gives the same precision/recall
  points). AP = sum over the devkit's 11 thresholds t
  (``VOC07_RECALL_THRESHOLDS``) of the highest precision at recall >= t, each
  divided by 11; 0 for a t no recall reaches. Ties keep the input order, like
  MATLAB's stable ``sort(-confidence)``.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(bool)
  if difficult is not None:
    keep = ~np.asarray(difficult).astype(bool)
    scores, labels = scores[keep], labels[keep]
  positives = labels.sum()
  if positives == 0:
    raise ValueError("AP is undefined for a class without positives")
  order = np.argsort(-scores, kind="stable")
  hits = labels[order]
  tp = np.cumsum(hits).astype(np.float64)
  fp = np.cumsum(~hits).astype(np.float64)
  recall = tp / positives
  precision = tp / (tp + fp)
  ap = 0.0
  for t in VOC07_RECALL_THRESHOLDS:
    above = precision[recall >= t]
    ap += (above.max() if above.size else 0.0) / 11
  return float(ap)


def voc07_map(scores: np.ndarray, labels: np.ndarray,
              difficult: Optional[np.ndarray] = None) -> Dict:
  """Per-class VOC07 AP and their mean; scores/labels [N, classes]."""
  aps = [voc07_average_precision(scores[:, c], labels[:, c],
                                 None if difficult is None else difficult[:, c])
         for c in range(scores.shape[1])]
  return {"ap": aps, "map": float(np.mean(aps))}
