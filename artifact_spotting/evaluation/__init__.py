"""Frozen-feature evaluation: per-layer features, folds, linear probes, kNN, AP.

- ``features``: extractors (discriminator, autoencoder, random init, pixels,
  ``.keras`` files) and feature extraction.
- ``folds``: few-label folds and the classifiers fit on them (ridge, kNN).
- ``probe``: the full-label softmax probe.
- ``metrics``: VOC 2007 average precision.
- ``protocol``: config checks and ``evaluate``, which runs a config's
  protocols on one extractor.
"""

from artifact_spotting.evaluation.features import (Extractor, discriminator_extractor,
                                                   encoder_extractor, extract,
                                                   make_extractor, pixel_extractor,
                                                   pool_flatten, pooled_side)
from artifact_spotting.evaluation.folds import (fold_validation, folds_protocol,
                                                knn_predict, read_fold_indices,
                                                ridge_fit_predict, seeded_folds,
                                                validation_indices)
from artifact_spotting.evaluation.metrics import (VOC07_RECALL_THRESHOLDS,
                                                  voc07_average_precision, voc07_map)
from artifact_spotting.evaluation.probe import full_probe
from artifact_spotting.evaluation.protocol import (check_pp, evaluate,
                                                   fold_indices, split_labels,
                                                   validate_eval_config)
