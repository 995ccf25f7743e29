import os
import sys

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))

# Triton runs kernels on CPU only in its interpreter, which must be chosen before triton is
# imported; on a machine with a GPU the kernels run for real.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass


# a profile of the tiny model on small grids, measured once per test module that asks for it
SMALL_GRIDS = {"tokens": (1, 8, 64), "queries": (1, 8), "contexts": (16, 64), "batches": (1, 4), "sampled": (0, 1, 4),
               "prefill_chunks": (1, 4), "prompt_tokens": (8, 64)}


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory):
    import torch

    from engine.profiler import profile_engine
    from engine.runner import ModelRunner
    from scheduler.model_spec import model_spec

    torch.set_num_threads(1)
    runner = ModelRunner(model_spec("tiny"), 256, 16)
    return profile_engine(runner, tmp_path_factory.mktemp("profile"), "float32", "torch", repeats=1, grids=SMALL_GRIDS)
