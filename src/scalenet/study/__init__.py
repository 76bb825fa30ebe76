"""Is the allocation worth it? A controlled comparison at matched MACs, over several seeds.

Arms (each a structure of the same layout, MACs within 1% of the learned allocation's, or of
``macs`` when given):

- ``learned``: the data-driven allocation (:func:`scalenet.allocation.allocate`);
- ``uniform``: the same neurons per block split as evenly as integers allow over the scales;
- ``random``: neurons ranked by random scores and kept per block under the same MACs budget
  (a fresh draw for every training seed);
- ``resnet``: the plain bottleneck (one 3x3 conv, the single scale x1);
- ``heuristic``: "fine early, coarse late": each stage's scale shares interpolated, by depth,
  from the published ScaleNet-50's stage shares;
- ``latency`` (only with a latency model, not in the default set): the learned arm's
  supernets, selected again under a latency budget with scores per millisecond
  (``latency_alpha``, see :func:`scalenet.allocation.weigh_by_cost`).

With ``latency_model`` (a :class:`scalenet.latency.LatencyModel` file) the arms are matched in
*measured* latency instead of MACs, the plain ResNet included (the cost model predicts any
subset of its scales): each arm is selected under the learned (MACs-aware) arm's predicted
latency, or ``latency_ms``, then every arm is timed (fused, eval, the model's settings) and
an arm more than ``latency_tolerance`` from the target is selected again under a calibrated
budget until its measurement lands (:func:`_matched_in_latency`); predictions and
measurements are both reported.
Under torchrun every run trains with DDP across all ranks, one after another; rank 0 times
the arms and writes every file.

Every arm is trained from scratch with the same recipe and ``seeds`` training seeds, and
tested on the whole evaluation split. The report gives mean ± std per arm and, paired by
seed, the difference of the learned arm to each other arm with a 95% t-interval. One
allocation serves all seeds of the learned arm: the interval covers training noise, not the
allocation's own run-to-run spread (which ``scalenet allocate`` reports against chance).

A study directory resumes: finished runs are read back, not retrained; a run killed mid-way
continues from its ``last.pt``.
"""

from .arms import ARM_BUILDERS, RULES, arm_structure
from .config import ARMS, LATENCY_ARMS, LATENCY_TOLERANCE, STUDY_RECIPE, StudyConfig
from .runner import build_arms, run_study, summarize_study, train_run

__all__ = ["ARMS", "LATENCY_ARMS", "LATENCY_TOLERANCE", "RULES", "ARM_BUILDERS", "STUDY_RECIPE", "StudyConfig",
           "run_study", "build_arms", "summarize_study", "train_run", "arm_structure"]
