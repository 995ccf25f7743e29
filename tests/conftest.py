import os
import sys

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
