import os
import sys

from hypothesis import HealthCheck, Phase, settings

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

# Triton picks its interpreter when a kernel is defined, and importing transformers imports triton:
# so the choice is made here, before any test module is collected (without it the triton tests
# failed whenever a module that imports transformers was collected before them)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(1)  # tiny test models: one thread beats two (and never oversubscribes)

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True
)
# on a GPU machine, time is lent by the minute: report a failing example without shrinking it
settings.register_profile("gpu", parent=settings.get_profile("ci"), phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile("gpu" if os.environ.get("JETSPEC_GPU_RUN") else "ci")
