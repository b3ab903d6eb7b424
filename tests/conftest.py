import os

# Tests never touch a model hub: every model is built inside the test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models are dominated by thread synchronisation, not arithmetic: one thread is several times
# faster on a 2-core machine and makes float results independent of the core count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny model (tests/tiny.py, seed 0) built once per test module."""
    from tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's runs (`pytestmark = pytest.mark.usefixtures("one_thread")`).
    Bit-for-bit equality holds only between runs with the same thread count (a float32 reduction split
    over 2 threads sums in another order: log-probs differ in the last bits), and one thread is also
    ten times faster for a tiny model on a busy 2-core machine, where OpenMP's threads wait for each
    other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
