"""`python -m graphopt.targets.tvm.onednn`: build the oneDNN kernel library (if not cached) and
print its path."""
from . import build

print(build())
