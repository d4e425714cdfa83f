"""Training objectives (registry ``OBJECTIVES``): what a model is trained to do with a packed batch.

An objective is an ``nn.Module`` that holds the model being trained (and whatever else it needs: heads,
decoders, target encoders) and maps a ``PackedBatch`` to per-example losses (:class:`ObjectiveOutput`).
The trainer averages them over the global count of examples (or tokens) of the step; it never looks inside.
``objective.model`` is the model that is evaluated; ``objective.export_model()`` the one exported (the
encoder for ``mae``, the target encoder for ``jepa``, see mmvit/pretrain/objectives.py).
"""

from mmvit.objectives.base import Objective, ObjectiveOutput, build_objective
from mmvit.objectives.classification import Classification
import mmvit.pretrain.objectives  # noqa: E402,F401  (registers mae and jepa)

__all__ = ["Classification", "Objective", "ObjectiveOutput", "build_objective"]
