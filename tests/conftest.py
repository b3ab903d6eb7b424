import os

# Tests never touch a model hub: every model is built inside the test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models are dominated by thread synchronisation, not arithmetic: one thread is several times
# faster on a 2-core machine and makes float results independent of the core count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
